"""Worktrees made fast: a warm pool per repository, and the checkouts behind it.

A fresh worktree of a big repository costs a full checkout (seconds for 20,000 files),
which users feel as an agent that takes ages to start. So a few worktrees are checked
out in advance, in the background, detached at the user's HEAD of the moment. A
dispatch takes one: under the repository's write lock it moves the folder to the
agent's name and creates the agent's branch (two metadata writes, milliseconds), then,
outside the lock, points HEAD at the branch and runs a two-way `read-tree -m -u` from
the pooled commit to the agent's base, which rewrites only the files that differ. Since
nothing ever writes into a pooled worktree, its index and files agree with its commit,
and the result is the same tree a fresh checkout of the base would give. The pool then
refills behind it. A dispatch finding it empty (right after start) never waits for it
but gets a fresh checkout at once; one started while another runs yields the CPU to it
(`nice` 19), so that the first of a burst is not as slow as the last.

Rules that keep this invisible to everything else:

- Pool work holds `Repository.write_lock` only for single short metadata commands;
  checkouts, refreshes and deletions run outside it, at a lower CPU priority.
- Folders are removed by renaming them into a trash folder (atomic, instant) and pruning
  git's record of them, then deleted outside any lock.
- git in a pooled worktree is told its git dir and work tree (`Repository.checkout_git`,
  from the repository's own records, with hooks and fsmonitor off), never finds them
  through the worktree's `.git`; one whose `.git` is not ours is discarded, not used.
- A checkout leaves "racily clean" index entries (files written in the second the index
  was written), which git would re-read in full on the next status; a pooled worktree
  is refreshed once that second has passed, so its first real use only stats files.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import anyio
import anyio.to_thread

from forkyard.settings import WorktreeSettings
from forkyard.workspace.git import GitError, GitResult, Repository, WorktreeGit, run_git
from forkyard.workspace.hardened import find_admin_dir
from forkyard.workspace.overlay import (
    BASES_DIR_NAME,
    OVERLAY_DIR_NAME,
    ModeChoice,
    choose_mode,
    overlay_support,
    remount_layers,
    remove_layer,
    unmount_layers,
)
from forkyard.workspace.overlay_make import make_overlay_worktree, warm_base

logger = logging.getLogger(__name__)

POOL_DIR_NAME = ".pool"
TRASH_DIR_NAME = ".trash"
#: git's index timestamps have one-second granularity: entries of files written less
#: than this long before the index are racily clean until the index is written again.
SETTLE_SECONDS = 1.1
#: Background checkouts yield the CPU to agents and the chat.
BACKGROUND_NICENESS = "10"
#: A fresh checkout behind another one yields to it almost entirely.
QUEUED_NICENESS = "19"
#: Attributes decide how blobs become files (eol, filters): when they differ between
#: two commits, unchanged blobs may need different files, so the pool is not used.
_ATTRIBUTES_PATHSPEC = ":(glob)**/.gitattributes"


@dataclass
class PooledWorktree:
    """A pristine worktree, detached at `base`, waiting in the pool."""

    path: Path
    base: str


def checkout_options(workers: int) -> tuple[str, ...]:
    """`-c checkout.workers=N`: git's parallel checkout (0: one worker per core).

    The index stays in git's default version: version 4 would make each take some 10 ms
    faster on 20,000 files, but tools agents run (GitPython, so aider) cannot read it."""
    return ("-c", f"checkout.workers={workers}")


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
) -> None:
    """A new worktree at `path` checked out at `commit`, on a new branch (None: detached).

    With `sparse_paths`, a sparse worktree in git's cone mode: only those folders (and
    the files along the way) are checked out; git marks the rest skip-worktree, so
    they count as unchanged rather than deleted. Only the registration holds the write
    lock; a failed or cancelled checkout removes the half-made worktree (and the new
    branch) again.
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
            await background_git(git, *checkout, niceness=niceness)
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


class WorktreePool:
    """Prepared worktrees of one repository, kept at `settings().pool_size`.

    `run` is the filler, started once in the orchestrator's task group; `take` hands a
    pooled worktree to a dispatch. Both run on the event loop, so the list of ready
    worktrees changes only between awaits: a worktree being refreshed or retired is
    never in it, and `take` never sees one half-way.
    """

    def __init__(
        self,
        repository: Repository,
        directory: Path,
        trash_dir: Path,
        settings: Callable[[], WorktreeSettings],
        *,
        settle_seconds: float = SETTLE_SECONDS,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.repository = repository
        self.directory = directory
        self.trash_dir = trash_dir
        self._settings = settings
        self.settle_seconds = settle_seconds
        self._ready: list[PooledWorktree] = []
        self._wake = anyio.Event()
        self._changed = anyio.Event()
        self._idle = anyio.Event()
        self._fresh_checkouts = 0  # running now
        #: Why the last fill failed (None when it did not): shown by `forkyard status`.
        self.last_error: str | None = None
        #: Overlay or full worktrees for agents, chosen once (`choose_mode`).
        self.mode: ModeChoice | None = None
        self._environ: Mapping[str, str] = environ if environ is not None else os.environ
        #: The base checkout kept warm for the user's HEAD in overlay mode.
        self._warm_base: Path | None = None

    @property
    def ready(self) -> list[PooledWorktree]:
        return list(self._ready)

    def wake(self) -> None:
        """Ask the filler to look again: a worktree was taken, the settings changed."""
        self._wake.set()
        if self._idle.is_set():
            self._idle = anyio.Event()

    async def wait_idle(self) -> None:
        """Until the filler has done all it was asked and waits for more."""
        await self._idle.wait()

    async def wait_ready(self, count: int) -> None:
        """Until at least `count` worktrees are ready (for tests and benchmarks)."""
        while len(self._ready) < count:
            await self._changed.wait()

    def _announce(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    # --- the filler ------------------------------------------------------------------

    @property
    def worktrees_dir(self) -> Path:
        return self.directory.parent

    async def choose_mode(self) -> ModeChoice:
        """Overlay or full worktrees for this server's agents: chosen at the first ask
        (the filler's start), kept after."""
        if self.mode is None:
            support = await overlay_support(self.worktrees_dir)
            self.mode = choose_mode(self._settings().mode, self._environ, support)
            logger.info("worktrees of %s: %s", self.repository.root, self.mode.reason)
        return self.mode

    def _pool_size(self) -> int:
        """In overlay mode agents need no pooled checkout (sparse dispatches and cluster
        agents still take full ones): the pool holds one only when the user set
        `pool_size` themselves."""
        settings = self._settings()
        if self.mode is not None and self.mode.mode == "overlay":
            return settings.pool_size if "pool_size" in settings.model_fields_set else 0
        return settings.pool_size

    async def run(self) -> None:
        """Adopt what the last server left, then keep the pool full, forever."""
        await remount_layers(self.worktrees_dir)
        try:
            await self.choose_mode()
            await self._adopt()
            await self._keep_filling()
        finally:
            # Overlay mounts live while their server does; the next one mounts them again.
            with anyio.CancelScope(shield=True):
                await unmount_layers(self.worktrees_dir)

    async def stop(self) -> None:
        """The server stops, its agents have: overlay mounts go (an agent that finished
        after the filler stopped may have mounted its own again); the next server
        mounts them at its start."""
        await unmount_layers(self.worktrees_dir)

    async def _keep_filling(self) -> None:
        while True:
            try:
                await self._fill()
                self.last_error = None
            except (GitError, OSError) as exc:
                # A repository without commits, a full disk: agents still start fresh.
                self.last_error = str(exc)
                logger.warning("worktree pool of %s: %s", self.repository.root, exc)
            self._announce()
            if not self._wake.is_set():
                self._idle.set()
            await self._wake.wait()
            self._wake = anyio.Event()

    async def _fill(self) -> None:
        if self.mode is not None and self.mode.mode == "overlay":
            await self._warm()
        while len(self._ready) > self._pool_size():
            extra = self._ready.pop(0)
            logger.info("worktree pool: removing %s (pool size lowered)", extra.path)
            await discard_folder(self.repository, extra.path, self.trash_dir)
        if self._pool_size() == 0:
            return
        head = await self.repository.resolve("HEAD")
        for entry in list(self._ready):
            if entry.base != head and entry in self._ready:
                self._ready.remove(entry)
                await self._move_pooled(entry, head)
        while len(self._ready) < self._pool_size():
            path = self.directory / uuid.uuid4().hex[:12]
            await add_worktree(
                self.repository,
                path,
                commit=head,
                branch=None,
                trash_dir=self.trash_dir,
                checkout_workers=self._settings().checkout_workers,
                niceness=BACKGROUND_NICENESS,
            )
            await self._settle(await self.repository.checkout_git(path))
            self._ready.append(PooledWorktree(path, head))
            self._announce()

    async def _warm(self) -> None:
        workers = self._settings().checkout_workers
        self._warm_base = await warm_base(
            self.repository, self.worktrees_dir, self._warm_base, workers
        )

    async def _move_pooled(self, entry: PooledWorktree, head: str) -> None:
        """Bring a pooled worktree to the user's current HEAD, so that the next take has
        little to check out even after the user switched branches."""
        try:
            git = await self.repository.checkout_git(entry.path)
            await self._switch(git, entry.base, head, background=True)
            await git.run("update-ref", "--no-deref", "HEAD", head)
            await self._settle(git)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await discard_folder(self.repository, entry.path, self.trash_dir)
            raise
        self._ready.append(PooledWorktree(entry.path, head))
        self._announce()

    async def _settle(self, git: WorktreeGit) -> None:
        """Rewrite the index once its entries can no longer be racily clean."""
        await anyio.sleep(self.settle_seconds)
        await background_git(git, "update-index", "-q", "--refresh")

    async def _switch(self, git: WorktreeGit, old: str, new: str, *, background: bool) -> None:
        """Two-way checkout of a pristine worktree from `old` to `new`: only the files
        that differ are written."""
        if old == new:
            return
        args = (*checkout_options(self._settings().checkout_workers), "read-tree", "-m", "-u")
        args += (old, new)
        if background:
            await background_git(git, *args)
        else:
            await git.run(*args)

    async def _adopt(self) -> None:
        """Reuse the pooled worktrees a previous server left if they are pristine;
        remove the rest (half-made ones, stray folders)."""
        try:
            listed = await self.repository.list_worktrees()
        except GitError as exc:
            self.last_error = str(exc)
            return
        directory = Path(await anyio.Path(self.directory).resolve())
        registered: set[Path] = set()
        for info in listed:
            path = Path(await anyio.Path(info.path).resolve())
            if not path.is_relative_to(directory):
                continue
            registered.add(path)
            clean = (
                not info.prunable
                and info.detached
                and info.head is not None
                and len(self._ready) < self._pool_size()
                and await self._pristine(info.path)
            )
            if clean and info.head is not None:
                self._ready.append(PooledWorktree(info.path, info.head))
            else:
                logger.info("worktree pool: removing leftover %s", info.path)
                await discard_folder(self.repository, info.path, self.trash_dir)
        for stray in await anyio.to_thread.run_sync(_children, self.directory):
            if stray not in registered:
                logger.info("worktree pool: removing stray folder %s", stray)
                trashed = await move_to_trash(stray, self.trash_dir)
                if trashed is not None:
                    await empty_trash_folder(trashed)
        self._announce()

    async def _pristine(self, path: Path) -> bool:
        """Whether a worktree left in the pool holds nothing but its commit. git would
        run `status` in every nested repository (with that repository's config) to see
        whether it is dirty, so submodules are not looked into."""
        try:
            git = await self.repository.checkout_git(path)
        except GitError:
            return False
        status = await git.run(
            "status", "--porcelain", "-z", "--untracked-files=all", "--ignore-submodules=all",
            check=False,
        )  # fmt: skip
        return status.returncode == 0 and not status.stdout

    # --- taking ----------------------------------------------------------------------

    async def make_agent_worktree(
        self, path: Path, *, branch: str, commit: str, sparse_paths: Sequence[str] = ()
    ) -> str:
        """An agent's worktree in this server's mode: an overlay of its base's shared
        checkout, or (full mode, and sparse dispatches) `make_worktree`'s. Returns how,
        with the time it took, for the agent's log."""
        mode = await self.choose_mode()
        if mode.mode != "overlay" or sparse_paths:
            return await self.make_worktree(
                path, branch=branch, commit=commit, sparse_paths=sparse_paths
            )
        started = anyio.current_time()
        workers = self._settings().checkout_workers
        await make_overlay_worktree(
            self.repository, path, branch=branch, commit=commit,
            worktrees_dir=self.worktrees_dir, checkout_workers=workers,
        )  # fmt: skip
        return f"prepared worktree in {(anyio.current_time() - started) * 1000:.0f} ms (overlay)"

    async def make_worktree(
        self, path: Path, *, branch: str, commit: str, sparse_paths: Sequence[str] = ()
    ) -> str:
        """An agent's worktree at `path` on the new branch `branch` at `commit`: taken
        from the pool when it can serve, else checked out fresh (sparse ones always
        are). Returns how, with the time it took, for the agent's log."""
        started = anyio.current_time()
        pooled = not sparse_paths and await self.take(path, branch, commit)
        if not pooled:
            behind = self._fresh_checkouts > 0
            self._fresh_checkouts += 1
            try:
                await add_worktree(
                    self.repository, path, commit=commit, branch=branch,
                    trash_dir=self.trash_dir, sparse_paths=sparse_paths,
                    checkout_workers=self._settings().checkout_workers,
                    niceness=QUEUED_NICENESS if behind else None,
                )  # fmt: skip
            finally:
                self._fresh_checkouts -= 1
        elapsed_ms = (anyio.current_time() - started) * 1000
        how = "pooled" if pooled else "fresh"
        if sparse_paths:
            how += ", sparse: " + ", ".join(sparse_paths)
        return f"prepared worktree in {elapsed_ms:.0f} ms ({how})"

    async def take(self, target: Path, branch: str, commit: str) -> bool:
        """Make `target` a worktree on the new branch `branch` at `commit` from a pooled
        one. False when the pool cannot serve (empty, attributes changed, a git error):
        the caller then makes a fresh worktree, which reports any real problem itself.
        """
        if not self._ready:
            self.wake()
            return False
        entry = self._ready.pop()
        try:
            return await self._take(entry, target, branch, commit)
        finally:
            self.wake()

    async def _take(self, entry: PooledWorktree, target: Path, branch: str, commit: str) -> bool:
        repository = self.repository
        try:
            if entry.base != commit and await attributes_differ(repository, entry.base, commit):
                await discard_folder(repository, entry.path, self.trash_dir)
                return False
        except GitError:
            self._ready.append(entry)
            return False
        await anyio.Path(target.parent).mkdir(parents=True, exist_ok=True)
        branch_made = moved = False
        try:
            pooled = await repository.checkout_git(entry.path)
            async with repository.write_lock:
                made = await run_git(
                    "update-ref", "-m", "forkyard: agent branch", f"refs/heads/{branch}",
                    commit, "", cwd=repository.root, env=repository.env, check=False,
                )  # fmt: skip
                if made.returncode != 0:
                    # Taken already: the fresh path will say so in its own words.
                    self._ready.append(entry)
                    return False
                branch_made = True
                await repository.git("worktree", "move", str(entry.path), str(target))
                moved = True
            git = pooled.moved_to(target)
            await git.run("symbolic-ref", "HEAD", f"refs/heads/{branch}")
            await self._switch(git, entry.base, commit, background=False)
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                logger.info("worktree pool: %s could not start at %s: %s", target, commit, exc)
                await discard_folder(repository, target if moved else entry.path, self.trash_dir)
                if branch_made:
                    async with repository.write_lock:
                        await run_git(
                            "branch", "-D", branch,
                            cwd=repository.root, env=repository.env, check=False,
                        )  # fmt: skip
            if isinstance(exc, GitError):
                return False
            raise
        return True


def _children(directory: Path) -> list[Path]:
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
