"""Issue 12, attack 5, through the real server: a command agent in the real sandbox turns
the checkout's links into folders and files, and the user applies it. The apply ends
with conflicts naming the links, nothing appears outside the checkout, the rest of the
agent's work lands, and the server keeps answering; both with an editor that creates
files itself (and follows links, as editors do) and with one that leaves that to the
server."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from lsprotocol import types

from forkyard.client import ForkyardClient, default_capabilities
from tests.e2e.conftest import StartServer
from tests.e2e.editor import Editor
from tests.e2e.test_review import code_actions, forkyard_diagnostics, run_action
from tests.helpers import git

pytestmark = pytest.mark.timeout(90)

LINK = "is a symbolic link in your checkout; Forkyard does not write through links"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    folder = tmp_path / "outside"
    folder.mkdir()
    return folder


@pytest.fixture
def repo(tmp_path: Path, outside: Path) -> Path:
    """A checkout with a committed link to a folder outside it and a dangling one."""
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    (root / "app.txt").write_text("one\n")
    (root / "sub").mkdir()
    (root / "sub" / "keep.txt").write_text("keep\n")
    (root / "link").symlink_to("../outside")
    (root / "conf.txt").symlink_to("../outside/conf.txt")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "initial")
    return root


def capabilities(resource_operations: bool) -> types.ClientCapabilities:
    chosen = default_capabilities()
    assert chosen.workspace is not None
    if not resource_operations:
        chosen.workspace.workspace_edit = types.WorkspaceEditClientCapabilities(
            document_changes=True, resource_operations=[]
        )
    return chosen


async def run_agent(client: ForkyardClient, command: str) -> dict[str, Any]:
    agent = await client.dispatch(command, backend="command", title="links")
    done = await client.wait_for_agent(agent["id"])
    assert done["state"] == "done", done
    return done


def outside_files(outside: Path) -> list[str]:
    return sorted(str(p.relative_to(outside)) for p in outside.rglob("*"))


async def assert_alive(client: ForkyardClient, agent_id: str) -> None:
    listed = await client.request("forkyard/agent/list", {})
    [agent] = [a for a in listed["agents"] if a["id"] == agent_id]
    assert agent["state"] == "done", "with conflicts the agent stays done"


@pytest.mark.parametrize("editor_creates", [True, False], ids=["editor-writes", "server-writes"])
async def test_links_turned_into_a_folder_and_a_file_end_as_conflicts(
    start_server: StartServer, repo: Path, outside: Path, editor_creates: bool
) -> None:
    client = await start_server(repo, capabilities=capabilities(editor_creates))
    Editor(client)
    agent = await run_agent(
        client,
        "rm link && mkdir link && echo pwned > link/pwned.txt"
        " && rm conf.txt && echo 'owned = true' > conf.txt"
        " && echo two >> app.txt && echo new > sub/new.txt",
    )
    result = await client.request("forkyard/agent/apply", {"agentId": agent["id"]})
    assert result["applied"] is True
    reasons = {c["path"]: c["reason"] for c in result["conflicts"]}
    assert reasons == {
        "link": f"link: {LINK}",
        "link/pwned.txt": f"link: {LINK}",
        "conf.txt": f"conf.txt: {LINK}",
    }
    assert outside_files(outside) == [], "nothing under outside/"
    assert os.readlink(repo / "link") == "../outside"
    assert os.readlink(repo / "conf.txt") == "../outside/conf.txt"
    assert (repo / "app.txt").read_text() == "one\ntwo\n", "the rest landed"
    assert (repo / "sub" / "new.txt").read_text() == "new\n"
    assert sorted(result["paths"]) == ["app.txt", "sub/new.txt"]
    await assert_alive(client, agent["id"])


class SwappingEditor(Editor):
    """An editor that, while the user confirms the edit, has the checkout's `sub` folder
    replaced by a link out of it: the moment between the server's plan and its write."""

    def __init__(self, client: ForkyardClient, repo: Path) -> None:
        super().__init__(client)
        self.repo = repo

    def _apply_edit(self, params: types.ApplyWorkspaceEditParams) -> types.ApplyWorkspaceEditResult:
        os.rename(self.repo / "sub", self.repo / "sub-moved")
        (self.repo / "sub").symlink_to("../outside")
        return super()._apply_edit(params)


async def test_a_folder_swapped_for_a_link_before_the_server_writes_is_not_followed(
    start_server: StartServer, repo: Path, outside: Path
) -> None:
    client = await start_server(repo, capabilities=capabilities(resource_operations=False))
    SwappingEditor(client, repo)
    agent = await run_agent(client, "echo new > sub/new.txt && echo two >> app.txt")
    result = await client.request("forkyard/agent/apply", {"agentId": agent["id"]})
    assert result["applied"] is True
    assert result["conflicts"] == [{"path": "sub/new.txt", "reason": f"sub: {LINK}"}]
    assert result["paths"] == ["app.txt"]
    assert outside_files(outside) == []
    assert (repo / "app.txt").read_text() == "one\ntwo\n"
    await client.wait_until(
        lambda: any("sub: is a symbolic link" in m.message for m in client.lsp.messages)  # type: ignore[attr-defined]
    )
    await assert_alive(client, agent["id"])


async def test_the_code_action_apply_refuses_the_links_too(
    start_server: StartServer, repo: Path, outside: Path
) -> None:
    client = await start_server(repo)
    editor = Editor(client)
    await run_agent(
        client, "rm link && mkdir link && echo pwned > link/pwned.txt && echo two >> app.txt"
    )
    uri = editor.open(repo / "app.txt")
    await client.wait_until(lambda: forkyard_diagnostics(client, uri))
    [apply_all] = [a for a in await code_actions(client, uri, 1) if "(all 3 files)" in a.title]
    result = await run_action(client, apply_all)
    assert {c["path"] for c in result["conflicts"]} == {"link", "link/pwned.txt"}
    assert editor.buffers[uri] == "one\ntwo\n"
    assert outside_files(outside) == []
    created = [
        change.uri
        for params in editor.edits
        for change in params.edit.document_changes or []
        if isinstance(change, types.CreateFile)
    ]
    assert created == [], "the editor is never asked to create a file through the link"


async def test_the_terminal_apply_refuses_the_links_too(
    start_server: StartServer, repo: Path, outside: Path, server_env: dict[str, str]
) -> None:
    """`forkyard apply N` writes the merge onto disk itself: the same links are refused."""
    client = await start_server(repo)
    agent = await run_agent(
        client,
        "rm link && mkdir link && echo pwned > link/pwned.txt"
        " && rm conf.txt && echo 'owned = true' > conf.txt && echo two >> app.txt",
    )
    command = [sys.executable, "-m", "forkyard.cli", "apply", str(agent["number"])]
    done = await anyio.run_process([*command, "--repo", str(repo)], env=server_env, check=False)
    out = done.stdout.decode()
    assert done.returncode == 1, out + done.stderr.decode()
    assert out.startswith("Applied agent #1 to 1 file(s).")
    assert f"`conf.txt`: conf.txt: {LINK}" in out and f"`link`: link: {LINK}" in out
    assert outside_files(outside) == [], "nothing under outside/"
    assert os.readlink(repo / "conf.txt") == "../outside/conf.txt"
    assert (repo / "app.txt").read_text() == "one\ntwo\n", "the rest landed"
    await assert_alive(client, agent["id"])
