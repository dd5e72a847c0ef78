"""The daemon's domain: one session (a `ForkyardApp`) per repository, the fronts attached
to each, and what a front is owed when it attaches (agents, waiting approvals, what ended
while nobody watched).

The hub never waits on a front: a front is a `deliver` callable fed by one task per front
that drains that front's own bus subscription.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from anyio.abc import TaskGroup

import forkyard
from forkyard.app import ForkyardApp
from forkyard.clock import new_id
from forkyard.errors import DaemonStopping, InvalidRequest
from forkyard.orchestrator.ledger import UsageLedger
from forkyard.settings import SettingsProblem, user_config_file
from forkyard.settings_watch import watch_settings_files
from forkyard.store import Store
from forkyard.tools.sandbox import probe_sandbox
from forkyard.trust import trust_file
from forkyard.workspace.git import GitError, Repository
from forkyard_protocol.daemon import (
    DAEMON_PROTOCOL_VERSION,
    AgentChanged,
    AttachParams,
    AttachResult,
    DaemonStatus,
    Event,
    FrontInfo,
    Notice,
    SettingsChanged,
    SettingsProblemInfo,
)
from forkyard_protocol.models import ACTIVE_STATES, BackendInfo, ForkyardCapabilities

logger = logging.getLogger(__name__)

#: Events a front may fall behind by before it is dropped (it re-attaches and resyncs).
FRONT_BUFFER = 50_000
AWAY_STATES = ("done", "failed", "cancelled", "interrupted")


@dataclass
class Front:
    """One attached editor or terminal command."""

    id: str
    kind: str
    name: str
    deliver: Callable[[Event], None]
    #: Ends the front's connection (it attaches again and resynchronises).
    disconnect: Callable[[], None] = lambda: None
    session: Session | None = None
    scope: anyio.CancelScope | None = None


@dataclass
class Session:
    app: ForkyardApp
    fronts: dict[str, Front] = field(default_factory=dict)
    #: Agents that ended while no front was attached, told to the next one once.
    away: list[str] = field(default_factory=list)

    @property
    def root(self) -> Path:
        return self.app.repository.root


def problem_info(problems: list[SettingsProblem]) -> list[SettingsProblemInfo]:
    return [
        SettingsProblemInfo(source=p.source, key=p.key, message=p.message, summary=p.summary)
        for p in problems
    ]


class Hub:
    def __init__(
        self,
        state_dir: Path,
        environ: Mapping[str, str],
        task_group: TaskGroup,
        socket_path: Path | None = None,
        log_file: Path | None = None,
        store: Store | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.environ = environ
        self.task_group = task_group
        self.socket_path = socket_path
        self.log_file = log_file
        self.store = store
        #: The store's usage sums, one for every repository: a day's budget is all of them.
        self.ledger = UsageLedger(store) if store is not None else None
        self.sessions: dict[str, Session] = {}
        self.fronts: dict[str, Front] = {}
        self.started = time.monotonic()
        self.stopping = False
        #: Set whenever a front attaches or detaches or an agent changes: the idle
        #: watch and `stop` wait on it.
        self.changed = anyio.Event()
        self._opening = anyio.Lock()

    # --- sessions ---------------------------------------------------------------------

    async def session_for(self, root: Path, params: AttachParams) -> tuple[Session, bool]:
        """The repository's session, and whether it was opened just now (with `params`'
        options)."""
        try:
            repository = await Repository.discover(root)
        except GitError as exc:
            raise InvalidRequest(f"root: {exc}") from exc
        key = str(repository.root)
        async with self._opening:
            session = self.sessions.get(key)
            if session is not None:
                return session, False
            app = await ForkyardApp.open(
                repository.root,
                self.environ,
                params.initialization_options,
                state_dir=self.state_dir,
                client_settings=params.client_settings,
                store=self.store,
                ledger=self.ledger,
            )
            session = Session(app)
            await app.start(self.task_group)
            self.sessions[key] = session
            self.task_group.start_soon(
                self._watch_session, session, name=f"events of {repository.root}"
            )
            self.task_group.start_soon(
                self._watch_settings, session, name=f"settings of {repository.root}"
            )
            return session, True

    async def _watch_session(self, session: Session) -> None:
        """What ended while no front was attached, and wake-ups for the idle watch."""
        with session.app.bus.subscribe() as events:
            async for event in events:
                if isinstance(event, AgentChanged):
                    self._poke()
                    agent = event.agent
                    if (
                        not session.fronts
                        and agent.state in AWAY_STATES
                        and agent.state != event.previous_state
                    ):
                        session.away.append(f"#{agent.number} {agent.state}")

    async def _watch_settings(self, session: Session) -> None:
        """Editing `.forkyard.toml` (or the user's config) applies at once."""

        async def reload() -> None:
            problems = await session.app.reload_settings(session.app.client_settings)
            session.app.bus.publish(
                SettingsChanged(
                    capabilities=await self.capabilities(session), problems=problem_info(problems)
                )
            )

        files = [
            user_config_file(self.environ),
            session.root / ".forkyard.toml",
            trust_file(self.environ),
        ]
        await watch_settings_files(files, reload)

    async def capabilities(self, session: Session) -> ForkyardCapabilities:
        app = session.app
        availability = await app.backend_availability()
        return ForkyardCapabilities(
            roles=app.settings.role_names(),
            backends=[name for name, status in availability.items() if status.available],
            backend_details=[
                BackendInfo(
                    name=name,
                    available=status.available,
                    reason=status.reason,
                    kind=app.backend_kind(name),
                )
                for name, status in availability.items()
            ],
            trusted=app.loaded.trusted,
        )

    # --- fronts -----------------------------------------------------------------------

    async def attach(
        self,
        params: AttachParams,
        deliver: Callable[[Event], None],
        front_id: str | None = None,
        disconnect: Callable[[], None] = lambda: None,
    ) -> tuple[Front, AttachResult]:
        if self.stopping:
            logger.info("refused an attach of %s: stopping", params.root)
            raise DaemonStopping("the Forkyard daemon is stopping; try again in a moment")
        root = Path(params.root)
        if not root.is_absolute():
            raise InvalidRequest(f"root: {params.root!r} is not an absolute path")
        session, opened = await self.session_for(root, params)
        front = Front(
            front_id or new_id("front"), params.kind, params.name, deliver, disconnect, session
        )
        if not opened and (
            params.client_settings is not None or params.initialization_options is not None
        ):
            # The latest editor's options apply to the repository (the first one's were
            # read when the session opened).
            app = session.app
            if params.initialization_options is not None:
                app.initialization_options = params.initialization_options
            await app.reload_settings(params.client_settings)
        # Every editor that opens the repository is told what of its settings is wrong.
        problems = session.app.loaded.problems if params.kind == "editor" else []
        # Subscribed before the agents are read: nothing between them is missed.
        receive, send = session.app.bus.open_subscription(FRONT_BUFFER)
        away, session.away = session.away, []
        sandbox = await probe_sandbox()
        orphans = (
            await session.app.orchestrator.worktrees.orphans_notice()
            if params.kind == "editor"
            else None
        )
        result = AttachResult(
            front_id=front.id,
            daemon_pid=os.getpid(),
            daemon_version=forkyard.__version__,
            protocol=DAEMON_PROTOCOL_VERSION,
            root=str(session.root),
            state_dir=str(self.state_dir),
            capabilities=await self.capabilities(session),
            problems=problem_info(problems),
            agents=session.app.orchestrator.agents(),
            away=away,
            warnings=[orphans] if orphans else [],
            sandbox_problem=None if sandbox.available else sandbox.reason,
            allow_unsandboxed=session.app.settings.allow_unsandboxed_commands,
            approvals=session.app.approvals.waiting(),
        )
        session.fronts[front.id] = front
        self.fronts[front.id] = front
        self._poke()

        async def forward() -> None:
            with anyio.CancelScope() as front.scope:
                try:
                    async with receive:
                        async for event in receive:
                            front.deliver(event)
                finally:
                    session.app.bus.close_subscription(send)
                # The bus dropped this front (it fell FRONT_BUFFER events behind): it
                # must not go on believing it is up to date.
                if front.id in self.fronts:
                    logger.warning("front %s fell behind; disconnecting it", front.id)
                    front.disconnect()

        self.task_group.start_soon(forward, name=f"events to front {front.id}")
        return front, result

    def detach(self, front: Front) -> None:
        self.fronts.pop(front.id, None)
        if front.session is not None:
            front.session.fronts.pop(front.id, None)
        if front.scope is not None:
            front.scope.cancel()
        self._poke()

    # --- the daemon's own state ---------------------------------------------------------

    def _poke(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()

    def agent_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for session in self.sessions.values():
            for agent in session.app.orchestrator.agents():
                counts[agent.state] = counts.get(agent.state, 0) + 1
        return counts

    def working(self) -> int:
        """Agents running or queued, and approvals waiting, over every repository."""
        counts = self.agent_counts()
        return sum(counts.get(state, 0) for state in (*ACTIVE_STATES, "queued"))

    def idle(self) -> bool:
        return not self.fronts and self.working() == 0

    def idle_seconds(self, default: float) -> float:
        """`daemon_idle_seconds`: the longest any open repository's settings ask for."""
        values = [s.app.settings.daemon_idle_seconds for s in self.sessions.values()]
        return max(values) if values else default

    def status(self) -> DaemonStatus:
        return DaemonStatus(
            pid=os.getpid(),
            socket=str(self.socket_path or ""),
            version=forkyard.__version__,
            uptime_seconds=time.monotonic() - self.started,
            repositories=sorted(self.sessions),
            fronts=[
                FrontInfo(
                    id=f.id,
                    kind=f.kind,
                    name=f.name,
                    root=str(f.session.root) if f.session else "",
                )
                for f in self.fronts.values()
            ],
            agents=self.agent_counts(),
            state_dir=str(self.state_dir),
            log_file=str(self.log_file or ""),
            stopping=self.stopping,
        )

    def tell_everyone(self, text: str) -> None:
        """A failure of the daemon's own, told in every attached editor."""
        for session in self.sessions.values():
            session.app.bus.publish(Notice(level="error", text=text))

    async def wait_until_no_agent_works(self) -> None:
        while self.working():
            await self.changed.wait()

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            for session in list(self.sessions.values()):
                try:
                    await session.app.close()
                except Exception:
                    logger.exception("closing %s failed", session.root)


__all__ = ["Front", "Hub", "Session"]
