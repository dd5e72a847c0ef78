"""Making an agent's overlay worktree (`overlay.py`): milliseconds on any repository.

git registers the worktree (its branch, its admin dir with HEAD) without checking
anything out; the `.git` file git wrote moves into the agent's upper directory, the base
checkout's index is copied into the admin dir, and the overlay is mounted at the
worktree's path. The index copy is written now, after every file of the base, so none
of its entries is racily clean: `git status` in the worktree stats files and reads none.
(The base's files never change: whatever is written lands in the upper directory, under
another inode, which git notices.) A failure undoes all of it, branch included.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import anyio
import anyio.to_thread

from forkyard.workspace.git import Repository
from forkyard.workspace.hardened import find_admin_dir
from forkyard.workspace.overlay import (
    LOCK_REASON,
    Layer,
    base_checkout,
    bases_directory,
    collect_bases,
    layer_dir,
    mount_overlay,
    pin,
    remove_layer,
    unpin,
    write_layer_base,
)
from forkyard.workspace.runner import GitError, run_git


async def make_overlay_worktree(
    repository: Repository,
    path: Path,
    *,
    branch: str,
    commit: str,
    worktrees_dir: Path,
    checkout_workers: int = 0,
) -> str:
    """An agent's overlay worktree at `path` on the new branch `branch` at `commit`.
    Returns the tree whose shared checkout it shows."""
    tree = (await repository.git("rev-parse", "--verify", f"{commit}^{{tree}}")).line
    bases_dir = bases_directory(worktrees_dir)
    pinned = bases_dir / tree
    pin(pinned)
    try:
        base = await base_checkout(
            repository.common_dir, repository.env, bases_dir, tree, checkout_workers
        )
        layer = Layer(path, layer_dir(path), base)
        await _make(repository, layer, branch, commit)
    finally:
        unpin(pinned)
    return tree


async def _make(repository: Repository, layer: Layer, branch: str, commit: str) -> None:
    path = layer.worktree
    await anyio.Path(layer.upper).mkdir(parents=True)
    await anyio.Path(layer.work).mkdir()
    await anyio.to_thread.run_sync(write_layer_base, layer.root, layer.base)
    registered = False
    try:
        await anyio.Path(path.parent).mkdir(parents=True, exist_ok=True)
        async with repository.write_lock:
            await repository.git(
                "worktree", "add", "--quiet", "--no-checkout", "-b", branch, str(path), commit
            )
        registered = True
        await anyio.to_thread.run_sync(_hand_over, repository.common_dir, layer)
        await mount_overlay(layer.lower, layer.upper, layer.work, path)
    except BaseException:
        with anyio.CancelScope(shield=True):
            admin = await anyio.to_thread.run_sync(find_admin_dir, repository.common_dir, path)
            await remove_layer(path, admin)
            if registered:
                async with repository.write_lock:
                    await run_git("worktree", "prune", cwd=repository.root, env=repository.env)
                    await run_git(
                        "branch", "-D", branch, cwd=repository.root, env=repository.env, check=False
                    )
            else:
                await anyio.to_thread.run_sync(shutil.rmtree, layer.root, True)
        raise


def _hand_over(common_dir: Path, layer: Layer) -> None:
    """The `.git` file into the upper directory, the base's index into the admin dir."""
    admin = find_admin_dir(common_dir, layer.worktree)
    if admin is None:
        raise GitError(f"git did not register the worktree {layer.worktree}")
    os.rename(layer.worktree / ".git", layer.upper / ".git")
    if any(os.scandir(layer.worktree)):
        raise GitError(f"the new worktree {layer.worktree} is not empty")
    shutil.copyfile(layer.base / "index", admin / "index")
    # Locked (what `git worktree lock` writes): while no server runs its folder is an
    # empty mount point, which `git worktree prune` would take for a vanished worktree.
    (admin / "locked").write_text(LOCK_REASON, encoding="utf-8")


async def warm_base(
    repository: Repository, worktrees_dir: Path, previous: Path | None, workers: int
) -> Path:
    """The base checkout of the user's HEAD, made ahead of the first dispatch on it and
    kept (pinned) until HEAD moves on; the one `previous` warmed is let go."""
    tree = (await repository.git("rev-parse", "--verify", "HEAD^{tree}")).line
    base = bases_directory(worktrees_dir) / tree
    if base == previous:
        return base
    pin(base)
    try:
        await base_checkout(repository.common_dir, repository.env, base.parent, tree, workers)
    except BaseException:
        unpin(base)
        raise
    if previous is not None:
        unpin(previous)
    await collect_bases(worktrees_dir)
    return base
