"""git the server runs on the host in an agent's worktree before or between runs (aider's
private index on every follow-up, the setup step's `check-ignore` when a failed setup is
tried again) runs nothing the agent planted there: its `.git` may point at a repository
of the agent's whose config names an fsmonitor hook, which git runs on reading the index
(`update-index`, `check-ignore`) when it finds its repository by discovery."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from forkyard.agents.aider import _private_git
from forkyard.settings import BUILTIN_ROLES
from forkyard.workspace.git import Repository
from forkyard.workspace.setup import bring_ignored_files
from tests.fakes.agent_context import FakeAgentContext, Workspace, make_workspace, settings_for
from tests.helpers import GIT_ENV, git, make_repo


def plant_fsmonitor(worktree: Path, marker: Path) -> None:
    """What an agent can do in its own worktree: make `.git` a gitdir file naming a
    repository inside the worktree whose config runs a program of its own on any read
    of the index. `marker` (outside the worktree) is created if the program ever runs."""
    bait = make_repo(worktree.parent / "bait", {"bait.txt": "bait\n"})
    shutil.copytree(bait / ".git", worktree / ".planted-git")
    shutil.rmtree(bait)
    hook = worktree / "hook.sh"
    hook.write_text(f"#!/bin/sh\ntouch {marker}\n")
    hook.chmod(0o755)
    git(worktree / ".planted-git", "config", "core.fsmonitor", str(hook))
    git(worktree / ".planted-git", "config", "core.bare", "false")
    (worktree / ".git").write_text("gitdir: .planted-git\n")


def test_the_planted_hook_runs_when_git_finds_the_repository_by_discovery(
    tmp_path: Path,
) -> None:
    """The bait works: without the hardened path, git on the host runs it."""
    workspace = make_workspace(tmp_path)
    marker = tmp_path / "ran"
    plant_fsmonitor(workspace.worktree, marker)
    git(workspace.worktree, "update-index", "--index-version", "3")
    assert marker.exists()


@pytest.fixture
def planted(tmp_path: Path) -> tuple[Workspace, Path]:
    workspace = make_workspace(tmp_path)
    # As a user's `feature.manyFiles` leaves it: GitPython (so aider) cannot read it.
    git(workspace.worktree, "update-index", "--index-version", "4")
    marker = tmp_path / "ran"
    plant_fsmonitor(workspace.worktree, marker)
    return workspace, marker


async def test_aiders_private_index_on_a_follow_up_runs_nothing_planted(
    planted: tuple[Workspace, Path], tmp_path: Path
) -> None:
    workspace, marker = planted
    home = tmp_path / "home"
    home.mkdir()
    context = FakeAgentContext(
        cwd=workspace.worktree,
        repo_root=workspace.repo,
        settings=settings_for(workspace.state_dir),
        environ=GIT_ENV,
    )
    env = await _private_git(context, home)
    assert not marker.exists(), "the planted fsmonitor hook ran on the host"
    # The index and objects are the repository's, not the planted repository's.
    admin = next((workspace.repo / ".git/worktrees").iterdir())
    assert (home / "git-index").read_bytes() == (admin / "index").read_bytes()
    assert Path(env["GIT_ALTERNATE_OBJECT_DIRECTORIES"]) == (workspace.repo / ".git/objects")
    assert env["GIT_INDEX_FILE"] == str(home / "git-index")
    # And the worktree's own index was rewritten for GitPython (git writes version 2
    # for version 3 when no entry needs 3's flags).
    assert (admin / "index").read_bytes()[4:8] in (b"\0\0\0\2", b"\0\0\0\3")


async def test_an_explorers_private_index_is_the_users_checkouts(
    tmp_path: Path,
) -> None:
    workspace = make_workspace(tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    context = FakeAgentContext(
        cwd=workspace.repo,
        repo_root=workspace.repo,
        settings=settings_for(workspace.state_dir),
        environ=GIT_ENV,
        role=BUILTIN_ROLES["explorer"],
    )
    env = await _private_git(context, home)
    assert (home / "git-index").read_bytes() == (workspace.repo / ".git/index").read_bytes()
    assert Path(env["GIT_ALTERNATE_OBJECT_DIRECTORIES"]) == (workspace.repo / ".git/objects")


async def test_bringing_ignored_files_again_runs_nothing_planted(
    planted: tuple[Workspace, Path],
) -> None:
    """A setup tried again after a failure meets a worktree its sandboxed command could
    change: `check-ignore` there goes through the repository's records."""
    workspace, marker = planted
    (workspace.repo / ".gitignore").write_text(".env\n")
    git(workspace.repo, "add", ".gitignore")
    git(workspace.repo, "commit", "-q", "-m", "ignore .env")
    (workspace.worktree / ".gitignore").write_text(".env\n")
    (workspace.repo / ".env").write_text("KEY=1\n")
    repository = await Repository.discover(workspace.repo, env=GIT_ENV)
    brought = await bring_ignored_files(
        workspace.repo, workspace.worktree, [".env"], [], GIT_ENV, repository=repository
    )
    assert not marker.exists(), "the planted fsmonitor hook ran on the host"
    assert brought.copied == [".env"]
    assert (workspace.worktree / ".env").read_text() == "KEY=1\n"
