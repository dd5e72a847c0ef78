"""The orchestrator: agents queued, run at most N at a time in the background, each in its
own cancel scope and (for writing roles) its own worktree; every change persisted and
announced.

Everything here runs on the event loop and only awaits: git, the store and processes run
elsewhere. Agents are plain `Agent` models plus a little runtime state.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import anyio
from anyio.abc import TaskGroup

from forkyard.agents.base import ApprovalAnswer, Backend
from forkyard.bus import EventBus
from forkyard.clock import new_id, now_iso
from forkyard.cluster.run import ClusterAgents
from forkyard.errors import InvalidRequest, UnknownAgent, WrongState
from forkyard.models.pricing import add_usage
from forkyard.orchestrator.events import Reporter
from forkyard.orchestrator.failures import keep_running
from forkyard.orchestrator.ledger import UsageLedger
from forkyard.orchestrator.materialize import refuse_while_materializing
from forkyard.orchestrator.numbering import base_commit, free_agent_number
from forkyard.orchestrator.overlaps import OverlapTracker
from forkyard.orchestrator.runner import FINISH_TIMEOUT_SECONDS, AgentRunner
from forkyard.orchestrator.runtime import AgentRuntime, is_dir
from forkyard.orchestrator.states import check_move
from forkyard.orchestrator.titles import title_from_task
from forkyard.orchestrator.worktrees import Worktrees
from forkyard.settings import Settings
from forkyard.store import Store
from forkyard.workspace.diff import WorktreeDiff, diff_worktree, file_at
from forkyard.workspace.gc import GcReport
from forkyard.workspace.git import GitError, Repository, slugify
from forkyard.workspace.pool import (
    WorktreePool,
    pool_directory,
    sparse_folders,
    trash_directory,
)
from forkyard.workspace.setup import PortRange, port_range
from forkyard_protocol.messages import AgentDispatchParams
from forkyard_protocol.models import (
    ACTIVE_STATES,
    Agent,
    AgentPlacement,
    LogEntry,
    Progress,
    Usage,
)

logger = logging.getLogger(__name__)

LLM_BACKEND = "llm"
PROGRESS_INTERVAL_SECONDS = 0.1

Approver = Callable[[Agent, str, str], Awaitable[ApprovalAnswer]]
LOG_FLUSH_SECONDS = 0.25
MAX_NUMBER_DIGITS = 18


class Orchestrator:
    """One per repository (the user's checkout)."""

    def __init__(
        self,
        repository: Repository,
        store: Store,
        settings: Callable[[], Settings],
        backends: Mapping[str, Backend],
        state_dir: Path,
        environ: Mapping[str, str],
        bus: EventBus | None = None,
        ledger: UsageLedger | None = None,
    ) -> None:
        """`ledger`: the store's, shared with the other repositories the store serves."""
        self.repository = repository
        self.store = store
        self.ledger = ledger or UsageLedger(store)
        self._settings = settings
        self.backends = dict(backends)
        self.state_dir = state_dir
        self.environ = environ
        self.bus = bus or EventBus()
        self.listeners = Reporter(self.bus)
        self.repo_key = repository_key(repository.root)
        self._agents: dict[str, AgentRuntime] = {}
        self._queue: list[AgentRuntime] = []
        self._active: set[str] = set()
        self._task_group: TaskGroup | None = None
        self._log_dirty: set[str] = set()
        self._state_waiters: dict[str, anyio.Event] = {}
        self._flush_lock = anyio.Lock()
        self._idle = anyio.Event()
        #: Asks the user about a tool use; set by the editor layer. None: "ask" is "deny".
        self.approver: Approver | None = None
        self.pool = WorktreePool(
            repository,
            pool_directory(self.worktrees_dir),
            trash_directory(self.worktrees_dir),
            lambda: self.settings.worktree,
        )
        self.runner = AgentRunner(self)
        self.worktrees = Worktrees(self)
        self.cluster = ClusterAgents(self)
        self.overlaps = OverlapTracker(self)

    @property
    def settings(self) -> Settings:
        return self._settings()

    @property
    def worktrees_dir(self) -> Path:
        return worktrees_directory(self.state_dir, self.repo_key)

    # --- lifecycle -------------------------------------------------------------------

    async def start(self, task_group: TaskGroup) -> None:
        """Load agents from the store; those the last server left running are
        `interrupted` (their worktrees kept); unowned worktrees are reported."""
        self._task_group = task_group
        await self.ledger.start(task_group)
        for agent in await self.store.load_agents(self.repo_key):
            runtime = AgentRuntime(agent)
            self._agents[agent.id] = runtime
            if agent.state in ACTIVE_STATES or agent.state == "queued":
                await self._update(
                    runtime,
                    state="interrupted",
                    progress=None,
                    error="the server stopped while this agent ran; its worktree is kept",
                )
        warn = self._warn
        task_group.start_soon(keep_running, self._flush_logs_forever, "the log flusher", warn)
        task_group.start_soon(
            keep_running, self.pool.run, "the worktree pool", warn, name=f"pool of {self.repo_key}"
        )
        task_group.start_soon(
            keep_running, self.worktrees.collect_garbage_forever, "worktree gc", warn, name="gc"
        )

    def _warn(self, text: str) -> None:
        self.listeners.notice("warning", text)

    async def stop(self) -> None:
        """Persist what is pending; called on shutdown, shielded by the caller."""
        await self._flush_logs()
        await self.ledger.flush()
        await self.pool.stop()

    # --- queries ---------------------------------------------------------------------

    def agents(self) -> list[Agent]:
        """Newest first."""
        ordered = sorted(self._agents.values(), key=lambda r: r.agent.number, reverse=True)
        return [r.agent.model_copy(deep=True) for r in ordered]

    def resolve(self, ref: str) -> AgentRuntime:
        """An agent by id, or by its number written as a string ("3", "#3")."""
        if runtime := self._agents.get(ref):
            return runtime
        number = ref.removeprefix("#").strip()
        # Bounded: int() of thousands of digits raises, and no agent number is that long.
        if number.isascii() and number.isdigit() and len(number) <= MAX_NUMBER_DIGITS:
            for runtime in self._agents.values():
                if runtime.agent.number == int(number):
                    return runtime
        raise UnknownAgent(ref if len(ref) <= 60 else ref[:57] + "...")

    async def read(self, ref: str) -> tuple[Agent, list[LogEntry]]:
        runtime = self.resolve(ref)
        await self._flush_logs()
        log = await self.store.read_log(runtime.agent.id)
        return runtime.agent.model_copy(deep=True), log

    async def diff(self, ref: str) -> WorktreeDiff | None:
        """The agent's worktree against its base; None for agents without a worktree."""
        agent = self.resolve(ref).agent
        if not agent.worktree:
            return None
        if not await is_dir(agent.worktree):
            raise InvalidRequest(f"agent #{agent.number}'s worktree is gone: {agent.worktree}")
        return await diff_worktree(
            Path(agent.worktree), agent.base_ref, self.repository.root, repository=self.repository
        )

    async def file(self, ref: str, path: str) -> str | None:
        agent = self.resolve(ref).agent
        root = Path(agent.worktree) if agent.worktree else self.repository.root
        try:
            return await file_at(root, path)
        except ValueError as exc:
            raise InvalidRequest(f"path: {exc}") from exc

    # --- commands --------------------------------------------------------------------

    async def dispatch(self, params: AgentDispatchParams, group: str | None = None) -> Agent:
        settings = self.settings
        role = settings.role(params.role)
        if role is None:
            raise InvalidRequest(
                f"role: unknown role {params.role!r}; known roles: "
                + ", ".join(settings.role_names())
            )
        backend_name = params.backend or LLM_BACKEND
        backend = self.backends.get(backend_name)
        if backend is None:
            if backend_name == LLM_BACKEND:
                raise InvalidRequest(
                    "backend: the llm backend needs a model; configure one in "
                    ".forkyard.toml ([models.default] provider, base_url, model) or dispatch "
                    'with backend "command" to run a shell command'
                )
            raise InvalidRequest(
                f"backend: unknown backend {backend_name!r}; known backends: "
                + ", ".join(sorted(self.backends))
            )
        availability = await backend.availability(settings)
        if not availability.available:
            raise InvalidRequest(f"backend: {backend_name} is unavailable: {availability.reason}")
        try:
            sparse_paths = sparse_folders(params.paths) if params.paths else role.paths
        except ValueError as exc:
            raise InvalidRequest(f"paths: {exc}") from exc
        placement = params.placement or role.placement
        if placement == "cluster":
            await self.cluster.check_reachable()
        base = await base_commit(self.repository, params, role)
        number = await free_agent_number(self.store, self.repository, self.repo_key)
        title = (params.title or title_from_task(params.task, backend_name)).strip()
        stamp = now_iso()
        agent = Agent(
            id=new_id("agent"),
            number=number,
            title=title,
            task=params.task,
            role=params.role,
            backend=backend_name,
            state="queued",
            thread_id=params.thread_id,
            base_ref=base,
            branch=f"forkyard/{number}-{slugify(title)}" if role.worktree else None,
            created_at=stamp,
            updated_at=stamp,
            budget_usd=role.budget_usd if params.budget_usd is None else params.budget_usd,
            max_tokens=role.max_tokens if params.max_tokens is None else params.max_tokens,
            group=group,
            placement=AgentPlacement(kind=placement),
        )
        runtime = AgentRuntime(agent, sparse_paths=sparse_paths or None)
        self._agents[agent.id] = runtime
        await self._save_and_announce(runtime, None)
        self._queue.append(runtime)
        self._pump()
        return runtime.agent.model_copy(deep=True)

    async def set_budget(
        self, ref: str, *, budget_usd: float | None = None, max_tokens: int | None = None
    ) -> Agent:
        """New limits for the agent (None keeps one): checked before its next model call,
        so a finished agent stopped by its budget can be sent on with a higher one."""
        runtime = self.resolve(ref)
        if runtime.agent.state in ("applied", "discarded"):
            raise WrongState(f"agent #{runtime.agent.number} was {runtime.agent.state}")
        changes = {"budget_usd": budget_usd, "max_tokens": max_tokens}
        changes = {key: value for key, value in changes.items() if value is not None}
        if changes:
            await self._update(runtime, **changes)
        return runtime.agent.model_copy(deep=True)

    async def message(
        self, ref: str, text: str, *, budget_usd: float | None = None, max_tokens: int | None = None
    ) -> Agent:
        """A follow-up: a running agent gets it at its next step; a finished one runs
        again in the same worktree. A budget given is set first."""
        runtime = self.resolve(ref)
        if runtime.agent.state not in ("applied", "discarded"):
            await self.set_budget(ref, budget_usd=budget_usd, max_tokens=max_tokens)
        agent = runtime.agent
        if agent.state in ("queued", "starting", "running"):
            runtime.followups.append(text)
            await self._log(runtime, "user", text)
            return agent.model_copy(deep=True)
        if agent.state in ("applied", "discarded"):
            raise WrongState(f"agent #{agent.number} was {agent.state}; dispatch a new one")
        refuse_while_materializing(agent)
        if agent.worktree and not await is_dir(agent.worktree):
            raise InvalidRequest(f"agent #{agent.number}'s worktree is gone: {agent.worktree}")
        runtime.rerun = text
        await self._log(runtime, "user", text)
        await self._update(runtime, state="queued", error=None, progress=None)
        self._queue.append(runtime)
        self._pump()
        return runtime.agent.model_copy(deep=True)

    async def cancel(self, ref: str) -> Agent:
        """Stops the agent; its worktree and everything it wrote are kept."""
        runtime = self.resolve(ref)
        agent = runtime.agent
        if runtime in self._queue:
            self._queue.remove(runtime)
            await self._update(runtime, state="cancelled", progress=None)
        elif agent.state in ACTIVE_STATES and runtime.cancel_scope is not None:
            runtime.cancel_scope.cancel()
            # The run task records `cancelled` once its processes are gone.
            with anyio.fail_after(FINISH_TIMEOUT_SECONDS):
                while runtime.agent.state in ACTIVE_STATES:
                    await self._state_changed(runtime)
        return runtime.agent.model_copy(deep=True)

    async def discard(self, ref: str) -> Agent:
        """Removes worktree and branch, keeping the work under refs/forkyard/discarded/N."""
        runtime = self.resolve(ref)
        agent = runtime.agent
        if agent.state in ACTIVE_STATES or runtime in self._queue:
            await self.cancel(ref)
        if agent.worktree:
            try:
                await self.repository.remove_worktree(
                    Path(agent.worktree),
                    agent.branch,
                    keep_ref=f"refs/forkyard/discarded/{agent.number}",
                )
            except GitError as exc:
                raise InvalidRequest(f"cannot discard agent #{agent.number}: {exc}") from exc
        await self._update(runtime, state="discarded", worktree=None, branch=None, progress=None)
        return runtime.agent.model_copy(deep=True)

    async def mark_applied(self, ref: str) -> Agent:
        runtime = self.resolve(ref)
        if runtime.agent.state != "done":
            raise WrongState(f"agent #{runtime.agent.number} is {runtime.agent.state}, not done")
        await self._update(runtime, state="applied")
        return runtime.agent.model_copy(deep=True)

    # --- scheduling ------------------------------------------------------------------

    def _pump(self) -> None:
        """Start queued agents while slots are free. Called whenever a slot may have
        opened: dispatch, an agent ending, a settings change."""
        if self._task_group is None:
            return
        for runtime in self.cluster.startable(self._queue, self._active, self._agents):
            self._queue.remove(runtime)
            self._active.add(runtime.agent.id)
            self._task_group.start_soon(
                self.runner.run, runtime, name=f"agent #{runtime.agent.number}"
            )

    async def request_approval(
        self, runtime: AgentRuntime, tool: str, detail: str
    ) -> ApprovalAnswer:
        """Only the asking agent waits; a failing or missing approver means deny."""
        answer: ApprovalAnswer = "deny"
        if self.approver is not None:
            try:
                answer = await self.approver(runtime.agent.model_copy(deep=True), tool, detail)
            except Exception as exc:
                logger.info("approval request failed: %s", exc)
        await self._log(runtime, "approval", f"{tool} {detail!r}: {answer}")
        return answer

    def settings_changed(self) -> None:
        self._pump()
        self.pool.wake()

    def ports(self, agent_number: int) -> PortRange:
        """The agent's own ports, the same after a restart (derived from its number)."""
        return port_range(self.settings.worktree, agent_number, self.repo_key)

    async def collect_garbage(
        self, *, dry_run: bool = False, forced: frozenset[int] = frozenset()
    ) -> GcReport:
        return await self.worktrees.collect_garbage(dry_run=dry_run, forced=forced)

    # --- state, persistence, events --------------------------------------------------

    async def _update(self, runtime: AgentRuntime, **changes: object) -> None:
        previous = runtime.agent.state
        if "state" in changes:
            check_move(runtime.agent.number, previous, changes["state"])  # type: ignore[arg-type]
        # By field name: `changes` are field names, and a camelCase key would win.
        data = runtime.agent.model_dump(by_alias=False)
        data.update(changes)
        left_done = previous == "done" and data["state"] != "done"
        if left_done:
            data["overlaps"] = []  # only done agents overlap
        data["updated_at"] = now_iso()
        before, runtime.agent = runtime.agent, Agent.model_validate(data)
        try:
            await self._save_and_announce(runtime, previous)
        except BaseException:
            # Not saved, not announced: it did not happen (the caller may fail the agent).
            if runtime.agent.state == data["state"]:
                runtime.agent = before
            raise
        if left_done:
            await self.overlaps.agent_left(runtime.agent.id)

    async def _save_and_announce(self, runtime: AgentRuntime, previous: str | None) -> None:
        await self.store.save_agent(self.repo_key, runtime.agent)
        self.listeners.agent_changed(runtime.agent, previous)
        self._notify_waiters(runtime)

    def progress(self, runtime: AgentRuntime, message: str, percentage: int | None) -> None:
        """Progress is frequent: kept at once, announced at most every 100 ms, and the
        latest value always announced in the end (a trailing flush)."""
        runtime.agent.progress = Progress(message=message, percentage=percentage)
        wait = runtime.last_progress_emit + PROGRESS_INTERVAL_SECONDS - anyio.current_time()
        if wait <= 0:
            self._emit_progress(runtime)
        elif not runtime.progress_flush_pending and self._task_group is not None:
            runtime.progress_flush_pending = True
            self._task_group.start_soon(self._flush_progress_later, runtime, wait)

    def add_usage(self, runtime: AgentRuntime, usage: Usage) -> None:
        """One model call's usage, added to the agent's. Announced with the agent's next
        progress (a call with tools is followed by a step's) or change of state (a call
        without ends the run), and saved with that change: an announcement of its own
        would take the progress's turn and hide the first step. Counted in the day's and
        the thread's sums at once."""
        runtime.agent.usage = add_usage(runtime.agent.usage, usage)
        self.ledger.add(runtime.agent.thread_id, usage)

    def _emit_progress(self, runtime: AgentRuntime) -> None:
        runtime.last_progress_emit = anyio.current_time()
        runtime.agent.updated_at = now_iso()
        self.listeners.agent_changed(runtime.agent, runtime.agent.state)

    async def _flush_progress_later(self, runtime: AgentRuntime, delay: float) -> None:
        await anyio.sleep(delay)
        runtime.progress_flush_pending = False
        if runtime.agent.state in ACTIVE_STATES and runtime.agent.progress is not None:
            self._emit_progress(runtime)

    async def _log(self, runtime: AgentRuntime, kind: str, text: str) -> None:
        runtime.pending_log.append(LogEntry(time=now_iso(), kind=kind, text=text))
        self._log_dirty.add(runtime.agent.id)
        if len(runtime.pending_log) >= 500:
            await self._flush_logs()

    async def _flush_logs(self) -> None:
        """Write pending log entries. One flush at a time: a reader that flushes before
        reading must wait for a flush already under way, or it would miss its entries."""
        async with self._flush_lock:
            dirty, self._log_dirty = self._log_dirty, set()
            for agent_id in dirty:
                runtime = self._agents.get(agent_id)
                if runtime is None or not runtime.pending_log:
                    continue
                entries, runtime.pending_log = runtime.pending_log, []
                try:
                    await self.store.append_log(agent_id, entries)
                except BaseException:
                    # Kept for the next flush, in order: a failed write loses nothing.
                    runtime.pending_log[:0] = entries
                    self._log_dirty.update(dirty)
                    raise

    async def _flush_logs_forever(self) -> None:
        while True:
            await anyio.sleep(LOG_FLUSH_SECONDS)
            await self._flush_logs()

    def _runs_changed(self) -> None:
        """A run ended: wake whoever waits for the orchestrator to be idle."""
        if not self._active and not self._queue:
            self._idle.set()
            self._idle = anyio.Event()

    async def wait_until_idle(self) -> None:
        """Returns once no agent runs or waits to run, its finishing included (a
        graceful stop waits for this)."""
        while self._active or self._queue:
            await self._idle.wait()

    def _notify_waiters(self, runtime: AgentRuntime) -> None:
        if event := self._state_waiters.pop(runtime.agent.id, None):
            event.set()

    async def _state_changed(self, runtime: AgentRuntime) -> None:
        """Wait for the agent's next change, without polling."""
        await self._state_waiters.setdefault(runtime.agent.id, anyio.Event()).wait()


def _short_hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def repository_key(root: Path) -> str:
    """How the store and the state directory name a repository (its checkout root)."""
    return f"{root.name}-{_short_hash(str(root))}"


def worktrees_directory(state_dir: Path, repo_key: str) -> Path:
    return state_dir / "worktrees" / repo_key
