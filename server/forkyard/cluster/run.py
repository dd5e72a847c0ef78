"""One agent's run on the cluster, as the orchestrator's runner sees it.

The runner hands a cluster agent here instead of preparing a local worktree: the agent
gets an actor on a node (its role's CPUs and memory), its start commit is shipped (once
per base), the backend runs there while its log, progress, usage and approvals arrive
here through the same orchestrator calls a local run makes, and its work comes back as a
bundle fetched into the person's repository and checked out as its local worktree, so
review, diagnostics and apply cannot tell it ran elsewhere.

Faults: cancel stops the remote run (its processes end as at home), then its work is
collected and kept; a lost worker or node makes the agent `interrupted`, with whatever
a fresh actor on the same node can still collect, else its last collected state.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from forkyard.agents.base import RunOutcome
from forkyard.cluster.driver import ClusterDriver, ClusterUnavailable, shared_driver
from forkyard.cluster.protocol import Collected, NodeEvent, NodeSpec, Prepared
from forkyard.orchestrator.failures import cause_of
from forkyard.orchestrator.runtime import AgentRuntime, is_dir
from forkyard.settings import RoleConfig
from forkyard_protocol import Usage
from forkyard_protocol.models import AgentPlacement, Progress

if TYPE_CHECKING:
    from forkyard.orchestrator.orchestrator import Orchestrator

logger = logging.getLogger(__name__)

STOP_SECONDS = 30.0
COLLECT_SECONDS = 120.0


class NodeLost(Exception):
    """The worker (or the node) running an agent went away under it."""


def node_repo_key(repo_key: str) -> str:
    """The repository's folder name on nodes: the same for every daemon on one path."""
    return hashlib.sha256(repo_key.encode()).hexdigest()[:16]


class ClusterAgents:
    """The orchestrator's cluster agents: how many run, and the run of each."""

    def __init__(self, orchestrator: Orchestrator, driver: ClusterDriver | None = None) -> None:
        self.o = orchestrator
        self._driver = driver

    @property
    def driver(self) -> ClusterDriver:
        return self._driver or shared_driver()

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
        """At dispatch: a cluster that cannot be joined fails the dispatch at once."""
        await self.driver.connect(self.o.settings.cluster)

    async def work(self, runtime: AgentRuntime, role: RoleConfig) -> tuple[RunOutcome, str]:
        """The agent's run on the cluster: its outcome and final state."""
        o, agent = self.o, runtime.agent
        await o._update(runtime, state="starting", progress=Progress(message="placing"))
        driver = self.driver
        host: Any = None
        try:
            await driver.connect(o.settings.cluster)
            start = await self._start_commit(runtime)
            node_id = None
            if agent.placement.node:
                node_id = await driver.node_id_of(agent.placement.node)
            host = await driver.host(role, node_id=node_id)
            where = await (await driver.call(host.where))
            spec = self._spec(runtime, role, start)
            await o._update(
                runtime, placement=AgentPlacement(kind="cluster", node=str(where["address"]))
            )
            await o._log(
                runtime, "system", f"on cluster node {where['address']} (worker pid {where['pid']})"
            )
            shipped = await driver.ship(o.repository, o.repo_key, start)
            prepared: Prepared = await (await driver.call(host.prepare, spec, [shipped.ref]))
            await o._log(runtime, "system", _shipping_note(prepared, shipped.size))
            await o._update(runtime, state="running", progress=Progress(message="running"))
        except ClusterUnavailable as exc:
            await self._drop(host)
            return RunOutcome(False, "", str(exc)), "failed"
        except Exception as exc:
            await self._drop(host)
            logger.warning("agent #%s: could not start on the cluster", agent.number, exc_info=exc)
            return RunOutcome(False, "", f"could not start on the cluster: {cause_of(exc)}"), (
                "failed"
            )
        try:
            outcome, state = await self._runs(runtime, host, spec)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._stop_and_collect(runtime, host, spec)
            raise
        with anyio.CancelScope(shield=True):
            await self._collect(runtime, host, spec, where.get("node_id"))
        return outcome, state

    # --- the run -------------------------------------------------------------------

    async def _runs(
        self, runtime: AgentRuntime, host: Any, spec: NodeSpec
    ) -> tuple[RunOutcome, str]:
        """The instruction, then each follow-up, in the node's worktree."""
        instruction = runtime.rerun or runtime.agent.task
        runtime.rerun = None
        errors = self.driver.errors()
        while True:
            try:
                outcome = await self._stream(runtime, host, spec, instruction)
            except errors as exc:
                text = f"the cluster worker running this agent was lost: {_ray_reason(exc)}"
                await self.o._log(runtime, "system", text)
                return RunOutcome(False, "", text), "interrupted"
            if not outcome.ok or not runtime.followups:
                return outcome, "done" if outcome.ok else "failed"
            instruction = runtime.followups.pop(0)

    async def _stream(
        self, runtime: AgentRuntime, host: Any, spec: NodeSpec, instruction: str
    ) -> RunOutcome:
        outcome = RunOutcome(False, "", "the node sent no outcome")
        async for ref in await self.driver.call(host.run, spec, instruction):
            batch: list[NodeEvent] = await ref
            for event in batch:
                if event.kind == "outcome":
                    ok, summary, error = event.value
                    outcome = RunOutcome(ok, summary, error)
                else:
                    await self._handle(runtime, host, event)
        return outcome

    async def _handle(self, runtime: AgentRuntime, host: Any, event: NodeEvent) -> None:
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
                await self.driver.call(host.refuse, refusal)
        elif event.kind == "approval":
            request_id, tool, detail = event.value
            # The agent waits for this answer on its node; a cancel still ends the wait.
            answer = await o.request_approval(runtime, tool, detail)
            await self.driver.call(host.answer, request_id, answer)

    # --- the work, home ------------------------------------------------------------

    async def _stop_and_collect(self, runtime: AgentRuntime, host: Any, spec: NodeSpec) -> None:
        """Cancelled: the remote run stopped, its processes gone, its work kept."""
        try:
            with anyio.fail_after(STOP_SECONDS):
                await (await self.driver.call(host.stop))
        except Exception as exc:
            logger.info("agent #%s: stopping on the node: %s", runtime.agent.number, exc)
        await self._collect(runtime, host, spec, None)

    async def _collect(
        self, runtime: AgentRuntime, host: Any, spec: NodeSpec, node_id: str | None
    ) -> None:
        """The node's work into the person's repository and the agent's local worktree.
        A host that is gone is replaced by a fresh actor pinned to the same node (the
        worktree is on its disk); a node that is gone leaves the last collected work."""
        if not spec.role.worktree:
            await self._drop(host)
            return
        o = self.o
        collected: Collected | None = None
        try:
            with anyio.fail_after(COLLECT_SECONDS):
                collected = await self._collect_from(host, spec, runtime)
        except Exception as exc:
            await self._drop(host)
            host = None
            if node_id is None and runtime.agent.placement.node:
                node_id = await self.driver.node_id_of(runtime.agent.placement.node)
            if node_id is not None:
                try:
                    host = await self.driver.host(spec.role, node_id=node_id, soft=False)
                    with anyio.fail_after(COLLECT_SECONDS):
                        collected = await self._collect_from(host, spec, runtime)
                except Exception as again:
                    logger.info("agent #%s: no salvage: %s", runtime.agent.number, again)
            if collected is None:
                await o._log(
                    runtime, "system", f"its work on the node could not be collected: {exc}"
                )
        finally:
            await self._drop(host)
        if collected is not None:
            await self._bring_home(runtime, spec, collected)

    async def _collect_from(self, host: Any, spec: NodeSpec, runtime: AgentRuntime) -> Collected:
        message = f"forkyard: agent #{spec.number}: {runtime.agent.title}"
        collected: Collected = await (await self.driver.call(host.collect, spec, message))
        return collected

    async def _bring_home(self, runtime: AgentRuntime, spec: NodeSpec, got: Collected) -> None:
        o, agent = self.o, runtime.agent
        if got.problem:
            await o._log(runtime, "system", f"on the node: {got.problem}")
        commit = got.commit or spec.start_commit
        if got.bundle is not None:
            await _fetch(o, agent.number, got.bundle, spec.branch)
            size = len(got.bundle)
            await o._log(runtime, "system", f"its work came back: {size:,} bytes")
        assert agent.branch is not None
        if agent.worktree and await is_dir(agent.worktree):
            git = await o.repository.worktree_git(Path(agent.worktree))
            await git.run("reset", "--hard", "--quiet", commit)
        else:
            path = o.worktrees_dir / agent.branch.removeprefix("forkyard/")
            report = await o.pool.make_worktree(
                path, branch=agent.branch, commit=commit, sparse_paths=runtime.sparse_paths or ()
            )
            await o._update(runtime, worktree=str(path))
            await o._log(runtime, "system", f"its work is in {path} ({report})")
        if got.bundle is not None:
            async with o.repository.write_lock:
                await o.repository.git("update-ref", "-d", _incoming_ref(agent.number))

    async def _drop(self, host: Any) -> None:
        if host is not None:
            await self.driver.kill(host)

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


def _incoming_ref(number: int) -> str:
    return f"refs/forkyard/cluster/{number}"


async def _fetch(o: Orchestrator, number: int, bundle: bytes, branch: str) -> None:
    """The node's bundle into the person's repository, under a ref of ours only."""
    path = o.worktrees_dir.parent / f"incoming-{number}.bundle"
    await anyio.Path(path.parent).mkdir(parents=True, exist_ok=True)
    await anyio.Path(path).write_bytes(bundle)
    try:
        async with o.repository.write_lock:
            await o.repository.git(
                "fetch", "--quiet", "--no-tags", "--no-write-fetch-head", str(path),
                f"+refs/heads/{branch}:{_incoming_ref(number)}",
            )  # fmt: skip
    finally:
        await anyio.Path(path).unlink(missing_ok=True)


def _shipping_note(prepared: Prepared, size: int) -> str:
    kept = "kept from its last run" if prepared.reused else "made"
    if prepared.shipped_bytes:
        return f"worktree on the node {kept}; its base was shipped ({size:,} bytes)"
    return f"worktree on the node {kept}; its base was already there (0 bytes shipped)"


def _ray_reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
