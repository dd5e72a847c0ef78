"""A small Forkyard client over a pygls language client, speaking to `forkyard serve` as a
real subprocess over stdio. The demo drives the server with it; the end-to-end tests do
too, on pytest-lsp's recording client."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import anyio
from lsprotocol import types
from pygls.lsp.client import LanguageClient

import forkyard

TERMINAL_AGENT_STATES = {"done", "failed", "cancelled", "interrupted", "applied", "discarded"}


def default_capabilities() -> types.ClientCapabilities:
    return types.ClientCapabilities(
        window=types.WindowClientCapabilities(work_done_progress=True),
        text_document=types.TextDocumentClientCapabilities(
            code_action=types.CodeActionClientCapabilities(
                resolve_support=types.ClientCodeActionResolveOptions(properties=["edit"])
            ),
        ),
        workspace=types.WorkspaceClientCapabilities(
            apply_edit=True,
            workspace_edit=types.WorkspaceEditClientCapabilities(
                document_changes=True,
                resource_operations=[
                    types.ResourceOperationKind.Create,
                    types.ResourceOperationKind.Delete,
                    types.ResourceOperationKind.Rename,
                ],
            ),
        ),
    )


def plain(value: Any) -> Any:
    """JSON values as dicts and lists: pygls' default converter gives a client
    namedtuples for payloads of methods it does not know."""
    if hasattr(value, "_asdict"):
        return {key: plain(item) for key, item in value._asdict().items()}
    if isinstance(value, Mapping):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    return value


class ForkyardClient:
    def __init__(self, lsp: LanguageClient) -> None:
        self.lsp = lsp
        self.agents: dict[str, dict[str, Any]] = {}
        self.agent_updates: list[dict[str, Any]] = []
        self.notifications: list[tuple[str, dict[str, Any]]] = []
        #: When each of `notifications` arrived (time.perf_counter), for benchmarks.
        self.arrivals: list[float] = []
        self.initialize_result: types.InitializeResult | None = None
        self._changed = asyncio.Event()
        for method in (
            "forkyard/agent/changed",
            "forkyard/chat/delta",
            "forkyard/chat/message",
            "forkyard/chat/turn",
            "forkyard/notice",
        ):
            lsp.feature(method)(self._recorder(method))
        # Standard notifications a test client may already record: wake waiters after
        # its own handler ran, so `wait_until` can wait on progress, messages and
        # diagnostics as well.
        features = lsp.protocol.fm.features
        for method in (
            types.PROGRESS,
            types.WINDOW_SHOW_MESSAGE,
            types.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS,
        ):
            if (existing := features.get(method)) is not None:
                features[method] = self._then_poke(existing)
            else:
                lsp.feature(method)(self._recorder(method))
        if types.WINDOW_WORK_DONE_PROGRESS_CREATE not in features:

            @lsp.feature(types.WINDOW_WORK_DONE_PROGRESS_CREATE)
            def accept_progress(_params: Any) -> None:
                return None

    def _recorder(self, method: str) -> Callable[[Any], None]:
        def record(params: Any) -> None:
            data = plain(params)
            self.notifications.append((method, data))
            self.arrivals.append(time.perf_counter())
            if method == "forkyard/agent/changed":
                agent = data["agent"]
                self.agents[agent["id"]] = agent
                self.agent_updates.append(agent)
            self.poke()

        return record

    def _then_poke(self, handler: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def wrapped(params: Any) -> Any:
            try:
                return handler(params)
            finally:
                self.poke()

        return wrapped

    def poke(self) -> None:
        """Wake everyone waiting in `wait_until`; call after anything they may check."""
        self._changed.set()
        self._changed = asyncio.Event()

    @classmethod
    async def start(
        cls,
        root: Path,
        env: Mapping[str, str],
        *,
        lsp: LanguageClient | None = None,
        capabilities: types.ClientCapabilities | None = None,
        initialization_options: Any = None,
        server_command: list[str] | None = None,
    ) -> ForkyardClient:
        lsp = lsp or LanguageClient("forkyard-client", forkyard.__version__)
        client = cls(lsp)
        command = server_command or [sys.executable, "-m", "forkyard.cli", "serve"]
        await lsp.start_io(*command, env=dict(env))
        params = types.InitializeParams(
            process_id=None,
            root_uri=root.as_uri(),
            workspace_folders=[types.WorkspaceFolder(uri=root.as_uri(), name=root.name)],
            capabilities=capabilities or default_capabilities(),
            initialization_options=initialization_options,
        )
        if hasattr(lsp, "initialize_session"):
            # pytest-lsp's client checks every later message against the capabilities
            # it records here; it also sends `initialized`.
            client.initialize_result = await lsp.initialize_session(params)
        else:
            client.initialize_result = await lsp.initialize_async(params)
            lsp.initialized(types.InitializedParams())
        return client

    @property
    def server_process(self) -> asyncio.subprocess.Process | None:
        return self.lsp._server

    async def request(self, method: str, params: Any = None) -> Any:
        return plain(await self.lsp.protocol.send_request_async(method, params))

    async def wait_until(self, predicate: Callable[[], Any], timeout: float = 30.0) -> Any:
        """Wait, without polling, until `predicate()` is truthy after some notification."""
        with anyio.fail_after(timeout):
            while not (result := predicate()):
                await self._changed.wait()
        return result

    async def wait_for_agent(
        self, agent_id: str, states: set[str] | None = None, timeout: float = 60.0
    ) -> dict[str, Any]:
        wanted = states or TERMINAL_AGENT_STATES

        def reached() -> dict[str, Any] | None:
            agent = self.agents.get(agent_id)
            return agent if agent and agent["state"] in wanted else None

        result: dict[str, Any] = await self.wait_until(reached, timeout)
        return result

    async def dispatch(self, task: str, **params: Any) -> dict[str, Any]:
        result = await self.request("forkyard/agent/dispatch", {"task": task, **params})
        agent: dict[str, Any] = result["agent"]
        self.agents.setdefault(agent["id"], agent)
        return agent

    async def stop(self) -> None:
        """shutdown + exit, then wait for the process; kill it if it will not go."""
        process = self.server_process
        try:
            if process is not None and process.returncode is None:
                with anyio.move_on_after(10):
                    await self.lsp.shutdown_async(None)
                    self.lsp.exit(None)
                    await process.wait()
        finally:
            if process is not None and process.returncode is None:
                process.kill()
                await process.wait()
            await self.lsp.stop()
