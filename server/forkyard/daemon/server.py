"""`forkyard daemon`: the one process per state directory that owns the store, the
worktrees, the pools, the orchestrators and the conversations.

It holds an exclusive lock on the state directory (a second daemon exits at once, naming
the first one's pid), listens on a Unix socket inside it (directory 0700, socket 0600,
and only peers of its own uid, checked with SO_PEERCRED), runs in its own session (a
closed terminal or a killed editor's process group leaves it alone), logs to the state
directory (rotated), and exits by itself after `daemon_idle_seconds` with no front and
nothing running or queued.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import logging.handlers
import os
import signal
import socket
import struct
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import SocketAttribute, SocketStream, TaskGroup

from forkyard.daemon.api import DaemonApi, parse
from forkyard.daemon.hub import Front, Hub
from forkyard.daemon.paths import DaemonPaths, private_directory, read_pid, socket_address
from forkyard.daemon.rpc import Peer
from forkyard.errors import InvalidRequest
from forkyard.loop_watch import LoopWatch
from forkyard.store import Store
from forkyard.supervisor import Supervisor, secret_values
from forkyard_protocol.daemon import AttachParams, Event, StopParams, StopResult

logger = logging.getLogger(__name__)

LOG_BYTES = 5 * 1024 * 1024
LOG_BACKUPS = 3
DEFAULT_IDLE_SECONDS = 900.0
#: A daemon nobody attached to yet waits at least this long before calling itself idle.
FIRST_ATTACH_SECONDS = 10.0
#: How long an exiting daemon keeps sending what it queued for its fronts.
DRAIN_SECONDS = 2.0


class AlreadyRunning(Exception):
    def __init__(self, pid: int | None, state_dir: Path) -> None:
        who = f"pid {pid}" if pid else "another process"
        super().__init__(f"a Forkyard daemon already runs for {state_dir} ({who})")
        self.pid = pid


def take_lock(paths: DaemonPaths) -> int:
    """The state directory's lock, held for the daemon's life (blocking; at start)."""
    private_directory(paths.state_dir)
    fd = os.open(paths.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise AlreadyRunning(read_pid(paths), paths.state_dir) from None
    paths.pid.write_text(f"{os.getpid()}\n")
    return fd


def configure_logging(paths: DaemonPaths, level: str) -> None:
    private_directory(paths.log.parent)
    handler = logging.handlers.RotatingFileHandler(
        paths.log, maxBytes=LOG_BYTES, backupCount=LOG_BACKUPS, encoding="utf-8"
    )
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def peer_uid(stream: SocketStream) -> int | None:
    raw: socket.socket = stream.extra(SocketAttribute.raw_socket)
    try:
        data = raw.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    _pid, uid, _gid = struct.unpack("3i", data)
    return int(uid)


class DaemonServer:
    def __init__(
        self,
        paths: DaemonPaths,
        environ: Mapping[str, str],
        idle_seconds: float = DEFAULT_IDLE_SECONDS,
    ) -> None:
        self.paths = paths
        self.environ = environ
        self.default_idle_seconds = idle_seconds
        self.loop_watch = LoopWatch()
        self.stop_now = anyio.Event()
        self.hub: Hub | None = None
        self.api: DaemonApi | None = None
        self._peers: set[Peer] = set()

    async def run(self) -> None:
        store = await Store.open(self.paths.state_dir)
        try:
            async with anyio.create_task_group() as inner:
                hub = self.hub = Hub(
                    self.paths.state_dir,
                    self.environ,
                    Supervisor(
                        inner,
                        report=lambda text: hub.tell_everyone(text),  # noqa: PLW0108 (hub is bound later)
                        secrets=lambda: secret_values(self.environ),
                    ),
                    socket_path=self.paths.socket,
                    log_file=self.paths.log,
                    store=store,
                )
                self.api = DaemonApi(hub, self.loop_watch)
                listener = await self._listen()
                inner.start_soon(self.loop_watch.run, name="event loop watch")
                inner.start_soon(listener.serve, self._connection, hub.task_group)
                inner.start_soon(self._signals, name="signals")
                logger.info("Forkyard daemon %s listening on %s", os.getpid(), self.paths.socket)
                await self._until_done(hub)
                await self._drain()
                inner.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                if self.hub is not None:
                    await self.hub.close()
                await store.close()
                for path in (self.paths.socket, self.paths.pid):
                    path.unlink(missing_ok=True)
            logger.info("Forkyard daemon %s stopped", os.getpid())

    async def _listen(self) -> Any:
        self.paths.socket.unlink(missing_ok=True)  # ours: we hold the lock
        address, fd = socket_address(self.paths.socket)
        old_umask = os.umask(0o177)
        try:
            listener = await anyio.create_unix_listener(address)
        finally:
            os.umask(old_umask)
            if fd is not None:
                os.close(fd)
        os.chmod(self.paths.socket, 0o600)
        return listener

    async def _until_done(self, hub: Hub) -> None:
        """Returns when the daemon should exit: stop --now, a finished graceful stop, or
        idle for `daemon_idle_seconds`."""
        async with anyio.create_task_group() as group:

            async def now() -> None:
                await self.stop_now.wait()
                group.cancel_scope.cancel()

            async def idle() -> None:
                while True:
                    changed = hub.changed
                    if hub.stopping:
                        if hub.working() == 0:
                            for session in list(hub.sessions.values()):
                                await session.app.orchestrator.wait_until_idle()
                            break
                    elif hub.idle():
                        wait = hub.idle_seconds(self.default_idle_seconds)
                        if not hub.sessions:
                            wait = max(wait, FIRST_ATTACH_SECONDS)
                        with anyio.move_on_after(wait) as timer:
                            await changed.wait()
                        if timer.cancelled_caught and hub.idle():
                            logger.info("idle: no front and no agent; exiting")
                            break
                        continue
                    await changed.wait()
                group.cancel_scope.cancel()

            group.start_soon(now)
            group.start_soon(idle)

    async def _drain(self) -> None:
        """What is queued for the fronts (the last agent changes) is sent before the
        connections close: a front must not learn them only after reconnecting."""
        with anyio.move_on_after(DRAIN_SECONDS):
            for peer in list(self._peers):
                peer.close()
                await peer.drained.wait()

    async def _signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                logger.info("signalled: stopping now")
                self.stop_now.set()

    async def _connection(self, stream: SocketStream) -> None:
        uid = peer_uid(stream)
        if uid != os.getuid():
            logger.warning("refused a connection from uid %s", uid)
            await stream.aclose()
            return
        hub, api = self.hub, self.api
        assert hub is not None and api is not None
        front: Front | None = None
        peer: Peer

        def deliver(event: Event) -> None:
            peer.notify("daemon/event", {"event": event.wire()})

        async def handle(method: str, raw: Any) -> Any:
            nonlocal front
            if method == "daemon/attach":
                if front is not None:
                    raise InvalidRequest("daemon/attach: this connection is attached already")
                params = parse(method, raw)
                assert isinstance(params, AttachParams)
                front, result = await hub.attach(params, deliver, disconnect=peer.close)
                return result.wire()
            if method == "daemon/status":
                return hub.status().wire()
            if method == "daemon/stop":
                stop = parse(method, raw)
                assert isinstance(stop, StopParams)
                return self.stop(now=stop.now).wire()
            return await api.call(front, method, raw)

        peer = Peer(stream, handle, name="a front")
        self._peers.add(peer)
        try:
            async with anyio.create_task_group() as group:
                await peer.run(group)
                group.cancel_scope.cancel()
        finally:
            self._peers.discard(peer)
            if front is not None:
                hub.detach(front)
            await peer.aclose()

    def stop(self, *, now: bool) -> StopResult:
        hub = self.hub
        assert hub is not None
        running = hub.working()
        hub.stopping = True
        hub.changed.set()
        if now:
            self.stop_now.set()
        return StopResult(running=running)


def run_daemon(state_dir: Path, idle_seconds: float, log_level: str = "INFO") -> int:
    """The process's entry point (`forkyard daemon`). Detaches from the caller's session
    first, so a closed terminal or a killed editor's process group leaves it alone."""
    paths = DaemonPaths(state_dir.expanduser().absolute())
    with contextlib.suppress(PermissionError):  # already a session leader
        os.setsid()
    try:
        lock = take_lock(paths)
    except AlreadyRunning as exc:
        print(f"forkyard: {exc}", file=sys.stderr)
        return 1
    configure_logging(paths, log_level)
    from forkyard.settings import current_environ

    server = DaemonServer(paths, current_environ(), idle_seconds)
    try:
        anyio.run(server.run)
    except KeyboardInterrupt:
        pass
    finally:
        os.close(lock)
    return 0


__all__ = ["AlreadyRunning", "DaemonServer", "TaskGroup", "run_daemon", "take_lock"]
