"""Code lenses over a done agent's hunks, end to end through a real front: each hunk that
applies gets `Apply hunk from agent #N`, `Show diff` and `Discard` on its first line, the
command arrives only on resolve, running the apply lens lands that one hunk in the
editor's buffer, and the client is asked to refresh its lenses when the agent is done."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from lsprotocol import types

from forkyard.client import ForkyardClient, default_capabilities
from tests.e2e.conftest import StartServer
from tests.e2e.editor import Editor
from tests.helpers import make_repo

pytestmark = pytest.mark.timeout(90)

APP = "".join(f"def f{i}():\n    return {i}\n\n\n" for i in range(12))


async def lenses(client: ForkyardClient, uri: str) -> list[types.CodeLens]:
    found = await client.lsp.text_document_code_lens_async(  # type: ignore[attr-defined]
        types.CodeLensParams(text_document=types.TextDocumentIdentifier(uri=uri))
    )
    return list(found or [])


async def test_a_lens_applies_one_hunk_and_lenses_follow_the_agent(
    start_server: StartServer, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "repo", {"app.py": APP})
    capabilities = default_capabilities()
    assert capabilities.workspace is not None
    capabilities.workspace.code_lens = types.CodeLensWorkspaceClientCapabilities(
        refresh_support=True
    )
    client = await start_server(repo, capabilities=capabilities)
    refreshed = anyio.Event()

    @client.lsp.feature(types.WORKSPACE_CODE_LENS_REFRESH)
    def refresh(_ls: object, _params: object) -> None:
        refreshed.set()

    editor = Editor(client)
    uri = editor.open(repo / "app.py")
    assert await lenses(client, uri) == [], "no agent, no lens"

    agent = await client.dispatch(
        "sed -i 's/return 2$/return 20/; s/return 9$/return 90/' app.py",
        backend="command",
        title="bump",
    )
    done = await client.wait_for_agent(agent["id"])
    assert done["state"] == "done", done
    with anyio.fail_after(20):
        await refreshed.wait()

    listed = await lenses(client, uri)
    lines = APP.splitlines()
    assert sorted({lens.range.start.line for lens in listed}) == [
        lines.index("    return 2"),
        lines.index("    return 9"),
    ]
    assert all(lens.command is None for lens in listed), "listing is cheap: resolved later"
    resolved = [
        await client.lsp.code_lens_resolve_async(lens)  # type: ignore[attr-defined]
        for lens in listed
    ]
    titles = [lens.command.title for lens in resolved if lens.command]
    assert titles == [
        "Apply hunk from agent #1",
        "Show diff",
        "Discard agent #1",
        "Apply hunk from agent #1",
    ], "the agent's own lenses once per file"

    first_apply = resolved[0]
    assert first_apply.command is not None
    result = await client.lsp.workspace_execute_command_async(  # type: ignore[attr-defined]
        types.ExecuteCommandParams(
            command=first_apply.command.command, arguments=first_apply.command.arguments
        )
    )
    assert result["applied"] is True
    assert "return 20" in editor.buffers[uri]
    assert "return 90" not in editor.buffers[uri], "only that hunk"
    remaining = await lenses(client, uri)
    assert sorted({lens.range.start.line for lens in remaining}) == [lines.index("    return 9")]

    with pytest.raises(Exception, match="not a Forkyard code lens"):
        await client.lsp.code_lens_resolve_async(  # type: ignore[attr-defined]
            types.CodeLens(range=listed[0].range, data={"kind": "nonsense"})
        )
