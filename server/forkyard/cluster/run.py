"""One agent's run on the cluster, as the orchestrator's runner sees it.

The runner hands a cluster agent here instead of preparing a local worktree: the agent
gets an actor on a node (its role's CPUs and memory), its start commit is shipped (once
per base), the backend runs there while its log, progress, usage and approvals arrive
here through the same orchestrator calls a local run makes, and its work comes back as a
bundle fetched into the person's repository and checked out as its local worktree, so
review, diagnostics and apply cannot tell it ran elsewhere. Ray itself is in the bridge
process (`link.py`); nothing here imports it.

Faults: cancel stops the remote run (its processes end as at home), then its work is
collected and kept; a lost worker, node or cluster makes the agent `interrupted`, with
whatever a fresh actor on the same node can still collect, else its last collected state.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread

from forkyard.agents.base import RunOutcome
from forkyard.cluster.bridge import probe, tcp_target
from forkyard.cluster.home import bring_home, bundle_commit
from forkyard.cluster.link import BridgeLink, ClusterUnavailable, NodeLost, RemoteHost
from forkyard.cluster.protocol import Collected, NodeEvent, NodeSpec, Prepared
from forkyard.orchestrator.failures import cause_of
from forkyard.orchestrator.runtime import AgentRuntime, is_dir
from forkyard.settings import RoleConfig
from forkyard_protocol import Usage
from forkyard_protocol.models import AgentPlacement, Progress

if TYPE_CHECKING:
    from forkyard.orchestrator.orchestrator import Orchestrator

logger = logging.getLogger(__name__)

NOT_CONFIGURED = (
    'placement: no cluster is configured; set [cluster] address ("auto", "HOST:PORT", '
    '"ray://HOST:PORT" or "local")'
)
STOP_SECONDS = 30.0
COLLECT_SECONDS = 120.0


def node_repo_key(repo_key: str) -> str:
    """The repository's folder name on nodes: the same for every daemon on one path."""
    return hashlib.sha256(repo_key.encode()).hexdigest()[:16]


class ClusterAgents:
    """The orchestrator's cluster agents: its bridge to the cluster, how many run, and
    the run of each."""

    def __init__(self, orchestrator: Orchestrator) -> None:
        self.o = orchestrator
        self._link: BridgeLink | None = None
        self._link_lock = anyio.Lock()
        self._ship_lock = anyio.Lock()
        self._shipped: dict[str, int] = {}

    @property
    def scratch(self) -> Path:
        return self.o.worktrees_dir.parent / "cluster"

    def startable(
        self,
        queue: list[AgentRuntime],
        active: set[str],
        agents: Mapping[str, AgentRuntime],
    ) -> list[AgentRuntime]:
        """The queued agents that may start now, in queue order: local ones while fewer
        than `max_parallel_agents` run here, cluster ones while fewer than `[cluster]
        max_agents` run there (they take no slot of this machine's)."""
        settings = self.o.settings
        on_cluster = sum(
            1 for agent_id in active if agents[agent_id].agent.placement.kind == "cluster"
        )
        free = {
            "local": settings.max_parallel_agents - (len(active) - on_cluster),
            "cluster": settings.cluster.max_agents - on_cluster,
        }
        chosen = []
        for runtime in queue:
            kind = runtime.agent.placement.kind
            if free[kind] > 0:
                free[kind] -= 1
                chosen.append(runtime)
        return chosen

    async def check_reachable(self) -> None:
        """At dispatch: no cluster configured, or one whose address nobody answers, fails
        the dispatch at once; joining it (seconds: Ray starts its driver) is the agent's
        first step, `starting`, so the dispatch itself returns at once."""
        config = self.o.settings.cluster
        link = self._link
        if link is not None and link.ended is None and link.address == config.address:
            return
        if not config.address:
            raise ClusterUnavailable(NOT_CONFIGURED)
        target = tcp_target(config.address)
        if target is not None and (why := await anyio.to_thread.run_sync(probe, *target)):
            raise ClusterUnavailable(
                f"placement: the cluster at {config.address} cannot be reached: {why}"
            )

    async def link(self) -> BridgeLink:
        """The bridge joined to the configured cluster: kept while it lives and the
        address stays; a new one after it ended (the cluster went away) or moved."""
        config = self.o.settings.cluster
        if not config.address:
            raise ClusterUnavailable(NOT_CONFIGURED)
        async with self._link_lock:
            link = self._link
            if link is not None and link.ended is None and link.address == config.address:
                return link
            if link is not None:
                await link.close()
            self._link = None
            task_group = self.o._task_group
            if task_group is None:
                raise ClusterUnavailable("placement: the orchestrator is not running")
            await anyio.Path(self.scratch).mkdir(parents=True, exist_ok=True)
            link = await BridgeLink.start(self.scratch, config.address)
            task_group.start_soon(_serve, link, name="cluster bridge")
            try:
                with anyio.fail_after(config.connect_timeout_seconds + 5):
                    await link.call(
                        "connect", address=config.address, timeout=config.connect_timeout_seconds
                    )
            except TimeoutError as exc:
                await link.close()
                raise ClusterUnavailable(
                    f"placement: the cluster at {config.address} did not answer"
                ) from exc
            except BaseException:
                await link.close()
                raise
            self._link, self._shipped = link, {}
            return link

    async def close(self) -> None:
        if self._link is not None:
            await self._link.close()

    async def work(self, runtime: AgentRuntime, role: RoleConfig) -> tuple[RunOutcome, str]:
        """The agent's run on the cluster: its outcome and final state."""
        o, agent = self.o, runtime.agent
        await o._update(runtime, state="starting", progress=Progress(message="placing"))
        host: RemoteHost | None = None
        try:
            link = await self.link()
            start = await self._start_commit(runtime)
            node_id = None
            if agent.placement.node:
                node_id = await link.call("node_id", address=agent.placement.node)
            host = await self._host(link, role, node_id, soft=True)
            spec = self._spec(runtime, role, start)
            if node_id is not None and start == agent.base_ref and role.worktree:
                # It ran here before and its work never came home (the daemon stopped
                # under it): what its node still holds comes home first.
                spec = await self._recover(runtime, host, spec)
            address = str(host.where["address"])
            await o._update(runtime, placement=AgentPlacement(kind="cluster", node=address))
            await o._log(
                runtime, "system", f"on cluster node {address} (worker pid {host.where['pid']})"
            )
            ship_key, size = await self._ship(link, start)
            prepared = await host.prepare(spec, ship_key)
            await o._log(runtime, "system", _shipping_note(prepared, size))
            await o._update(runtime, state="running", progress=Progress(message="running"))
        except ClusterUnavailable as exc:
            await _drop(host)
            return RunOutcome(False, "", str(exc)), "failed"
        except Exception as exc:
            await _drop(host)
            logger.warning("agent #%s: could not start on the cluster", agent.number, exc_info=exc)
            error = f"could not start on the cluster: {cause_of(exc)}"
            return RunOutcome(False, "", error), "failed"
        try:
            outcome, state = await self._runs(runtime, host, spec)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._stop_and_collect(runtime, host, spec)
            raise
        with anyio.CancelScope(shield=True):
            await self._collect(runtime, host, spec)
        return outcome, state

    async def _recover(self, runtime: AgentRuntime, host: RemoteHost, spec: NodeSpec) -> NodeSpec:
        bundle = self.scratch / f"result-{runtime.agent.id}.bundle"
        message = f"forkyard: agent #{spec.number}: {runtime.agent.title}"
        got = await host.collect(spec, message, bundle)
        if got.commit is None or got.commit == spec.start_commit:
            return spec
        await self.o._log(runtime, "system", "its work from the run that was interrupted:")
        await bring_home(self.o, runtime, spec, got, bundle)
        return self._spec(runtime, spec.role, got.commit)

    async def _host(
        self, link: BridgeLink, role: RoleConfig, node_id: str | None, *, soft: bool
    ) -> RemoteHost:
        host_id, where = await link.call(
            "host", num_cpus=role.num_cpus, memory_mb=role.memory_mb, node_id=node_id, soft=soft
        )
        return RemoteHost(link, host_id, where)

    async def _ship(self, link: BridgeLink, commit: str) -> tuple[str, int]:
        """The commit in the cluster's object store: bundled once per bridge."""
        key = f"{node_repo_key(self.o.repo_key)}:{commit}"
        async with self._ship_lock:
            if key not in self._shipped:
                path = self.scratch / f"ship-{commit}.bundle"
                try:
                    await bundle_commit(self.o.repository, commit, path)
                    self._shipped[key] = await link.call("ship", key=key, path=str(path))
                finally:
                    await anyio.Path(path).unlink(missing_ok=True)
            return key, self._shipped[key]

    # --- the run -------------------------------------------------------------------

    async def _runs(
        self, runtime: AgentRuntime, host: RemoteHost, spec: NodeSpec
    ) -> tuple[RunOutcome, str]:
        """The instruction, then each follow-up, in the node's worktree."""
        instruction = runtime.rerun or runtime.agent.task
        runtime.rerun = None
        while True:
            try:
                outcome = await self._stream(runtime, host, spec, instruction)
            except NodeLost as exc:
                text = f"the cluster worker running this agent was lost: {exc}"
                await self.o._log(runtime, "system", text)
                return RunOutcome(False, "", text), "interrupted"
            if not outcome.ok or not runtime.followups:
                return outcome, "done" if outcome.ok else "failed"
            instruction = runtime.followups.pop(0)

    async def _stream(
        self, runtime: AgentRuntime, host: RemoteHost, spec: NodeSpec, instruction: str
    ) -> RunOutcome:
        outcome: RunOutcome | None = None
        async for batch in host.run(spec, instruction):
            for event in batch:
                if event.kind == "outcome":
                    ok, summary, error = event.value
                    outcome = RunOutcome(ok, summary, error)
                else:
                    await self._handle(runtime, host, event)
        if outcome is None:
            raise NodeLost("its run ended without an outcome")
        return outcome

    async def _handle(self, runtime: AgentRuntime, host: RemoteHost, event: NodeEvent) -> None:
        o = self.o
        if event.kind == "log":
            kind, text = event.value
            await o._log(runtime, kind, text)
        elif event.kind == "progress":
            message, percentage = event.value
            o.progress(runtime, message, percentage)
        elif event.kind == "usage":
            o.add_usage(runtime, Usage.model_validate(event.value))
            agent = runtime.agent
            shared = o.ledger.check(agent.thread_id, lambda: o.settings.budget)
            if (refusal := shared()) is not None:
                await host.refuse(refusal)
        elif event.kind == "approval":
            request_id, tool, detail = event.value
            # The agent waits for this answer on its node; a cancel still ends the wait.
            answer = await o.request_approval(runtime, tool, detail)
            await host.answer(request_id, answer)

    # --- the work, home ------------------------------------------------------------

    async def _stop_and_collect(
        self, runtime: AgentRuntime, host: RemoteHost, spec: NodeSpec
    ) -> None:
        """Cancelled: the remote run stopped, its processes gone, its work kept."""
        try:
            with anyio.fail_after(STOP_SECONDS):
                await host.stop()
        except Exception as exc:
            logger.info("agent #%s: stopping on the node: %s", runtime.agent.number, exc)
        await self._collect(runtime, host, spec)

    async def _collect(self, runtime: AgentRuntime, host: RemoteHost, spec: NodeSpec) -> None:
        """The node's work into the person's repository and the agent's local worktree.
        A host that is gone is replaced by a fresh actor pinned to the same node (the
        worktree is on its disk); a node that is gone leaves the last collected work."""
        if not spec.role.worktree:
            await _drop(host)
            return
        bundle = self.scratch / f"result-{runtime.agent.id}.bundle"
        message = f"forkyard: agent #{spec.number}: {runtime.agent.title}"
        collected: Collected | None = None
        salvage: RemoteHost | None = None
        try:
            with anyio.fail_after(COLLECT_SECONDS):
                collected = await host.collect(spec, message, bundle)
        except Exception as exc:
            try:
                link = await self.link()
                salvage = await self._host(
                    link, spec.role, str(host.where.get("node_id")), soft=False
                )
                with anyio.fail_after(COLLECT_SECONDS):
                    collected = await salvage.collect(spec, message, bundle)
            except Exception as again:
                logger.info("agent #%s: nothing salvaged: %s", runtime.agent.number, again)
                await self.o._log(
                    runtime, "system", f"its work on the node could not be collected: {exc}"
                )
        finally:
            await _drop(host)
            await _drop(salvage)
        if collected is not None:
            await bring_home(self.o, runtime, spec, collected, bundle)

    # --- what the node is told ------------------------------------------------------

    async def _start_commit(self, runtime: AgentRuntime) -> str:
        """The base for a first run; its branch's tip when its work came home before."""
        agent = runtime.agent
        if agent.branch and agent.worktree and await is_dir(agent.worktree):
            tip = await self.o.repository.branch_tip(agent.branch)
            if tip:
                return tip
        return agent.base_ref

    def _spec(self, runtime: AgentRuntime, role: RoleConfig, start: str) -> NodeSpec:
        agent, o = runtime.agent, self.o
        return NodeSpec(
            repo_key=node_repo_key(o.repo_key),
            agent_id=agent.id,
            number=agent.number,
            branch=agent.branch or f"forkyard/{agent.number}-explorer",
            start_commit=start,
            backend=agent.backend,
            role_name=agent.role,
            role=role,
            settings=o.settings,
            extra_env=o.ports(agent.number).environment(),
            usage=agent.usage,
            budget_usd=agent.budget_usd,
            max_tokens=agent.max_tokens,
        )


def _shipping_note(prepared: Prepared, size: int) -> str:
    kept = "kept from its last run" if prepared.reused else "made"
    if prepared.shipped_bytes:
        return f"worktree on the node {kept}; its base was shipped ({size:,} bytes)"
    return f"worktree on the node {kept}; its base was already there (0 bytes shipped)"


async def _serve(link: BridgeLink) -> None:
    """The bridge's frames read until it ends; then its process is gone too."""
    try:
        await link.read_forever()
    finally:
        with anyio.CancelScope(shield=True):
            await link.close()


async def _drop(host: RemoteHost | None) -> None:
    if host is not None:
        await host.kill()
