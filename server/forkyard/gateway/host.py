"""Where the gateway runs: a thread of its own with its own event loop, one per process
(the daemon's, or an in-process server's).

Its own loop because every agent's model traffic streams through it: sixteen agents
streaming must not stretch the time the daemon takes to answer an editor. Its socket
lives in a fresh private directory (0700, socket 0600) with a short path; sandboxes get
that one socket bound in, never the directory around it.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path

import anyio
import anyio.abc
import httpx2

from forkyard.gateway.grants import Grant, GrantTable
from forkyard.gateway.proxy import GatewayProxy

logger = logging.getLogger("forkyard.gateway")

START_TIMEOUT_SECONDS = 10.0
#: Connections kept open to upstreams, for all agents together.
UPSTREAM_LIMITS = httpx2.Limits(max_connections=256, max_keepalive_connections=64)


class GatewayError(RuntimeError):
    """The gateway could not start."""


class Gateway:
    """The model gateway: grants in, a Unix socket out. `start` and `close` block (call
    them from a worker thread); `issue` and `revoke` do not."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.socket = directory / "gateway.sock"
        self.grants = GrantTable()
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._stop: Callable[[], object] | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="forkyard-gateway", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_SECONDS):
            raise GatewayError(f"the model gateway did not start in {START_TIMEOUT_SECONDS:g} s")
        if self._failure is not None:
            raise GatewayError(f"the model gateway cannot start: {self._failure}")

    def issue(self, grant: Grant) -> str:
        return self.grants.issue(grant)

    def revoke(self, token: str) -> None:
        self.grants.revoke(token)

    def close(self) -> None:
        if self._stop is not None:
            self._stop()
        if self._thread is not None:
            self._thread.join(START_TIMEOUT_SECONDS)

    def _run(self) -> None:
        try:
            # Made before the loop runs: it reads the system's certificates from disk.
            client = httpx2.AsyncClient(limits=UPSTREAM_LIMITS, trust_env=True)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(str(self.socket))
            os.chmod(self.socket, 0o600)
            sock.listen(256)
            anyio.run(self._main, client, sock)
        except BaseException as error:
            self._failure = error
            self._ready.set()

    async def _main(self, client: httpx2.AsyncClient, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        async with client:
            listener = await anyio.abc.SocketListener.from_socket(sock)
            proxy = GatewayProxy(self.grants, client)

            async def guarded(stream: anyio.abc.SocketStream) -> None:
                try:
                    await proxy.connection(stream)
                except Exception:
                    # One broken exchange must not take the gateway (and every agent's
                    # calls) with it.
                    logger.exception("gateway connection failed")

            with anyio.CancelScope() as scope:
                self._stop = partial(loop.call_soon_threadsafe, scope.cancel)
                self._ready.set()
                async with listener:
                    await listener.serve(guarded)


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
