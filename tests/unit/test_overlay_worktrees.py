"""Overlay worktrees on real repositories, changed by real programs in the real sandbox:
the agent's diff and commit are those of a full worktree file by file (added, deleted,
renamed, binary, symlink, mode and type changes, ignored files left out); `git status`
inside the sandbox shows exactly the agent's changes, and the real aider works there as
in a full worktree; ten agents on one base share one
checkout and each costs only its changes; the base goes with its last agent; a lost
mount comes back with the work intact; the mode falls back to full where overlays cannot
run, and says why."""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from forkyard.agents.aider import AiderBackend
from forkyard.settings import WorktreeSettings
from forkyard.tools.sandbox import SandboxPolicy, sandboxed_argv
from forkyard.tools.sandbox_paths import git_read_paths
from forkyard.workspace.diff import diff_worktree
from forkyard.workspace.gc import disk_usage
from forkyard.workspace.git import Repository
from forkyard.workspace.overlay import (
    MODE_ENV,
    bases_directory,
    choose_mode,
    layer_of,
    unmount_layers,
)
from forkyard.workspace.overlay_stage import changed_paths_of
from forkyard.workspace.pool import WorktreePool
from tests.fakes.agent_context import Workspace
from tests.fakes.model_server import FakeModelServer, Reply
from tests.helpers import GIT_ENV, git
from tests.unit.test_external_aider import aider_context, whole_file

pytestmark = pytest.mark.timeout(60)

#: What an agent's program does, run inside its sandbox: every kind of change.
CHANGES = r"""
set -e
printf 'def add(a, b):\n    return b + a\n' > src/app.py
printf 'NEW = 1\n' > src/new.py
rm README.md
mv docs/guide.md docs/manual.md
printf '\000\001\002changed' > assets/logo.bin
ln -s src/app.py app-link
rm old-link && ln -s docs/manual.md old-link
chmod +x tools/run.sh
rm -r gone
rm swap-dir && mkdir swap-dir && printf 'inside\n' > swap-dir/file.txt
rm -r swap-file && printf 'now a file\n' > swap-file
mkdir -p fresh/deep && printf 'deep\n' > fresh/deep/x.txt
printf 'noise\n' > build.log
rm -r remade && mkdir remade && printf 'again\n' > remade/only.txt
"""

FILES = {
    "README.md": "# sample\n",
    "src/app.py": "def add(a, b):\n    return a + b\n",
    "docs/guide.md": "# guide\n",
    "tools/run.sh": "#!/bin/sh\necho run\n",
    "gone/a.txt": "a\n",
    "gone/sub/b.txt": "b\n",
    "swap-dir": "was a file\n",
    "swap-file/inner.txt": "was in a folder\n",
    "remade/one.txt": "1\n",
    "remade/two.txt": "2\n",
    ".gitignore": "*.log\n",
}


needs_overlays = pytest.mark.skipif(os.geteuid() != 0, reason="mounting overlays needs root")


@pytest.fixture
async def repository(tmp_path: Path) -> Repository:
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    for name, text in FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (root / "assets").mkdir()
    (root / "assets/logo.bin").write_bytes(b"\x89PNG\x00\x01binary")
    (root / "old-link").symlink_to("README.md")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "initial")
    return await Repository.discover(root, env=GIT_ENV)


@asynccontextmanager
async def overlay_pool(repository: Repository, tmp_path: Path) -> AsyncIterator[WorktreePool]:
    """A pool in overlay mode whose filler runs (and unmounts everything at the end)."""
    worktrees = tmp_path / "worktrees"
    settings = WorktreeSettings(mode="overlay")
    made = WorktreePool(
        repository,
        worktrees / ".pool",
        worktrees / ".trash",
        lambda: settings,
        settle_seconds=0,
        environ={},
    )
    async with anyio.create_task_group() as task_group:
        task_group.start_soon(made.run)
        choice = await made.choose_mode()
        assert choice.mode == "overlay", choice.reason
        yield made
        task_group.cancel_scope.cancel()
    await unmount_layers(worktrees)


async def in_sandbox(repository: Repository, worktree: Path, command: str) -> str:
    """`command` in the worktree under the sandbox every agent's command gets."""
    readable = await anyio.to_thread.run_sync(git_read_paths, repository.root, worktree)
    policy = SandboxPolicy(writable=[worktree], readable=readable)
    env = {"PATH": os.environ["PATH"], "LANG": "C.UTF-8"}
    argv = sandboxed_argv(command, policy, cwd=worktree, env=env)
    done = await anyio.run_process(argv, cwd=worktree, check=False, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


async def full_and_overlay(
    repository: Repository, pool: WorktreePool, tmp_path: Path
) -> tuple[Path, Path, str]:
    head = await repository.resolve("HEAD")
    full, overlay = pool.worktrees_dir / "1-full", pool.worktrees_dir / "2-overlay"
    await pool.make_worktree(full, branch="forkyard/1-full", commit=head)
    how = await pool.make_agent_worktree(overlay, branch="forkyard/2-overlay", commit=head)
    assert how.endswith("(overlay)"), how
    return full, overlay, head


@needs_overlays
async def test_an_overlay_agents_diff_and_commit_are_a_full_worktrees_file_by_file(
    repository: Repository, tmp_path: Path
) -> None:
    async with overlay_pool(repository, tmp_path) as pool:
        await _an_overlay_agents_diff_and_commit_are_a_full_worktrees_file_by_file(
            repository, pool, tmp_path
        )


async def _an_overlay_agents_diff_and_commit_are_a_full_worktrees_file_by_file(
    repository: Repository, pool: WorktreePool, tmp_path: Path
) -> None:
    full, overlay, head = await full_and_overlay(repository, pool, tmp_path)
    for worktree in (full, overlay):
        await in_sandbox(repository, worktree, CHANGES)
    layer = layer_of(overlay)
    assert layer is not None and not (layer.base / "files/src/new.py").exists()
    assert "src/new.py" in changed_paths_of(layer), "the change is in the agent's layer"
    full_diff = await diff_worktree(full, head, repository.root, repository=repository)
    overlay_diff = await diff_worktree(overlay, head, repository.root, repository=repository)
    assert overlay_diff.tree == full_diff.tree
    assert overlay_diff.patch == full_diff.patch
    assert overlay_diff.files == full_diff.files
    paths = {change.path for change in overlay_diff.files}
    assert {"README.md", "src/new.py", "assets/logo.bin", "app-link", "build.log"} & paths == {
        "README.md",
        "src/new.py",
        "assets/logo.bin",
        "app-link",
    }, "deleted, added, binary and link changes; the ignored log is not the agent's work"
    full_commit = await repository.commit_worktree(full, "work")
    overlay_commit = await repository.commit_worktree(overlay, "work")
    assert full_commit and overlay_commit
    assert git(repository.root, "rev-parse", f"{overlay_commit}^{{tree}}") == git(
        repository.root, "rev-parse", f"{full_commit}^{{tree}}"
    )
    assert git(repository.root, "rev-parse", "forkyard/2-overlay").strip() == overlay_commit


@needs_overlays
async def test_git_status_inside_the_sandbox_shows_exactly_the_agents_changes(
    repository: Repository, tmp_path: Path
) -> None:
    async with overlay_pool(repository, tmp_path) as pool:
        await _git_status_inside_the_sandbox_shows_exactly_the_agents_changes(
            repository, pool, tmp_path
        )


async def _git_status_inside_the_sandbox_shows_exactly_the_agents_changes(
    repository: Repository, pool: WorktreePool, tmp_path: Path
) -> None:
    full, overlay, _ = await full_and_overlay(repository, pool, tmp_path)
    status = "git status --porcelain --untracked-files=all"
    assert await in_sandbox(repository, overlay, status) == "", "a fresh overlay is clean"
    for worktree in (full, overlay):
        await in_sandbox(repository, worktree, CHANGES)
    inside = await in_sandbox(repository, overlay, status)
    assert inside == await in_sandbox(repository, full, status)
    assert " D README.md\n" in inside and "?? src/new.py\n" in inside
    log = await in_sandbox(repository, overlay, "git log --oneline -1 && git branch --show-current")
    assert log.endswith("forkyard/2-overlay\n")


@needs_overlays
async def test_ten_agents_on_one_base_share_one_checkout_which_goes_with_the_last(
    repository: Repository, tmp_path: Path
) -> None:
    async with overlay_pool(repository, tmp_path) as pool:
        await _ten_agents_on_one_base_share_one_checkout_which_goes_with_the_last(
            repository, pool, tmp_path
        )


async def _ten_agents_on_one_base_share_one_checkout_which_goes_with_the_last(
    repository: Repository, pool: WorktreePool, tmp_path: Path
) -> None:
    head = await repository.resolve("HEAD")
    worktrees = [pool.worktrees_dir / f"{n}-agent" for n in range(1, 11)]
    for number, path in enumerate(worktrees, start=1):
        await pool.make_agent_worktree(path, branch=f"forkyard/{number}-agent", commit=head)
        await in_sandbox(repository, path, f"echo {number} > src/app.py")
    bases = sorted(bases_directory(pool.worktrees_dir).iterdir())
    assert len(bases) == 1, bases
    base_bytes = await disk_usage(bases[0])
    for path in worktrees:
        assert (path / "src/app.py").read_text() != FILES["src/app.py"]
        assert (path / "README.md").read_text() == FILES["README.md"]
        assert await disk_usage(path, repository.common_dir) < base_bytes + 64 * 1024
    for number, path in enumerate(worktrees, start=1):
        kept = await repository.remove_worktree(
            path, f"forkyard/{number}-agent", f"refs/forkyard/discarded/{number}"
        )
        assert git(repository.root, "show", f"{kept}:src/app.py") == f"{number}\n"
        assert not path.exists() and layer_of(path) is None
    left = [base for base in bases_directory(pool.worktrees_dir).iterdir()]
    # The pool keeps the user's HEAD warm; no other base is left.
    assert all(
        base.name == git(repository.root, "rev-parse", "HEAD^{tree}").strip() for base in left
    )


@needs_overlays
async def test_a_lost_mount_comes_back_with_the_agents_work_and_record(
    repository: Repository, tmp_path: Path
) -> None:
    async with overlay_pool(repository, tmp_path) as pool:
        await _a_lost_mount_comes_back_with_the_agents_work(repository, pool, tmp_path)


async def _a_lost_mount_comes_back_with_the_agents_work(
    repository: Repository, pool: WorktreePool, tmp_path: Path
) -> None:
    head = await repository.resolve("HEAD")
    path = pool.worktrees_dir / "3-agent"
    await pool.make_agent_worktree(path, branch="forkyard/3-agent", commit=head)
    await in_sandbox(repository, path, "echo kept > kept.txt")
    await unmount_layers(pool.worktrees_dir)
    assert not os.path.ismount(path) and not (path / "kept.txt").exists()
    git(repository.root, "worktree", "prune")  # the person's git, meanwhile: the record stays
    diff = await diff_worktree(path, head, repository.root, repository=repository)
    assert [change.path for change in diff.files] == ["kept.txt"]
    assert (path / "kept.txt").read_text() == "kept\n"


def test_the_mode_falls_back_to_full_and_says_why() -> None:
    refused = (False, "mounting an overlay takes root and this server is not")
    choice = choose_mode("overlay", {}, refused)
    assert choice.mode == "full" and "takes root" in choice.reason
    assert choose_mode("overlay", {}, (True, "ok")).mode == "overlay"
    assert choose_mode("full", {}, (True, "ok")).mode == "full"
    forced = choose_mode("overlay", {MODE_ENV: "full"}, (True, "ok"))
    assert forced.mode == "full" and MODE_ENV in forced.reason
    assert choose_mode("full", {MODE_ENV: "overlay"}, (True, "ok")).mode == "overlay"


@needs_overlays
async def test_aider_edits_an_overlay_worktree_as_it_would_a_full_one(
    repository: Repository, tmp_path: Path
) -> None:
    """An external program (the real aider, its git included) against the fake model."""
    async with overlay_pool(repository, tmp_path) as pool:
        head = await repository.resolve("HEAD")
        worktree = pool.worktrees_dir / "1-aider"
        await pool.make_agent_worktree(worktree, branch="forkyard/1-aider", commit=head)
        workspace = Workspace(repo=repository.root, worktree=worktree, state_dir=tmp_path / "s")
        with FakeModelServer(default=Reply(text="(unscripted reply)")) as model:
            model.script(whole_file("notes.txt", "hello from aider\n"))
            outcome = await AiderBackend().run(aider_context(workspace, model), "Add notes")
        assert outcome.ok, outcome.error
        assert workspace.status() == ["?? notes.txt"]
        layer = layer_of(worktree)
        assert layer is not None and changed_paths_of(layer) == ["notes.txt"]
        diff = await diff_worktree(worktree, head, repository.root, repository=repository)
        assert [(change.path, change.status) for change in diff.files] == [("notes.txt", "added")]
