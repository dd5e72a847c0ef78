"""workspace/didChangeConfiguration: settings that change while the server runs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lsprotocol import types

from forkyard.lsp.server import ForkyardServer


def _forkyard_section(settings: Any) -> Mapping[str, Any] | None:
    if isinstance(settings, Mapping):
        section = settings.get("forkyard", settings)
        return section if isinstance(section, Mapping) else None
    return None


def register(server: ForkyardServer) -> None:
    @server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
    async def did_change_configuration(
        ls: ForkyardServer, params: types.DidChangeConfigurationParams
    ) -> None:
        app = ls.require_app()
        section = _forkyard_section(params.settings)
        problems = await app.reload_settings(section)
        for problem in problems:
            ls.window_show_message(
                types.ShowMessageParams(type=types.MessageType.Warning, message=str(problem))
            )
