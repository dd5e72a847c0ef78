"""A front's link to its daemon: connect (starting the daemon when none answers), attach
to one repository, keep a mirror of its agents, and reconnect whenever the connection
ends: a daemon killed under us is started again and every agent's state resynchronised,
so the editor sees `interrupted` where a run was lost.

Used by `forkyard serve` (the LSP front) and by the terminal commands.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskGroup

from forkyard.daemon.paths import DaemonPaths, read_pid, socket_address
from forkyard.daemon.rpc import ConnectionClosed, Peer
from forkyard.errors import DaemonStopping, DaemonUnavailable, NotReady, UnknownAgent
from forkyard_protocol.daemon import (
    AgentChanged,
    AttachParams,
    AttachResult,
    Event,
    EventNotification,
)
from forkyard_protocol.models import Agent

logger = logging.getLogger(__name__)

#: How long a front waits for a daemon it started to answer.
START_TIMEOUT_SECONDS = 20.0
#: How long a request waits for the link to come back before it is refused.
REQUEST_WAIT_SECONDS = 15.0
CONNECT_RETRY_SECONDS = 0.02
#: How long a front waits for a stopping daemon (finishing its running agents) to go.
STOPPING_WAIT_SECONDS = 24 * 3600.0
MAX_NUMBER_DIGITS = 18


async def connect(paths: DaemonPaths) -> anyio.abc.SocketStream:
    address, fd = socket_address(paths.socket)
    try:
        return await anyio.connect_unix(address)
    finally:
        if fd is not None:
            os.close(fd)


async def process_gone(pid: int) -> None:
    """Returns once process `pid` has ended (its pidfd turns readable), zombie or not."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        await anyio.wait_readable(fd)
    finally:
        os.close(fd)


def start_daemon(paths: DaemonPaths, environ: Mapping[str, str], idle_seconds: float) -> None:
    """Start a detached daemon for `paths.state_dir` (blocking for the few milliseconds
    of a fork: call it from a worker thread). Two fronts doing this at once start two
    processes; the state directory's lock lets one of them run."""
    command = [
        sys.executable,
        "-m",
        "forkyard.cli",
        "daemon",
        "--detach",
        "--state-dir",
        str(paths.state_dir),
        "--idle-seconds",
        str(idle_seconds),
    ]
    subprocess.run(
        command,
        env=dict(environ),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        check=False,
        timeout=30,
    )


async def connect_or_start(
    paths: DaemonPaths, environ: Mapping[str, str], idle_seconds: float
) -> anyio.abc.SocketStream:
    try:
        return await connect(paths)
    except OSError:
        pass
    await anyio.to_thread.run_sync(start_daemon, paths, environ, idle_seconds)
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while True:
        try:
            return await connect(paths)
        except OSError as exc:
            if time.monotonic() > deadline:
                raise DaemonUnavailable(
                    f"the Forkyard daemon for {paths.state_dir} did not start: {exc}; "
                    f"see {paths.log}"
                ) from exc
            await anyio.sleep(CONNECT_RETRY_SECONDS)


class Stopping(Exception):
    def __init__(self, pid: int) -> None:
        super().__init__(f"the daemon (pid {pid}) is stopping")
        self.pid = pid


class DaemonLink:
    def __init__(
        self,
        paths: DaemonPaths,
        environ: Mapping[str, str],
        attach: Callable[[], AttachParams],
        *,
        idle_seconds: float = 900.0,
        on_event: Callable[[Event], None] = lambda event: None,
        on_attach: Callable[[AttachResult, bool], None] = lambda result, again: None,
    ) -> None:
        self.paths = paths
        self.environ = environ
        self._attach_params = attach
        self.idle_seconds = idle_seconds
        self.on_event = on_event
        self.on_attach = on_attach
        self.agents: dict[str, Agent] = {}
        self.attached: AttachResult | None = None
        self.peer: Peer | None = None
        self._ready = anyio.Event()
        self.connections = 0
        self.closing = False

    # --- running --------------------------------------------------------------------------

    async def open(self, task_group: TaskGroup) -> AttachResult:
        """Connect and attach (raising DaemonUnavailable, or the daemon's refusal), then
        keep the link up in `task_group` until `close`."""
        peer, result = await self._connect(task_group, again=False)
        task_group.start_soon(self._keep_connected, task_group, peer, name="the daemon link")
        return result

    async def _connect(self, task_group: TaskGroup, *, again: bool) -> tuple[Peer, AttachResult]:
        """Attach to the daemon; one that is stopping (replaced, or `daemon stop`) is
        waited out, and this front starts the next one."""
        with anyio.fail_after(STOPPING_WAIT_SECONDS):
            while True:
                try:
                    return await self._attach(task_group, again=again)
                except Stopping as stopping:
                    await process_gone(stopping.pid)

    async def _attach(self, task_group: TaskGroup, *, again: bool) -> tuple[Peer, AttachResult]:
        pid = await anyio.to_thread.run_sync(read_pid, self.paths)
        stream = await connect_or_start(self.paths, self.environ, self.idle_seconds)
        peer = Peer(stream, handle_notification=self._notification, name="the daemon")
        task_group.start_soon(self._read, peer, name="reading the daemon")
        try:
            raw = await peer.request("daemon/attach", self._attach_params().wire())
        except DaemonStopping as exc:
            await peer.aclose()
            now = await anyio.to_thread.run_sync(read_pid, self.paths)
            raise Stopping(now or pid or 0) from exc
        except BaseException:
            await peer.aclose()
            raise
        result = AttachResult.model_validate(raw)
        self._attached(peer, result, again=again)
        return peer, result

    async def _read(self, peer: Peer) -> None:
        async with anyio.create_task_group() as group:
            await peer.run(group)
            group.cancel_scope.cancel()

    async def _keep_connected(self, task_group: TaskGroup, peer: Peer) -> None:
        while True:
            await peer.closed.wait()
            self._ready = anyio.Event()
            self.peer = None
            if self.closing:
                return
            logger.warning("the connection to the daemon ended; reconnecting")
            while True:
                try:
                    peer, _result = await self._connect(task_group, again=True)
                    break
                except (ConnectionClosed, OSError, DaemonUnavailable, NotReady) as exc:
                    logger.warning("cannot reach the daemon yet: %s", exc)
                    await anyio.sleep(0.1)

    def _attached(self, peer: Peer, result: AttachResult, *, again: bool) -> None:
        before = self.agents
        self.agents = {agent.id: agent for agent in result.agents}
        self.attached = result
        self.peer = peer
        self.connections += 1
        self._ready.set()
        self.on_attach(result, again)
        if again:
            # What changed while we were away from the daemon, told as ordinary changes.
            for agent in result.agents:
                old = before.get(agent.id)
                # Compared whole: two changes may share a millisecond's timestamp.
                if old != agent:
                    self.on_event(
                        AgentChanged(agent=agent, previous_state=old.state if old else None)
                    )

    def _notification(self, method: str, params: Any) -> None:
        if method != "daemon/event":
            return
        try:
            event = EventNotification.model_validate(params).event
        except ValueError:
            logger.warning("the daemon sent an event this front cannot read")
            return
        if isinstance(event, AgentChanged):
            self.agents[event.agent.id] = event.agent
        self.on_event(event)

    async def close(self) -> None:
        self.closing = True
        if self.peer is not None:
            await self.peer.aclose()

    # --- requests -------------------------------------------------------------------------

    async def wait_ready(self, seconds: float = REQUEST_WAIT_SECONDS) -> Peer:
        with anyio.move_on_after(seconds):
            await self._ready.wait()
        if self.peer is None or not self._ready.is_set():
            raise NotReady("Forkyard is reconnecting to its daemon; try again in a moment")
        return self.peer

    async def call(self, method: str, params: Any = None) -> Any:
        peer = await self.wait_ready()
        try:
            return await peer.request(method, params or {})
        except ConnectionClosed as exc:
            raise NotReady(
                f"{method}: the Forkyard daemon went away before answering; it is being "
                "restarted, try again"
            ) from exc

    def resolve_agent(self, ref: str) -> Agent:
        """An agent of the mirror by id, or by number ("3", "#3")."""
        if agent := self.agents.get(ref):
            return agent
        number = ref.removeprefix("#").strip()
        if number.isascii() and number.isdigit() and len(number) <= MAX_NUMBER_DIGITS:
            for agent in self.agents.values():
                if agent.number == int(number):
                    return agent
        raise UnknownAgent(ref if len(ref) <= 60 else ref[:57] + "...")

    @property
    def front_id(self) -> str | None:
        return self.attached.front_id if self.attached else None


def state_dir_for(root: Path | None, environ: Mapping[str, str], options: Any = None) -> Path:
    """The state directory a front's settings name (blocking: reads config files)."""
    from forkyard.settings import load_settings

    loaded = load_settings(root, environ, options if isinstance(options, dict) else None)
    return loaded.settings.resolved_state_dir(environ).expanduser().absolute()


__all__ = ["DaemonLink", "connect", "connect_or_start", "start_daemon", "state_dir_for"]
