"""Where the gateway runs: a thread of its own with its own event loop, one per process
(the daemon's, or an in-process server's).

Its own loop because every agent's model traffic streams through it: sixteen agents
streaming must not stretch the time the daemon takes to answer an editor. Its sockets,
one per grant, live in a fresh private directory (0700, sockets 0600) with a short path;
a sandbox gets its own agent's socket bound in, never the directory around it.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import logging
import os
import shutil
import socket
import tempfile
import threading
from concurrent.futures import Future
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import anyio
import anyio.abc
import anyio.to_thread
import httpx2
from anyio.from_thread import BlockingPortal, start_blocking_portal

from forkyard.gateway.grants import Grant, GrantTable
from forkyard.gateway.proxy import GatewayProxy

logger = logging.getLogger("forkyard.gateway")

#: Connections kept open to upstreams, for all agents together.
UPSTREAM_LIMITS = httpx2.Limits(max_connections=256, max_keepalive_connections=64)


class GatewayError(RuntimeError):
    """The gateway could not start."""


@dataclass
class Issued:
    """A live grant: its token, its socket and the task serving that socket."""

    token: str
    socket: Path
    serving: Future[None]


class Gateway:
    """The model gateway: each grant gets a token and a Unix socket of its own, so a
    token presented on another agent's socket is refused, and revoking a grant closes
    its socket. Every method blocks briefly (a bind, a hand-over to the gateway's
    loop): call them from a worker thread, except `revoke`, which never waits."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.grants = GrantTable()
        self._issued: dict[str, Issued] = {}
        self._lock = threading.Lock()
        self._counter = itertools.count(1)
        self._portal: BlockingPortal | None = None
        self._portal_context: AbstractContextManager[BlockingPortal] | None = None
        self._proxy: GatewayProxy | None = None

    def start(self) -> None:
        # Made before the loop runs: it reads the system's certificates from disk.
        client = httpx2.AsyncClient(limits=UPSTREAM_LIMITS, trust_env=True)
        self._portal_context = start_blocking_portal(name="forkyard-gateway")
        self._portal = self._portal_context.__enter__()
        self._portal.call(_quiet_cancelled_reads)
        self._proxy = GatewayProxy(self.grants, client)

    def issue(self, grant: Grant) -> tuple[str, Path]:
        """A token for `grant`, and the socket it is valid on."""
        if self._portal is None or self._proxy is None:
            raise GatewayError("the model gateway is not running")
        path = self.directory / f"agent-{next(self._counter)}.sock"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(path))
            os.chmod(path, 0o600)
            sock.listen(64)
        except OSError as error:
            sock.close()
            raise GatewayError(f"the model gateway cannot open a socket: {error}") from error
        token = self.grants.issue(grant)
        serving = self._portal.start_task_soon(self._serve, sock, path, grant)
        with self._lock:
            self._issued[token] = Issued(token, path, serving)
        return token, path

    def revoke(self, token: str) -> None:
        self.grants.revoke(token)
        with self._lock:
            issued = self._issued.pop(token, None)
        if issued is not None:
            issued.serving.cancel()

    def live_sockets(self) -> int:
        with self._lock:
            return len(self._issued)

    def close(self) -> None:
        """Revoke every grant, close the upstream connections, stop the thread."""
        with self._lock:
            tokens = list(self._issued)
        for token in tokens:
            self.revoke(token)
        if self._portal is not None and self._proxy is not None:
            with contextlib.suppress(Exception):
                self._portal.call(self._proxy.client.aclose)
        if self._portal_context is not None:
            self._portal_context.__exit__(None, None, None)
            self._portal_context = self._portal = None

    async def _serve(self, sock: socket.socket, path: Path, grant: Grant) -> None:
        proxy = self._proxy
        assert proxy is not None
        listener = await anyio.abc.SocketListener.from_socket(sock)

        async def guarded(stream: anyio.abc.SocketStream) -> None:
            try:
                await proxy.connection(stream, grant)
            except Exception:
                # One broken exchange must not take the gateway (and every agent's
                # calls) with it.
                logger.exception("gateway connection failed")

        try:
            async with listener:
                await listener.serve(guarded)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(partial(path.unlink, missing_ok=True))


async def _quiet_cancelled_reads() -> None:
    """Drop one known, harmless report from the gateway's loop: a read on a Unix socket
    cancelled (its grant revoked) just as data arrived makes anyio's reader callback set
    a result on the cancelled future (`InvalidStateError`). Nothing is lost; the report
    would only fill the daemon's log. Everything else goes to the default handler."""
    loop = asyncio.get_running_loop()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        if isinstance(context.get("exception"), asyncio.InvalidStateError):
            return
        loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


class _Shared:
    gateway: Gateway | None = None
    lock = threading.Lock()


def shared_gateway() -> Gateway:
    """This process's gateway, started on first use. Blocking: call it from a worker
    thread."""
    with _Shared.lock:
        if _Shared.gateway is None:
            directory = Path(tempfile.mkdtemp(prefix="forkyard-gateway-"))
            gateway = Gateway(directory)
            gateway.start()
            atexit.register(_close, gateway)
            _Shared.gateway = gateway
        return _Shared.gateway


def _close(gateway: Gateway) -> None:
    gateway.close()
    shutil.rmtree(gateway.directory, ignore_errors=True)
