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
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio

from forkyard.settings import WorktreeSettings
from forkyard.workspace.checkouts import (
    BACKGROUND_NICENESS,
    POOL_DIR_NAME,
    QUEUED_NICENESS,
    TRASH_DIR_NAME,
    add_worktree,
    attributes_differ,
    background_git,
    checkout_options,
    children,
    discard_folder,
    empty_trash_folder,
    is_internal,
    move_to_trash,
    pool_directory,
    prune_worktrees,
    sparse_folders,
    trash_directory,
)
from forkyard.workspace.git import GitError, Repository, WorktreeGit, run_git
from forkyard.workspace.overlay import (
    ModeChoice,
    choose_mode,
    overlay_support,
    remount_layers,
    unmount_layers,
)
from forkyard.workspace.overlay_make import make_overlay_worktree, warm_base

logger = logging.getLogger(__name__)

#: What callers have always imported from here; the checkouts live in `checkouts.py`.
__all__ = [
    "BACKGROUND_NICENESS",
    "POOL_DIR_NAME",
    "QUEUED_NICENESS",
    "SETTLE_SECONDS",
    "TRASH_DIR_NAME",
    "PooledWorktree",
    "WorktreePool",
    "add_worktree",
    "discard_folder",
    "empty_trash_folder",
    "is_internal",
    "move_to_trash",
    "pool_directory",
    "prune_worktrees",
    "sparse_folders",
    "trash_directory",
]

#: git's index timestamps have one-second granularity: entries of files written less
#: than this long before the index are racily clean until the index is written again.
SETTLE_SECONDS = 1.1


@dataclass
class PooledWorktree:
    """A pristine worktree, detached at `base`, waiting in the pool."""

    path: Path
    base: str


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
                background=background_git,
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
        for stray in await anyio.to_thread.run_sync(children, self.directory):
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
                    background=background_git,
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
