"""Overlay worktrees through the real server: `forkyard/status` says the mode and why; a
command agent's worktree is an overlay mount where `git status` shows exactly its
changes, its diff and files are read from it, a follow-up runs in it again, a rebase
moves it onto the person's new commit, apply writes its work into the checkout, and a
discard keeps its work in a ref and takes its layer and the unused base away. Disk use
counts the agent's own layer, the shared base once."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from forkyard.client import ForkyardClient
from forkyard.workspace.overlay import MODE_ENV, bases_directory, layer_of
from tests.e2e.conftest import StartServer
from tests.e2e.test_agents import states_seen
from tests.helpers import git, make_repo

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(os.geteuid() != 0, reason="the server mounts overlays as root only"),
]

CHANGES = (
    "sed -i 's/a + b/b + a/' src/app.py && rm README.md && echo new > notes.txt && "
    "git status --porcelain --untracked-files=all"
)


@pytest.fixture
def app_repo(tmp_path: Path) -> Path:
    return make_repo(
        tmp_path / "app",
        {
            "README.md": "# app\n",
            "src/app.py": "def add(a, b):\n    return a + b\n",
            "docs/guide.md": "# guide\n",
        },
    )


async def overlay_server(
    start_server: StartServer, server_env: dict[str, str], repo: Path
) -> ForkyardClient:
    server_env[MODE_ENV] = "overlay"  # whichever mode the rest of the suite runs in
    client = await start_server(repo)
    status = await client.request("forkyard/status", {"disk": False})
    assert status["worktreeMode"] == "overlay", status
    assert "overlay" in status["worktreeModeReason"]
    return client


async def stdout_of(client: ForkyardClient, agent_id: str) -> list[str]:
    read = await client.request("forkyard/agent/read", {"agentId": agent_id})
    return [entry["text"] for entry in read["log"] if entry["kind"] == "stdout"]


async def diff_paths(client: ForkyardClient, agent_id: str) -> dict[str, str]:
    diff = await client.request("forkyard/agent/diff", {"agentId": agent_id})
    return {change["path"]: change["status"] for change in diff["files"]}


async def test_an_overlay_agent_is_reviewed_followed_up_rebased_and_applied(
    start_server: StartServer, server_env: dict[str, str], app_repo: Path
) -> None:
    client = await overlay_server(start_server, server_env, app_repo)
    agent = await client.dispatch(CHANGES, backend="command", title="overlay")
    done: dict[str, Any] = await client.wait_for_agent(agent["id"])
    assert done["state"] == "done", done
    worktree = Path(done["worktree"])
    assert os.path.ismount(worktree)
    layer = layer_of(worktree)
    assert layer is not None
    assert sorted(p.name for p in layer.upper.iterdir()) == [
        ".git",
        "README.md",
        "notes.txt",
        "src",
    ]
    assert set(await stdout_of(client, agent["id"])) == {
        " M src/app.py",
        " D README.md",
        "?? notes.txt",
    }, "git status inside the sandbox shows the agent's changes, nothing else"
    expected = {"README.md": "deleted", "notes.txt": "added", "src/app.py": "modified"}
    assert await diff_paths(client, agent["id"]) == expected
    file = await client.request(
        "forkyard/agent/file", {"agentId": agent["id"], "path": "src/app.py"}
    )
    assert file["text"] == "def add(a, b):\n    return b + a\n"

    result = await client.request(
        "forkyard/agent/message", {"agentId": agent["id"], "text": "echo two > two.txt"}
    )
    assert result["agent"]["state"] == "queued"
    await client.wait_until(lambda: states_seen(client, agent["id"]).count("done") == 2)
    assert client.agents[agent["id"]]["worktree"] == str(worktree)
    assert (worktree / "two.txt").read_text() == "two\n"

    (app_repo / "docs/guide.md").write_text("# guide, by the person\n")
    git(app_repo, "commit", "-q", "-am", "the person's commit")
    rebased = await client.request("forkyard/agent/rebase", {"agentId": agent["id"]})
    assert rebased["conflicts"] == []
    assert await diff_paths(client, agent["id"]) == {**expected, "two.txt": "added"}
    assert (worktree / "docs/guide.md").read_text() == "# guide, by the person\n"

    status = await client.request("forkyard/status", {})
    [mine] = [use for use in status["worktrees"] if use["agentId"] == agent["id"]]
    assert mine["diskBytes"] < 2**20, "an overlay agent costs its own layer"
    assert any(use["kind"] == "pool" for use in status["worktrees"]), "the shared base"

    command = [sys.executable, "-m", "forkyard.cli", "apply", str(done["number"])]
    applied = await anyio.run_process(
        [*command, "--repo", str(app_repo)], env=server_env, check=False
    )
    assert applied.returncode == 0, applied.stdout.decode() + applied.stderr.decode()
    assert (app_repo / "src/app.py").read_text() == "def add(a, b):\n    return b + a\n"
    assert (app_repo / "two.txt").read_text() == "two\n"
    assert not (app_repo / "README.md").exists()


async def test_a_discarded_overlay_agent_keeps_its_work_in_a_ref_and_frees_its_base(
    start_server: StartServer, server_env: dict[str, str], app_repo: Path, tmp_path: Path
) -> None:
    client = await overlay_server(start_server, server_env, app_repo)
    # A base of its own: the person's uncommitted change makes a snapshot nobody else has.
    (app_repo / "docs/guide.md").write_text("# uncommitted\n")
    agent = await client.dispatch("echo kept > kept.txt", backend="command")
    done = await client.wait_for_agent(agent["id"])
    assert done["state"] == "done", done
    worktree = Path(done["worktree"])
    layer = layer_of(worktree)
    assert layer is not None and layer.base.is_dir()
    await client.request("forkyard/agent/discard", {"agentId": agent["id"]})
    assert not worktree.exists() and layer_of(worktree) is None
    kept = git(app_repo, "show", f"refs/forkyard/discarded/{done['number']}:kept.txt")
    assert kept == "kept\n"
    assert not layer.base.exists(), "no agent uses that base any more"
    assert bases_directory(worktree.parent).is_dir()
