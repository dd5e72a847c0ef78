"""initialize / initialized / shutdown: attaching this editor to the daemon that owns its
repository (starting the daemon when none answers), and what the person is told once:
settings problems, a missing sandbox, what finished while they were away."""

from __future__ import annotations

import logging
import time
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from lsprotocol import types
from pygls.uris import to_fs_path

import forkyard
from forkyard.lsp.config import show_problems
from forkyard.lsp.server import ForkyardServer
from forkyard.lsp.session import FrontSession
from forkyard.notices import MAX_DETAIL_CHARS, MAX_NOTICE_CHARS, cut, short_notice
from forkyard.settings import current_environ, load_settings
from forkyard.workspace.git import Repository
from forkyard_protocol.daemon import AttachResult
from forkyard_protocol.messages import ServerStatsParams, ServerStatsResult

logger = logging.getLogger(__name__)


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


def away_notice(lines: list[str]) -> str | None:
    """'while you were away: #3 done, #4 failed', cut to one notice line."""
    if not lines:
        return None
    return cut("Forkyard, while you were away: " + ", ".join(lines), MAX_NOTICE_CHARS)


def _front_settings(root: Path, options: Any) -> tuple[Path, float, str]:
    """The state directory (which daemon), its idle time and the hunk diagnostics'
    severity (blocking: config files)."""
    environ = current_environ()
    loaded = load_settings(root, environ, options if isinstance(options, dict) else None)
    state_dir = loaded.settings.resolved_state_dir(environ).expanduser().absolute()
    return state_dir, loaded.settings.daemon_idle_seconds, loaded.settings.diagnostic_severity


def register(server: ForkyardServer, consumers: list[Any]) -> None:
    """`consumers`: the features that read the daemon's events, each as one task."""

    @server.feature(types.INITIALIZE)
    async def initialize(ls: ForkyardServer, params: types.InitializeParams) -> None:
        options = params.initialization_options
        if options is not None and not isinstance(options, dict):
            options = None
        if ls.task_group is None:
            raise RuntimeError("the supervisor task group is not running")
        repository = await Repository.discover(workspace_root(params))
        state_dir, idle, severity = await anyio.to_thread.run_sync(
            _front_settings, repository.root, options
        )
        client = params.client_info.name if params.client_info else "an editor"
        front = FrontSession(repository.root, state_dir, current_environ(), options, client, idle)
        front.diagnostic_severity = severity
        for consumer in consumers:
            receive, _send = front.bus.open_subscription()
            ls.spawn(partial(consumer.consume, receive), type(consumer).__name__)
        front.on_reattach.append(lambda result: _tell_reattached(ls, result))
        result = await front.open(ls.task_group)
        ls.front = front
        ls.experimental_capabilities = {"forkyard": result.capabilities.wire()}

    @server.feature(types.INITIALIZED)
    async def initialized(ls: ForkyardServer, _params: Any) -> None:
        front = ls.require_front()
        result = front.attached
        if result is None:
            return
        show_problems(ls, result.problems)
        if result.sandbox_problem is not None:
            verdict = "run UNSANDBOXED" if result.allow_unsandboxed else "are refused"
            logger.warning("cannot sandbox agent commands: %s", result.sandbox_problem)
            ls.window_show_message(
                types.ShowMessageParams(
                    type=types.MessageType.Warning,
                    message=cut(
                        f"Forkyard: no sandbox, agent commands {verdict}: {result.sandbox_problem}",
                        MAX_DETAIL_CHARS,
                    ),
                )
            )
        for warning in result.warnings:
            ls.window_show_message(
                types.ShowMessageParams(
                    type=types.MessageType.Warning, message=short_notice(warning)
                )
            )
        if (away := away_notice(result.away)) is not None:
            ls.window_show_message(
                types.ShowMessageParams(type=types.MessageType.Info, message=away)
            )
        _ask_waiting_approvals(ls, result)
        if (mismatch := front.version_mismatch()) is not None:
            ls.window_show_message(
                types.ShowMessageParams(type=types.MessageType.Warning, message=mismatch)
            )
            await front.replace_daemon_when_idle()

    @server.request("forkyard/server/stats")
    async def stats(ls: ForkyardServer, params: ServerStatsParams) -> ServerStatsResult:
        """The front's figures and its daemon's: the largest stall of either loop is the
        longest a request could have waited."""
        watch = ls.loop_watch
        front_stall = watch.max_stall * 1000
        if params.reset:
            watch.max_stall = 0.0
        if ls.front is None:
            return ServerStatsResult(
                version=forkyard.__version__,
                models={},
                uptime_seconds=time.monotonic() - watch.started,
                max_loop_stall_ms=front_stall,
                agents_running=0,
                agents_queued=0,
            )
        raw = await ls.front.call("daemon/stats", params.wire())
        daemon = ServerStatsResult.model_validate(raw)
        return daemon.model_copy(
            update={
                "uptime_seconds": time.monotonic() - watch.started,
                "max_loop_stall_ms": max(front_stall, daemon.max_loop_stall_ms),
            }
        )

    @server.feature(types.SHUTDOWN)
    async def shutdown(ls: ForkyardServer, _params: Any) -> None:
        """Agents belong to the daemon and keep running: nothing to stop here."""


def _ask_waiting_approvals(ls: ForkyardServer, result: AttachResult) -> None:
    """Approvals already waiting when this editor attached are asked here too."""
    if ls.front is not None:
        for approval in result.approvals:
            ls.front.bus.publish(approval)


def _tell_reattached(ls: ForkyardServer, result: AttachResult) -> None:
    """The daemon was restarted under us (it died): said once, in one line."""
    logger.warning("attached again to the daemon (pid %s)", result.daemon_pid)
    _ask_waiting_approvals(ls, result)
