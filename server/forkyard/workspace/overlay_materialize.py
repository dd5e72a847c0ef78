"""An overlay worktree made an ordinary full one, at the same path (`overlay.py`).

Tools outside the server (an IDE opened on the folder, a build that must survive a
daemon restart) need the worktree's files on disk, not in a mount that lives only while
its server runs. The agent's work must already be committed to its branch (the caller
does that, as at the end of a run), so the upper directory holds nothing the branch does
not: the overlay is unmounted, its layer removed (its record unlocked, its base
checkout collected if no one else uses it), and the branch tip checked out into the
now empty folder with the same git as the pool's checkouts (the user's config and
filters, hooks and fsmonitor off, git dir named from the repository's records). The
`.git` file is written anew from those records: the one in the upper directory was the
agent's to change.
"""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import anyio.to_thread

from forkyard.workspace.checkouts import checkout_options
from forkyard.workspace.git import Repository
from forkyard.workspace.hardened import find_admin_dir
from forkyard.workspace.overlay import layer_of, remove_layer
from forkyard.workspace.runner import GitError


async def materialize_worktree(repository: Repository, worktree: Path, *, workers: int = 0) -> bool:
    """Turn the overlay worktree at `worktree` into a full checkout of its HEAD; False
    (nothing done) for a full worktree. Its work must be committed first."""
    if await anyio.to_thread.run_sync(layer_of, worktree) is None:
        return False
    admin = await anyio.to_thread.run_sync(find_admin_dir, repository.common_dir, worktree)
    if admin is None:
        raise GitError(f"{worktree} is not one of this repository's worktrees")
    await remove_layer(worktree, admin)
    await anyio.to_thread.run_sync(_prepare_folder, worktree, admin)
    git = await repository.checkout_git(worktree)
    checkout = (*checkout_options(workers), "reset", "--hard", "--quiet")
    await git.run(*checkout, "--no-recurse-submodules")
    return True


def _prepare_folder(worktree: Path, admin: Path) -> None:
    """The empty folder with git's `.git` file, and no index: the overlay's index held
    stat data of files that are gone, so `reset --hard` writes every file afresh."""
    worktree.mkdir(parents=True, exist_ok=True)
    if any(os.scandir(worktree)):
        raise GitError(f"the overlay worktree {worktree} is not empty once unmounted")
    (worktree / ".git").write_text(f"gitdir: {admin}\n", encoding="utf-8")
    (admin / "index").unlink(missing_ok=True)
