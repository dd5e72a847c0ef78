"""initialize / initialized / shutdown: opening the repository's Forkyard session."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from lsprotocol import types
from pygls.uris import to_fs_path

import forkyard
from forkyard.app import ForkyardApp
from forkyard.lsp.config import show_problems
from forkyard.lsp.notices import MAX_DETAIL_CHARS, cut
from forkyard.lsp.server import ForkyardServer
from forkyard.settings import current_environ
from forkyard.tools.sandbox import probe_sandbox
from forkyard_protocol.messages import ModelSummary, ServerStatsParams, ServerStatsResult
from forkyard_protocol.models import BackendInfo, ForkyardCapabilities

logger = logging.getLogger(__name__)

COMMANDS = [
    "forkyard.dispatch",
    "forkyard.apply",
    "forkyard.discard",
    "forkyard.cancel",
    "forkyard.showDiff",
]


def workspace_root(params: types.InitializeParams) -> Path:
    """The first workspace folder, else rootUri, else rootPath, else the cwd."""
    uri = None
    if params.workspace_folders:
        uri = params.workspace_folders[0].uri
    elif params.root_uri:
        uri = params.root_uri
    if uri and (path := to_fs_path(uri)):
        return Path(path)
    if params.root_path:
        return Path(params.root_path)
    return Path.cwd()


def register(server: ForkyardServer) -> None:
    @server.feature(types.INITIALIZE)
    async def initialize(ls: ForkyardServer, params: types.InitializeParams) -> None:
        options = params.initialization_options
        if options is not None and not isinstance(options, dict):
            options = None
        app = await ForkyardApp.open(workspace_root(params), current_environ(), options)
        if ls.task_group is None:
            raise RuntimeError("the supervisor task group is not running")
        for ready in ls.on_app_ready:
            ready(app)
        ls.app = app
        await app.start(ls.task_group)
        availability = await app.backend_availability()
        backends = [name for name, status in availability.items() if status.available]
        ls.experimental_capabilities = {
            "forkyard": ForkyardCapabilities(
                roles=app.settings.role_names(),
                backends=backends,
                backend_details=[
                    BackendInfo(name=name, available=status.available, reason=status.reason)
                    for name, status in availability.items()
                ],
                trusted=app.loaded.trusted,
            ).wire()
        }

    @server.feature(types.INITIALIZED)
    async def initialized(ls: ForkyardServer, _params: Any) -> None:
        app = ls.require_app()
        show_problems(ls, app.loaded.problems)
        sandbox = await probe_sandbox()
        if not sandbox.available:
            # Said once per session: commands are refused (or, if the user allowed it,
            # run unsandboxed) until bubblewrap can run.
            allowed = app.settings.allow_unsandboxed_commands
            logger.warning("cannot sandbox agent commands: %s", sandbox.reason)
            verdict = "run UNSANDBOXED" if allowed else "are refused"
            ls.window_show_message(
                types.ShowMessageParams(
                    type=types.MessageType.Warning,
                    message=cut(
                        f"Forkyard: no sandbox, agent commands {verdict}: {sandbox.reason}",
                        MAX_DETAIL_CHARS,
                    ),
                )
            )

    @server.request("forkyard/server/stats")
    async def stats(ls: ForkyardServer, params: ServerStatsParams) -> ServerStatsResult:
        watch = ls.loop_watch
        agents = ls.app.orchestrator.agents() if ls.app else []
        models = ls.app.settings.models if ls.app else {}
        result = ServerStatsResult(
            version=forkyard.__version__,
            models={
                name: ModelSummary(
                    provider=config.provider,
                    base_url=config.base_url,
                    model=config.model,
                    api_key_env=config.api_key_env,
                )
                for name, config in models.items()
            },
            uptime_seconds=time.monotonic() - watch.started,
            max_loop_stall_ms=watch.max_stall * 1000,
            agents_running=sum(a.state in ("starting", "running") for a in agents),
            agents_queued=sum(a.state == "queued" for a in agents),
        )
        if params.reset:
            watch.max_stall = 0.0
        return result

    @server.feature(types.SHUTDOWN)
    async def shutdown(ls: ForkyardServer, _params: Any) -> None:
        # Agents still running become `interrupted` when the supervisor is cancelled at
        # exit; here we only make sure logs are on disk before the client may kill us.
        if ls.app is not None:
            await ls.app.orchestrator.stop()
