"""workspace/didChangeConfiguration: settings that change while the server runs; and the
`forkyard.trust` command, which lets a repository's `.forkyard.toml` apply in full."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from anyio.streams.memory import MemoryObjectReceiveStream
from lsprotocol import types
from pygls.uris import to_fs_path

from forkyard.errors import InvalidRequest
from forkyard.lsp.server import ForkyardServer
from forkyard.notices import settings_notices
from forkyard.settings import SettingsProblem
from forkyard_protocol.daemon import (
    Event,
    ProblemsResult,
    SettingsChanged,
    SettingsProblemInfo,
    TrustChangeResult,
)
from forkyard_protocol.messages import TrustResult

TRUST_USAGE = 'forkyard.trust takes [], [path] or [{"path"?: string, "revoke"?: boolean}]'

logger = logging.getLogger(__name__)


def _forkyard_section(settings: Any) -> Mapping[str, Any] | None:
    if isinstance(settings, Mapping):
        section = settings.get("forkyard", settings)
        return section if isinstance(section, Mapping) else None
    return None


def trust_arguments(args: tuple[Any, ...]) -> tuple[Path | None, bool]:
    """(path, revoke) from the command's arguments; a path may be a file URI."""
    raw: Any = args[0] if args else None
    revoke: Any = False
    if isinstance(raw, Mapping):
        raw, revoke = raw.get("path"), raw.get("revoke", False)
    if len(args) > 1 or not isinstance(revoke, bool) or not isinstance(raw, str | None):
        raise_usage()
    if raw is None or raw == "":
        return None, revoke
    path = to_fs_path(raw) if raw.startswith("file:") else raw
    return Path(path or raw), revoke


def raise_usage() -> Any:
    raise InvalidRequest(TRUST_USAGE)


def show_problems(ls: ForkyardServer, infos: list[SettingsProblemInfo]) -> None:
    """All of them in the log, one line to the person (`notices.py`)."""
    problems = [SettingsProblem(p.source, p.key, p.message, p.summary) for p in infos]
    for problem in problems:
        logger.warning("%s", problem)
    for notice in settings_notices(problems):
        ls.window_show_message(
            types.ShowMessageParams(type=types.MessageType.Warning, message=notice)
        )


class ConfigFeature:
    """A settings file changed under the daemon: its problems are told here too."""

    def __init__(self, server: ForkyardServer) -> None:
        self.server = server

    async def consume(self, events: MemoryObjectReceiveStream[Event]) -> None:
        async with events:
            async for event in events:
                if isinstance(event, SettingsChanged):
                    if self.server.front is not None:
                        self.server.front.capabilities = event.capabilities
                    show_problems(self.server, event.problems)


def register(
    server: ForkyardServer, on_change: Callable[[], Awaitable[None]] | None = None
) -> None:
    """`on_change`: what the front itself reads of the settings, read again."""

    @server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
    async def did_change_configuration(
        ls: ForkyardServer, params: types.DidChangeConfigurationParams
    ) -> None:
        front = ls.require_front()
        section = _forkyard_section(params.settings)
        front.client_settings = dict(section) if section is not None else None
        raw = await front.call("daemon/configure", {"clientSettings": front.client_settings})
        show_problems(ls, ProblemsResult.model_validate(raw).problems)
        if on_change is not None:
            await on_change()

    @server.forkyard_command("forkyard.trust")
    async def trust_command(ls: ForkyardServer, *args: Any) -> TrustResult:
        path, revoke = trust_arguments(args)
        raw = await ls.require_front().call(
            "daemon/trust", {"path": str(path) if path else None, "revoke": revoke}
        )
        change = TrustChangeResult.model_validate(raw)
        ls.window_show_message(
            types.ShowMessageParams(
                type=types.MessageType.Info,
                message="Forkyard no longer trusts this repository: .forkyard.toml is limited"
                if revoke
                else "Forkyard trusts this repository now: its .forkyard.toml applies",
            )
        )
        show_problems(ls, change.problems)
        return TrustResult(
            root=change.root,
            trusted=change.trusted,
            ignored_keys=change.ignored_keys,
            trust_file=change.trust_file,
        )
