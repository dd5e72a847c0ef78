"""Reviewing an agent in the editor, end to end: diagnostics on its hunks, code actions,
and applying through workspace/applyEdit without ever overwriting the user's edits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lsprotocol import types

from forkyard.client import ForkyardClient, default_capabilities
from tests.e2e.conftest import StartServer
from tests.e2e.editor import Editor
from tests.helpers import git, make_repo

pytestmark = pytest.mark.timeout(90)

APP = "".join(f"def f{i}():\n    return {i}\n\n\n" for i in range(12))


@pytest.fixture
def review_repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo", {"app.py": APP, "README.md": "# app\n\nhello\n"})


def forkyard_diagnostics(client: ForkyardClient, uri: str) -> list[types.Diagnostic]:
    diagnostics = client.lsp.diagnostics.get(uri, [])  # type: ignore[attr-defined]
    return [d for d in diagnostics if d.source == "forkyard"]


async def run_agent(client: ForkyardClient, command: str, title: str) -> dict[str, Any]:
    agent = await client.dispatch(command, backend="command", title=title)
    done = await client.wait_for_agent(agent["id"])
    assert done["state"] == "done", done
    return done


async def code_actions(
    client: ForkyardClient, uri: str, line: int, only: list[str] | None = None
) -> list[types.CodeAction]:
    result = await client.lsp.text_document_code_action_async(  # type: ignore[attr-defined]
        types.CodeActionParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            range=types.Range(
                start=types.Position(line=line, character=0),
                end=types.Position(line=line, character=0),
            ),
            context=types.CodeActionContext(
                diagnostics=forkyard_diagnostics(client, uri), only=only
            ),
        )
    )
    return [a for a in result or [] if isinstance(a, types.CodeAction)]


async def run_action(client: ForkyardClient, action: types.CodeAction) -> Any:
    resolved = await client.lsp.code_action_resolve_async(action)  # type: ignore[attr-defined]
    assert resolved.command is not None
    return await client.lsp.workspace_execute_command_async(  # type: ignore[attr-defined]
        types.ExecuteCommandParams(
            command=resolved.command.command, arguments=resolved.command.arguments
        )
    )


async def test_diagnostics_code_actions_and_apply_of_one_hunk_then_the_file(
    start_server: StartServer, review_repo: Path
) -> None:
    client = await start_server(review_repo)
    editor = Editor(client)
    agent = await run_agent(
        client,
        "sed -i 's/return 2$/return 20/; s/return 9$/return 90/' app.py"
        " && printf 'more\\n' >> README.md",
        "bump numbers",
    )
    uri = editor.open(review_repo / "app.py")
    diagnostics = await client.wait_until(
        lambda: len(forkyard_diagnostics(client, uri)) == 2 and forkyard_diagnostics(client, uri)
    )
    lines = sorted(d.range.start.line for d in diagnostics)
    assert lines == [APP.splitlines().index("    return 2"), APP.splitlines().index("    return 9")]
    assert all(d.severity == types.DiagnosticSeverity.Information for d in diagnostics), (
        "Information by default: editors draw a Hint as almost nothing"
    )
    assert diagnostics[0].message == "agent #1: bump numbers (+1 -1)"

    actions = await code_actions(client, uri, lines[0])
    titles = [a.title for a in actions]
    assert titles == [
        "Apply hunk from agent #1",
        "Apply agent #1 to this file",
        "Apply agent #1 (all 2 files)",
        "Discard agent #1",
    ]
    assert actions[0].kind == types.CodeActionKind.QuickFix
    assert actions[0].diagnostics and actions[0].diagnostics[0].range.start.line == lines[0]
    assert [a.title for a in await code_actions(client, uri, lines[0], only=["source"])] == titles[
        1:
    ]

    result = await run_action(client, actions[0])
    assert result["applied"] is True
    assert editor.edits[-1].label == "Forkyard: agent #1"
    assert "return 20" in editor.buffers[uri]
    assert "return 90" not in editor.buffers[uri], "only that hunk"
    await client.wait_until(lambda: len(forkyard_diagnostics(client, uri)) == 1)
    assert client.agents[agent["id"]]["state"] == "done", "a partial apply leaves the agent done"

    file_action = next(
        a for a in await code_actions(client, uri, 0) if a.title.endswith("to this file")
    )
    await run_action(client, file_action)
    agent_text = Path(agent["worktree"], "app.py").read_text()
    assert editor.buffers[uri] == agent_text
    await client.wait_until(lambda: not forkyard_diagnostics(client, uri))
    assert (review_repo / "README.md").read_text() == "# app\n\nhello\n", "README was not applied"

    all_action = next(
        a
        for a in await code_actions(client, (review_repo / "README.md").as_uri(), 0)
        if "all 2" in a.title
    )
    await run_action(client, all_action)
    assert (review_repo / "README.md").read_text() == "# app\n\nhello\nmore\n"
    applied = await client.wait_for_agent(agent["id"], {"applied"})
    assert applied["state"] == "applied"


async def test_diagnostic_severity_setting_from_the_client_and_when_it_changes(
    start_server: StartServer, review_repo: Path
) -> None:
    """`diagnostic_severity` as the editor sends it: at initialize, then changed while
    the file is open, which redraws its diagnostics at the new severity."""
    client = await start_server(review_repo, initialization_options={"diagnosticSeverity": "hint"})
    editor = Editor(client)
    await run_agent(client, "sed -i 's/return 2$/return 20/' app.py", "bump")
    uri = editor.open(review_repo / "app.py")
    [hint] = await client.wait_until(lambda: forkyard_diagnostics(client, uri))
    assert hint.severity == types.DiagnosticSeverity.Hint
    client.lsp.workspace_did_change_configuration(  # type: ignore[attr-defined]
        types.DidChangeConfigurationParams(settings={"forkyard": {"diagnosticSeverity": "warning"}})
    )
    [warning] = await client.wait_until(
        lambda: [
            d
            for d in forkyard_diagnostics(client, uri)
            if d.severity == types.DiagnosticSeverity.Warning
        ]
    )
    assert warning.range == hint.range


async def test_apply_keeps_the_users_conflicting_line_and_lands_the_rest(
    start_server: StartServer, review_repo: Path
) -> None:
    client = await start_server(review_repo)
    editor = Editor(client)
    agent = await run_agent(
        client,
        "sed -i 's/return 1$/return 100/; s/return 7$/return 700/' app.py"
        " && echo new > NEW.txt && rm README.md",
        "several changes",
    )
    uri = editor.open(review_repo / "app.py")
    user_text = APP.replace("    return 7\n", "    return 7  # the user's own edit, unsaved\n")
    editor.type_text(uri, user_text)

    result = await client.request("forkyard/agent/apply", {"agentId": "1"})
    assert result["applied"] is True
    [conflict] = result["conflicts"]
    assert conflict["path"] == "app.py"
    assert conflict["reason"]
    buffer = editor.buffers[uri]
    assert "return 100" in buffer, "the other hunk landed"
    assert "return 7  # the user's own edit, unsaved" in buffer, "the user's line is kept"
    assert "return 700" not in buffer
    assert (review_repo / "NEW.txt").read_text() == "new\n"
    assert not (review_repo / "README.md").exists()
    assert client.agents[agent["id"]]["state"] == "done", "with a conflict the agent stays done"
    assert git(review_repo, "status", "--porcelain").splitlines() == [" D README.md", "?? NEW.txt"]


async def test_an_edit_the_editor_refuses_applies_nothing(
    start_server: StartServer, review_repo: Path
) -> None:
    client = await start_server(review_repo)
    editor = Editor(client)
    editor.refuse = True
    await run_agent(client, "sed -i 's/return 3$/return 30/' app.py", "three")
    result = await client.request("forkyard/agent/apply", {"agentId": "1"})
    assert result == {"applied": False, "paths": [], "conflicts": []}
    assert (review_repo / "app.py").read_text() == APP


async def test_diagnostics_follow_edits_above_the_hunk_and_vanish_when_it_no_longer_applies(
    start_server: StartServer, review_repo: Path
) -> None:
    client = await start_server(review_repo)
    editor = Editor(client)
    await run_agent(client, "sed -i 's/return 5$/return 50/' app.py", "five")
    uri = editor.open(review_repo / "app.py")
    [diagnostic] = await client.wait_until(lambda: forkyard_diagnostics(client, uri))
    line = diagnostic.range.start.line
    editor.type_text(uri, "# three new\n# lines at\n# the top\n" + APP)
    moved = await client.wait_until(
        lambda: [d for d in forkyard_diagnostics(client, uri) if d.range.start.line == line + 3]
    )
    assert len(moved) == 1
    editor.type_text(uri, APP.replace("    return 5\n", "    return 5555\n"))
    await client.wait_until(lambda: not forkyard_diagnostics(client, uri))


async def test_show_diff_writes_the_patch_and_asks_the_editor_to_open_it(
    start_server: StartServer, review_repo: Path
) -> None:
    client = await start_server(review_repo)
    await run_agent(client, "sed -i 's/return 4$/return 40/' app.py", "four")
    await client.lsp.workspace_execute_command_async(  # type: ignore[attr-defined]
        types.ExecuteCommandParams(command="forkyard.showDiff", arguments=["1"])
    )
    [shown] = client.lsp.shown_documents  # type: ignore[attr-defined]
    patch = Path(shown.uri.removeprefix("file://")).read_text()
    assert "+    return 40" in patch


@pytest.mark.parametrize("answer", ["Apply", "Discard", None])
async def test_the_done_notice_offers_apply_and_discard(
    start_server: StartServer, review_repo: Path, answer: str | None
) -> None:
    capabilities = default_capabilities()
    assert capabilities.window is not None
    capabilities.window.show_message = types.ShowMessageRequestClientCapabilities()
    capabilities.experimental = {"forkyard": {"noticeActions": True}}
    client = await start_server(review_repo, capabilities=capabilities)
    editor = Editor(client)
    asked: list[types.ShowMessageRequestParams] = []

    @client.lsp.feature(types.WINDOW_SHOW_MESSAGE_REQUEST)
    def choose(params: types.ShowMessageRequestParams) -> types.MessageActionItem | None:
        asked.append(params)
        client.poke()
        return types.MessageActionItem(title=answer) if answer else None

    agent = await run_agent(client, "sed -i 's/return 6$/return 60/' app.py", "six")
    await client.wait_until(lambda: asked)
    assert [a.title for a in asked[0].actions or []] == ["Show diff", "Apply", "Discard"]
    assert "agent #1 (six) is done" in asked[0].message
    if answer == "Apply":
        await client.wait_for_agent(agent["id"], {"applied"})
        assert "return 60" in (review_repo / "app.py").read_text()
        assert editor.edits
    elif answer == "Discard":
        await client.wait_for_agent(agent["id"], {"discarded"})
        assert "return 60" not in (review_repo / "app.py").read_text()
    else:
        listed = await client.request("forkyard/agent/list", {})
        assert listed["agents"][0]["state"] == "done", "no answer does nothing"
    assert not any("is done" in m.message for m in client.lsp.messages), "no duplicate notice"  # type: ignore[attr-defined]


async def test_a_client_that_does_not_opt_in_gets_a_plain_one_line_done_notice(
    start_server: StartServer, review_repo: Path
) -> None:
    """Stock Neovim shows a message request as a blocking inputlist: a client that has
    `window.showMessage` but does not opt into action notices is told with a message."""
    capabilities = default_capabilities()
    assert capabilities.window is not None
    capabilities.window.show_message = types.ShowMessageRequestClientCapabilities()
    client = await start_server(review_repo, capabilities=capabilities)
    asked: list[types.ShowMessageRequestParams] = []

    @client.lsp.feature(types.WINDOW_SHOW_MESSAGE_REQUEST)
    def choose(params: types.ShowMessageRequestParams) -> None:
        asked.append(params)

    title = "a title long enough to make the notice wider than a terminal's line " * 2
    agent = await run_agent(client, "sed -i 's/return 6$/return 60/' app.py", title)
    await client.wait_for_agent(agent["id"], {"done"})
    messages = client.lsp.messages  # type: ignore[attr-defined]
    [done] = await client.wait_until(lambda: [m for m in messages if "done" in m.message])
    assert done.message.startswith("Forkyard agent #1 (a title long")
    assert done.message.endswith("done: 1 file(s) changed, +1 -1")
    assert len(done.message) <= 64 and "\n" not in done.message
    assert not asked, "no message request for a done agent"
