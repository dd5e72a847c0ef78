"""Running one agent, start to end: its worktree prepared (pool, setup step), its backend
run with follow-ups, then its work recorded (diff, commit to its branch) and its final
state announced. Whatever raises on the way fails this agent only: the orchestrator's
other agents, and the supervisor task group they share, run on."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from forkyard.agents.base import RunOutcome
from forkyard.orchestrator.checks import role_check, run_check
from forkyard.orchestrator.context import RunContext
from forkyard.orchestrator.events import NoticeLevel
from forkyard.orchestrator.failures import cause_of, leaf
from forkyard.orchestrator.runtime import AgentRuntime, is_dir
from forkyard.orchestrator.states import IllegalTransition
from forkyard.settings import RoleConfig
from forkyard.workspace.diff import diff_worktree
from forkyard.workspace.git import GitError
from forkyard.workspace.overlay import ensure_mounted
from forkyard.workspace.setup import PortRange, SetupError, set_up_worktree
from forkyard_protocol.models import FINAL_STATES, ChangeCounts, FileChange, Progress

if TYPE_CHECKING:
    from forkyard.orchestrator.orchestrator import Orchestrator

logger = logging.getLogger(__name__)

FINISH_TIMEOUT_SECONDS = 60


class AgentRunner:
    """The run task of every agent of one orchestrator."""

    def __init__(self, orchestrator: Orchestrator) -> None:
        self.o = orchestrator

    async def run(self, runtime: AgentRuntime) -> None:
        number = runtime.agent.number
        scope = anyio.CancelScope()
        runtime.cancel_scope = scope
        try:
            with scope:
                await self._work(runtime)
                return
            with anyio.CancelScope(shield=True):
                await self.finish(runtime, RunOutcome(False, "", None), state="cancelled")
        except anyio.get_cancelled_exc_class():
            # An agent that had finished (only its last log flush was cut short) stays
            # finished; one still working was interrupted.
            if runtime.agent.state not in FINAL_STATES:
                with anyio.CancelScope(shield=True):
                    try:
                        await self.finish(
                            runtime,
                            RunOutcome(False, "", "the server stopped while this agent ran"),
                            state="interrupted",
                        )
                    except Exception:
                        logger.exception("agent #%s: could not record the interruption", number)
            raise
        except Exception as exc:
            # Anything the run or its finishing raised is this agent's failure, never
            # the supervisor's: the other agents run on.
            with anyio.CancelScope(shield=True):
                await self._fail(runtime, exc)
        finally:
            runtime.cancel_scope = None
            self.o._active.discard(runtime.agent.id)
            self.o._pump()
            self.o._runs_changed()

    async def _work(self, runtime: AgentRuntime) -> None:
        agent = runtime.agent
        role = self.o.settings.role(agent.role) or RoleConfig()
        if agent.placement.kind == "cluster":
            outcome, state = await self.o.cluster.work(runtime, role)
            await self.finish(runtime, outcome, state=state)
            return
        backend = self.o.backends[agent.backend]
        try:
            await self.o._update(runtime, state="starting", progress=Progress(message="starting"))
            ports = self.o.ports(agent.number)
            cwd = await self._prepare(runtime, role, ports)
            await self.o._update(runtime, state="running", progress=Progress(message="running"))
            context = RunContext(self.o, runtime, cwd, role, extra_env=ports.environment())
            instruction = runtime.rerun or agent.task
            runtime.rerun = None
            while True:
                outcome = await backend.run(context, instruction)
                if not outcome.ok or not runtime.followups:
                    break
                instruction = runtime.followups.pop(0)
        except (GitError, OSError, SetupError) as exc:
            outcome = RunOutcome(False, "", str(exc))
        except Exception as exc:
            logger.exception("agent #%s failed", agent.number)
            outcome = RunOutcome(False, "", cause_of(exc))
        await self.finish(runtime, outcome, state="done" if outcome.ok else "failed")

    async def _fail(self, runtime: AgentRuntime, exc: BaseException) -> None:
        """The last resort for an agent whose finishing raised: `failed`, with the cause,
        its worktree and files kept. Even a failing store only loses the persistence."""
        agent = runtime.agent
        logger.error("agent #%s failed", agent.number, exc_info=exc)
        kept = f"; its worktree {agent.worktree} is kept" if agent.worktree else ""
        error = f"Forkyard could not finish this agent: {cause_of(exc)}{kept}"
        try:
            await self.o._update(runtime, state="failed", progress=None, error=error)
        except IllegalTransition:
            raise
        except Exception:
            logger.exception("could not record agent #%s as failed", agent.number)
            previous = runtime.agent.state
            runtime.agent = runtime.agent.model_copy(
                update={"state": "failed", "progress": None, "error": error}
            )
            self.o.listeners.agent_changed(runtime.agent, previous)
            self.o._notify_waiters(runtime)
        self.o.listeners.notice(
            "error",
            f"Forkyard agent #{agent.number} ({agent.title}) failed: {error}",
            runtime.agent,
        )

    async def _prepare(self, runtime: AgentRuntime, role: RoleConfig, ports: PortRange) -> Path:
        """The agent's worktree: from the warm pool when it can serve, else a fresh
        (maybe sparse) checkout; then the setup step of `[worktree]`."""
        agent = runtime.agent
        if not role.worktree:
            return self.o.repository.root
        if agent.worktree and await is_dir(agent.worktree):
            path = Path(agent.worktree)
            await ensure_mounted(path)  # an overlay worktree, after a restart of the machine
            if runtime.setup_failed:
                await self._set_up(runtime, path, ports)
            return path
        assert agent.branch is not None
        path = self.o.worktrees_dir / agent.branch.removeprefix("forkyard/")
        report = await self.o.pool.make_agent_worktree(
            path,
            branch=agent.branch,
            commit=agent.base_ref,
            sparse_paths=runtime.sparse_paths or (),
        )
        await self.o._update(runtime, worktree=str(path))
        await self.o._log(runtime, "system", report)
        await self.o._log(runtime, "system", f"ports {ports} (FORKYARD_PORT_BASE, FORKYARD_PORTS)")
        await self._set_up(runtime, path, ports)
        return path

    async def record_overlaps(self, runtime: AgentRuntime, files: list[FileChange]) -> None:
        """Never fails the agent: overlaps are advice."""
        try:
            await self.o.overlaps.agent_done(runtime, files)
        except Exception:
            logger.exception("agent #%s: could not compute its overlaps", runtime.agent.number)

    async def _set_up(self, runtime: AgentRuntime, path: Path, ports: PortRange) -> None:
        async def log(kind: str, text: str) -> None:
            await self.o._log(runtime, kind, text)

        runtime.setup_failed = True
        await set_up_worktree(
            path,
            checkout=self.o.repository.root,
            settings=self.o.settings,
            git_env=self.o.repository.env,
            environ=self.o.environ,
            extra_env=ports.environment(),
            log=log,
            repository=self.o.repository,
        )
        runtime.setup_failed = False

    async def finish(self, runtime: AgentRuntime, outcome: RunOutcome, *, state: str) -> None:
        """Record the end of a run: the work committed to the agent's branch (so it is
        in a ref whatever happens next), the change counts, and the final state."""
        agent = runtime.agent
        changes = agent.changes
        files: list[FileChange] = []
        record_error: str | None = None
        if agent.worktree and await is_dir(agent.worktree):
            try:
                with anyio.fail_after(FINISH_TIMEOUT_SECONDS):
                    diff = await diff_worktree(
                        Path(agent.worktree),
                        agent.base_ref,
                        self.o.repository.root,
                        repository=self.o.repository,
                    )
                    files = diff.files
                    changes = ChangeCounts(
                        files=len(diff.files),
                        additions=sum(f.additions for f in diff.files),
                        deletions=sum(f.deletions for f in diff.files),
                    )
                    await self.o.repository.commit_worktree(
                        Path(agent.worktree), f"forkyard: agent #{agent.number}: {agent.title}"
                    )
            except Exception as exc:
                # A diff or commit that fails (a tampered worktree, git gone, a bug; in
                # an ExceptionGroup from diff's task group) fails this agent only.
                logger.warning(
                    "agent #%s: could not record its worktree", agent.number, exc_info=exc
                )
                # A tampered worktree may still have had its files committed (through
                # the repository's own records): then say where the work is.
                commit = getattr(leaf(exc), "commit", None)
                kept = (
                    f"its work is committed as {commit[:12]}"
                    if isinstance(commit, str) and commit
                    else "its files are kept there"
                )
                record_error = (
                    f"could not record the worktree {agent.worktree}: {cause_of(exc)}; {kept}"
                )
                await self.o._log(runtime, "system", record_error)
        summary = outcome.summary or agent.summary
        error = outcome.error
        if state == "cancelled":
            error = None
            summary = summary or "cancelled by the user"
        if record_error is not None:
            error = f"{error}; {record_error}" if error else record_error
            if state in ("done", "cancelled"):
                state = "failed"
        check = agent.check
        if state == "done" and (command := role_check(self.o, agent.role)):
            check = await run_check(self.o, runtime, command)
        await self.o._update(
            runtime,
            state=state,
            progress=None,
            summary=summary,
            error=error,
            changes=changes,
            check=check,
        )
        if state == "done":
            await self.record_overlaps(runtime, files)
        try:
            await self.o._flush_logs()
        except Exception:
            # The agent's outcome stands; its log entries wait for the next flush.
            logger.exception("agent #%s: could not write its log yet", agent.number)
        level: NoticeLevel = (
            "info" if state == "done" else "warning" if state == "cancelled" else "error"
        )
        text = f"Forkyard agent #{agent.number} ({agent.title}) {state}"
        if state == "done":
            text += f": {changes.files} file(s) changed, +{changes.additions} -{changes.deletions}"
        elif error:
            text += f": {error}"
        if state != "interrupted":
            self.o.listeners.notice(level, text, runtime.agent)
