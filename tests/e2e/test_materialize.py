"""Materialize through the real daemon and the terminal front: `forkyard agent N
--materialize` turns a done agent's overlay worktree into an ordinary full worktree at
the same path, with its diff unchanged and `git status` clean in it, its work committed
to its branch; once the daemon stops, its folder keeps its files while an overlay
agent's left as it was is an empty mount point. A full worktree answers at once; an
agent still queued or running is refused."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

from forkyard.workspace.overlay import MODE_ENV, layer_of
from tests.e2e.conftest import stop_daemon
from tests.helpers import git, make_repo

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(os.geteuid() != 0, reason="the server mounts overlays as root only"),
]

CHANGES = (
    "sed -i 's/a + b/b + a/' src/app.py && rm README.md && echo new > notes.txt && "
    "mv docs/guide.md docs/manual.md && ln -s src/app.py app-link && "
    "printf '\\000\\001binary' > logo.bin"
)


class Terminal:
    """`forkyard ...` commands of one repository, as a person types them."""

    def __init__(self, repo: Path, env: dict[str, str]) -> None:
        self.repo = repo
        self.env = env

    async def run(self, *args: str, ok: bool = True) -> tuple[int, str, str]:
        command = [sys.executable, "-m", "forkyard.cli", *args, "--repo", str(self.repo)]
        done = await anyio.run_process(command, env=self.env, check=False)
        out, err = done.stdout.decode(), done.stderr.decode()
        if ok:
            assert done.returncode == 0, out + err
        return done.returncode, out, err

    async def agents(self) -> dict[int, dict[str, Any]]:
        _, out, _ = await self.run("agents", "--json")
        return {agent["number"]: agent for agent in json.loads(out)}

    async def done(self, task: str) -> dict[str, Any]:
        """Dispatch a command agent and follow its log to its end."""
        _, out, _ = await self.run("dispatch", task, "--backend", "command")
        number = int(out.split()[0].removeprefix("#"))
        await self.run("log", str(number), "--follow")
        agent = (await self.agents())[number]
        assert agent["state"] == "done", agent
        return agent


@pytest.fixture
def terminal(tmp_path: Path, server_env: dict[str, str]) -> Terminal:
    repo = make_repo(
        tmp_path / "app",
        {
            "README.md": "# app\n",
            "src/app.py": "def add(a, b):\n    return a + b\n",
            "docs/guide.md": "# guide\n",
        },
    )
    server_env[MODE_ENV] = "overlay"  # whichever mode the rest of the suite runs in
    return Terminal(repo, server_env)


def plain_git_status(worktree: Path) -> str:
    """`git status` as the person's own git sees the folder (no server involved)."""
    return git(worktree, "status", "--porcelain", "--untracked-files=all")


async def test_a_materialized_overlay_worktree_is_a_full_one_that_outlives_the_daemon(
    terminal: Terminal, server_env: dict[str, str]
) -> None:
    agent = await terminal.done(CHANGES)
    kept_overlay = await terminal.done("echo only-in-the-overlay > left.txt")
    worktree, other = Path(agent["worktree"]), Path(kept_overlay["worktree"])
    assert os.path.ismount(worktree) and layer_of(worktree) is not None
    _, patch_before, _ = await terminal.run("diff", str(agent["number"]))
    assert "notes.txt" in patch_before and "docs/manual.md" in patch_before

    _, out, _ = await terminal.run("agent", str(agent["number"]), "--materialize")
    assert f"full worktree at {worktree}" in out
    assert not os.path.ismount(worktree), "no overlay mount any more"
    assert layer_of(worktree) is None, "its layer is gone"
    assert (await terminal.agents())[agent["number"]]["worktree"] == str(worktree)
    assert plain_git_status(worktree) == "", "everything is committed and checked out"
    branch = git(worktree, "branch", "--show-current").strip()
    assert branch == agent["branch"]
    assert git(terminal.repo, "show", f"{branch}:notes.txt") == "new\n"
    _, patch_after, _ = await terminal.run("diff", str(agent["number"]))
    assert patch_after == patch_before, "the same diff as before"
    assert (worktree / "src/app.py").read_text() == "def add(a, b):\n    return b + a\n"
    assert os.readlink(worktree / "app-link") == "src/app.py"
    assert (worktree / "logo.bin").read_bytes() == b"\x00\x01binary"
    assert not (worktree / "README.md").exists()

    _, again, _ = await terminal.run("agent", str(agent["number"]), "--materialize")
    assert f"full worktree at {worktree}" in again, "a full worktree answers at once"

    await anyio.to_thread.run_sync(stop_daemon, Path(server_env["FORKYARD_STATE_DIR"]))
    assert not any(other.iterdir()), "an overlay worktree is empty while no daemon runs"
    assert (worktree / "notes.txt").read_text() == "new\n", "the materialized one is not"
    assert plain_git_status(worktree) == ""


async def test_an_agent_still_queued_or_running_is_not_materialized(terminal: Terminal) -> None:
    _, out, _ = await terminal.run("dispatch", "sleep 600", "--backend", "command")
    number = out.split()[0].removeprefix("#")
    code, _, err = await terminal.run("agent", number, "--materialize", ok=False)
    assert code == 2, err
    assert "before materializing its worktree" in err
    assert any(state in err for state in ("queued", "starting", "running")), err
