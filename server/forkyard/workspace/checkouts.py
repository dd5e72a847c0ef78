"""Worktree checkouts and their removal, for the pool (`pool.py`) and everyone else.

Kept apart from the pool's own bookkeeping: a fresh (maybe sparse) checkout at a lower
CPU priority, removing a worktree that holds nothing to keep by renaming it into the
trash (atomic, instant) and deleting it outside any lock, `git worktree prune` logged,
and the names of the folders under the worktrees folder that are not agents'. The rules
these follow are the pool's (see its docstring); nothing here holds the repository's
write lock longer than one short metadata command.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Protocol

import anyio
import anyio.to_thread

from forkyard.workspace.git import GitError, GitResult, Repository, WorktreeGit, run_git
from forkyard.workspace.hardened import find_admin_dir
from forkyard.workspace.overlay import BASES_DIR_NAME, OVERLAY_DIR_NAME, remove_layer

logger = logging.getLogger(__name__)

POOL_DIR_NAME = ".pool"
TRASH_DIR_NAME = ".trash"
#: Background checkouts yield the CPU to agents and the chat.
BACKGROUND_NICENESS = "10"
#: A fresh checkout behind another one yields to it almost entirely.
QUEUED_NICENESS = "19"
#: Attributes decide how blobs become files (eol, filters): when they differ between
#: two commits, unchanged blobs may need different files, so the pool is not used.
_ATTRIBUTES_PATHSPEC = ":(glob)**/.gitattributes"


def checkout_options(workers: int) -> tuple[str, ...]:
    """`-c checkout.workers=N`: git's parallel checkout (0: one worker per core).

    The index stays in git's default version: version 4 would make each take some 10 ms
    faster on 20,000 files, but tools agents run (GitPython, so aider) cannot read it."""
    return ("-c", f"checkout.workers={workers}")


class BackgroundGit(Protocol):
    """How a checkout nobody waits on runs git (`background_git`, or the pool's own)."""

    async def __call__(self, git: WorktreeGit, *args: str, niceness: str = ...) -> GitResult: ...


async def background_git(
    git: WorktreeGit, *args: str, niceness: str = BACKGROUND_NICENESS
) -> GitResult:
    """git at a lower CPU priority, for work nobody waits on (or that waits its turn)."""
    nice = await anyio.to_thread.run_sync(shutil.which, "nice")
    if nice is None:
        return await git.run(*args)
    command = [nice, "-n", niceness, "git", "-c", "core.quotepath=off"]
    command += [*git.options, *args]
    done = await anyio.run_process(command, cwd=git.worktree, env=git.env, check=False)
    stderr = done.stderr.decode("utf-8", errors="replace")
    if done.returncode != 0:
        raise GitError(
            f"`git {' '.join(args)}` failed (exit {done.returncode}) in {git.worktree}: "
            f"{stderr.strip() or '(no message)'}",
            returncode=done.returncode,
            stderr=stderr,
        )
    return GitResult(tuple(args), done.stdout, stderr, done.returncode)


async def add_worktree(
    repository: Repository,
    path: Path,
    *,
    commit: str,
    branch: str | None,
    trash_dir: Path,
    sparse_paths: Sequence[str] = (),
    checkout_workers: int = 0,
    niceness: str | None = None,
    background: BackgroundGit | None = None,
) -> None:
    """A new worktree at `path` checked out at `commit`, on a new branch (None: detached).

    With `sparse_paths`, a sparse worktree in git's cone mode: only those folders (and
    the files along the way) are checked out; git marks the rest skip-worktree, so
    they count as unchanged rather than deleted. Only the registration holds the write
    lock; a failed or cancelled checkout removes the half-made worktree (and the new
    branch) again. `background` runs a checkout given a `niceness` (the pool passes the
    one of its module, which its tests hold).
    """
    await anyio.Path(path.parent).mkdir(parents=True, exist_ok=True)
    target = ("-b", branch) if branch else ("--detach",)
    async with repository.write_lock:
        await repository.git(
            "worktree", "add", "--quiet", "--no-checkout", *target, str(path), commit
        )
    try:
        git = await repository.checkout_git(path)
        if sparse_paths:
            # The first sparse worktree turns on extensions.worktreeConfig in the
            # repository's shared config: a write like any other.
            async with repository.write_lock:
                await git.run("sparse-checkout", "set", "--cone", "--", *sparse_paths)
        checkout = (*checkout_options(checkout_workers), "reset", "--hard", "--quiet")
        checkout += ("--no-recurse-submodules",)
        if niceness is not None:  # else at the server's own priority
            await (background or background_git)(git, *checkout, niceness=niceness)
        else:
            await git.run(*checkout)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await discard_folder(repository, path, trash_dir)
            if branch is not None:
                async with repository.write_lock:
                    await run_git(
                        "branch", "-D", branch, cwd=repository.root, env=repository.env, check=False
                    )
        raise


async def discard_folder(repository: Repository, path: Path, trash_dir: Path) -> None:
    """Remove a worktree that holds nothing worth keeping (a pooled or half-made one):
    its folder is renamed into the trash, git's record of it pruned, and the files
    deleted outside the lock. Whatever else `git worktree prune` drops (worktrees whose
    folder vanished) is logged."""
    logger.info("removing worktree %s (nothing in it to keep)", path)
    admin = await anyio.to_thread.run_sync(find_admin_dir, repository.common_dir, path)
    trashed = None if await remove_layer(path, admin) else await move_to_trash(path, trash_dir)
    async with repository.write_lock:
        await prune_worktrees(repository)
    if trashed is not None:
        await empty_trash_folder(trashed)


async def move_to_trash(path: Path, trash_dir: Path) -> Path | None:
    """Rename `path` into the trash folder (same file system: instant); None if gone."""
    if not await anyio.Path(path).exists():
        return None
    await anyio.Path(trash_dir).mkdir(parents=True, exist_ok=True)
    trashed = trash_dir / f"{path.name}-{uuid.uuid4().hex[:8]}"
    await anyio.Path(path).rename(trashed)
    return trashed


async def empty_trash_folder(path: Path) -> None:
    await anyio.to_thread.run_sync(_remove_tree, path)


def _remove_tree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


async def prune_worktrees(repository: Repository) -> list[str]:
    """`git worktree prune`, logging each entry it drops; the caller holds the lock."""
    dropped = await repository.git("worktree", "prune", "--verbose")
    lines = [line for line in dropped.text.splitlines() if line.strip()]
    for line in lines:
        logger.info("git worktree prune: %s", line)
    return lines


async def attributes_differ(repository: Repository, old: str, new: str) -> bool:
    found = await run_git(
        "diff", "--quiet", old, new, "--", _ATTRIBUTES_PATHSPEC,
        cwd=repository.root, env=repository.env, check=False,
    )  # fmt: skip
    if found.returncode > 1:
        raise GitError(f"cannot compare .gitattributes of {old} and {new}: {found.stderr}")
    return found.returncode == 1


def children(directory: Path) -> list[Path]:
    """The folders in `directory`, symlinks resolved."""
    if not directory.is_dir():
        return []
    return sorted(child.resolve() for child in directory.iterdir() if child.is_dir())


def sparse_folders(paths: Sequence[str]) -> list[str]:
    """Dispatch `paths` as folders for a cone-mode sparse checkout: repo-relative POSIX
    paths inside the repository. "." (the whole repository) is dropped, so a list of
    only that means a full worktree. ValueError names a path that leaves the
    repository."""
    folders = []
    for path in paths:
        pure = PurePosixPath(path.strip())
        if pure.is_absolute() or ".." in pure.parts or "\\" in path or "\0" in path:
            raise ValueError(f"{path!r} is not a folder inside the repository")
        if str(pure) != ".":
            folders.append(str(pure))
    return folders


def pool_directory(worktrees_dir: Path) -> Path:
    return worktrees_dir / POOL_DIR_NAME


def trash_directory(worktrees_dir: Path) -> Path:
    return worktrees_dir / TRASH_DIR_NAME


def is_internal(path: Path, worktrees_dir: Path) -> bool:
    """Whether `path` is the pool's or the trash's, not an agent's worktree. Resolves
    symlinks on disk: call it from a worker thread."""
    resolved = Path(os.path.realpath(path))
    root = Path(os.path.realpath(worktrees_dir))
    internal = (POOL_DIR_NAME, TRASH_DIR_NAME, OVERLAY_DIR_NAME, BASES_DIR_NAME)
    return any(resolved.is_relative_to(root / name) for name in internal)
