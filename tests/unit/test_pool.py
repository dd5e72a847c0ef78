"""The warm worktree pool, on real repositories: a pooled start gives exactly the tree a
fresh checkout gives, whatever the user did in between; the pool refills, survives a
restart, steps aside when it cannot serve, and holds the repository's write lock only
for single short steps."""

from __future__ import annotations

import os
import re
import stat
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType

import anyio
import pytest

from forkyard.settings import WorktreeSettings
from forkyard.workspace.git import Repository
from forkyard.workspace.pool import WorktreePool, add_worktree
from tests.helpers import GIT_ENV, git, make_repo

Listing = dict[str, tuple[str, bytes, bool]]


def listing(root: Path) -> Listing:
    """Every file, folder and symlink under `root` (but .git): kind, content or link
    target, and whether it is executable."""
    found: Listing = {}
    for folder, folders, files in os.walk(root):
        relative = Path(folder).relative_to(root)
        if relative == Path("."):
            folders[:] = [name for name in folders if name != ".git"]
        for name in folders + files:
            if relative == Path(".") and name == ".git":
                continue
            path = Path(folder) / name
            key = str(relative / name)
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                found[key] = ("link", os.readlink(path).encode(), False)
            elif stat.S_ISDIR(info.st_mode):
                found[key] = ("dir", b"", False)
            else:
                found[key] = ("file", path.read_bytes(), bool(info.st_mode & stat.S_IXUSR))
    return found


class RecordingLock:
    """The repository's write lock, recording how often and how long it is held."""

    def __init__(self) -> None:
        self._lock = anyio.Lock()
        self.holds: list[float] = []
        self._since = 0.0

    async def __aenter__(self) -> None:
        await self._lock.acquire()
        self._since = time.perf_counter()

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.holds.append(time.perf_counter() - self._since)
        self._lock.release()


@pytest.fixture
async def repository(repo: Path) -> Repository:
    (repo / "bin").mkdir()
    (repo / "bin/run.sh").write_text("#!/bin/sh\necho run\n")
    (repo / "bin/run.sh").chmod(0o755)
    (repo / "docs/deep/er").mkdir(parents=True)
    (repo / "docs/deep/er/notes.md").write_text("deep\n")
    (repo / "link-to-app").symlink_to("src/app.py")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "more kinds of files")
    return await Repository.discover(repo, env=GIT_ENV)


@asynccontextmanager
async def running_pool(
    repository: Repository, root: Path, settings: WorktreeSettings
) -> AsyncIterator[WorktreePool]:
    """A pool whose filler runs until the block ends."""
    pool = WorktreePool(
        repository, root / ".pool", root / ".trash", lambda: settings, settle_seconds=0
    )
    async with anyio.create_task_group() as task_group:
        task_group.start_soon(pool.run)
        yield pool
        task_group.cancel_scope.cancel()


async def fresh(repository: Repository, path: Path, branch: str, commit: str) -> None:
    await add_worktree(
        repository, path, commit=commit, branch=branch, trash_dir=path.parent / ".trash"
    )


def make_dirty(repo: Path, round: int) -> None:
    (repo / "src/app.py").write_text(f"def add(a, b):\n    return b + a  # {round}\n")
    (repo / f"untracked-{round}.txt").write_text("untracked\n")
    (repo / "README.md").unlink(missing_ok=True)
    (repo / "debug.log").write_text("ignored: never part of a worktree\n")


async def test_a_pooled_start_is_exactly_a_fresh_checkout_of_the_same_base(
    repository: Repository, repo: Path, tmp_path: Path
) -> None:
    targets = tmp_path / "worktrees"

    def user_commits() -> None:
        git(repo, "checkout", "-q", "--", ".")
        (repo / "src/new_module.py").write_text("NEW = 1\n")
        (repo / "bin/run.sh").chmod(0o644)
        git(repo, "rm", "-q", "-r", "docs")
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", "the user's commit")
        make_dirty(repo, 2)

    def user_switches_branch() -> None:
        git(repo, "stash", "-q", "--include-untracked")
        git(repo, "checkout", "-q", "-b", "older", "HEAD~1")
        (repo / "link-to-app").unlink()
        (repo / "link-to-app").symlink_to("README.md")
        (repo / "docs/deep/er/notes.md").write_text("changed on the other branch\n")

    def back_to_main() -> None:
        git(repo, "stash", "-q", "--include-untracked")
        git(repo, "checkout", "-q", "main")
        git(repo, "stash", "pop", "-q", "stash@{1}")

    steps: list[tuple[str, Callable[[], None]]] = [
        ("dirty checkout", lambda: make_dirty(repo, 1)),
        ("after the user commits", user_commits),
        ("on another branch", user_switches_branch),
        ("back on main, dirty again", back_to_main),
    ]
    async with running_pool(repository, targets, WorktreeSettings(pool_size=1)) as pool:
        await pool.wait_ready(1)
        for number, (name, change) in enumerate(steps, start=1):
            # The pooled worktree sits at the HEAD of before the change.
            change()
            base = await repository.snapshot()
            pooled, unpooled = targets / f"{number}-pooled", targets / f"{number}-fresh"
            assert await pool.take(pooled, f"forkyard/{number}-pooled", base), name
            await fresh(repository, unpooled, f"forkyard/{number}-fresh", base)
            assert listing(pooled) == listing(unpooled), name
            assert git(pooled, "status", "--porcelain", "--untracked-files=all") == "", name
            head = git(pooled, "symbolic-ref", "HEAD").strip()
            assert head == f"refs/heads/forkyard/{number}-pooled", name
            assert git(pooled, "rev-parse", "HEAD").strip() == base, name
            await pool.wait_ready(1)
        # An older commit named directly, not a snapshot.
        older = await repository.resolve("main~2")
        assert await pool.take(targets / "older-pooled", "forkyard/older-pooled", older)
    await fresh(repository, targets / "older-fresh", "forkyard/older-fresh", older)
    assert listing(targets / "older-pooled") == listing(targets / "older-fresh")


async def test_the_pool_refills_behind_each_take_and_serves_only_when_it_has_one(
    repository: Repository, tmp_path: Path
) -> None:
    settings = WorktreeSettings(pool_size=2)
    async with running_pool(repository, tmp_path / "worktrees", settings) as pool:
        await pool.wait_ready(2)
        head = await repository.resolve("HEAD")
        first = [entry.path for entry in pool.ready]
        assert await pool.take(tmp_path / "a", "forkyard/a", head)
        assert await pool.take(tmp_path / "b", "forkyard/b", head)
        assert not first[0].exists() and not first[1].exists()
        await pool.wait_ready(2)
        assert {entry.path for entry in pool.ready}.isdisjoint(first)

        settings.pool_size = 0
        pool.wake()
        await pool.wait_idle()
        assert pool.ready == []
        assert not await pool.take(tmp_path / "c", "forkyard/c", head)
    assert list((tmp_path / "worktrees" / ".pool").iterdir()) == []
    assert ".pool" not in git(repository.root, "worktree", "list", "--porcelain")


async def test_the_pool_steps_aside_when_attributes_change_or_the_branch_exists(
    repository: Repository, repo: Path, tmp_path: Path
) -> None:
    settings = WorktreeSettings(pool_size=1)
    async with running_pool(repository, tmp_path / "worktrees", settings) as pool:
        await pool.wait_ready(1)
        head = await repository.resolve("HEAD")
        git(repo, "branch", "forkyard/taken", head)
        assert not await pool.take(tmp_path / "taken", "forkyard/taken", head)
        assert len(pool.ready) == 1, "the pooled worktree goes back to the pool"
        assert not (tmp_path / "taken").exists()

        # Attributes decide how the same blob becomes a file: a move would keep old files.
        (repo / ".gitattributes").write_text("*.md text eol=crlf\n")
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", "crlf")
        crlf = await repository.resolve("HEAD")
        assert not await pool.take(tmp_path / "crlf", "forkyard/crlf", crlf)
        assert git(repo, "branch", "--list", "forkyard/crlf") == ""
    await fresh(repository, tmp_path / "crlf", "forkyard/crlf", crlf)
    assert (tmp_path / "crlf/README.md").read_bytes() == b"# sample\r\n"


async def test_a_restarted_pool_adopts_pristine_worktrees_and_removes_the_rest(
    repository: Repository, tmp_path: Path
) -> None:
    root, settings = tmp_path / "worktrees", WorktreeSettings(pool_size=2)
    async with running_pool(repository, root, settings) as first:
        await first.wait_ready(2)
    kept, spoiled = (entry.path for entry in first.ready)
    (spoiled / "stray.txt").write_text("someone wrote here\n")
    stray_folder = root / ".pool" / "not-a-worktree"
    stray_folder.mkdir()

    async with running_pool(repository, root, settings) as second:
        await second.wait_ready(2)
        await second.wait_idle()
        ready = [entry.path for entry in second.ready]
    assert kept in ready and spoiled not in ready and len(ready) == 2
    assert not spoiled.exists() and not stray_folder.exists()


async def test_pool_work_holds_the_write_lock_only_for_single_short_steps(
    tmp_path: Path,
) -> None:
    big = make_repo(
        tmp_path / "big",
        {f"pkg{n // 100}/module_{n}.py": f"VALUE = {n}\n" * 50 for n in range(3000)},
    )
    repository = await Repository.discover(big, env=GIT_ENV)
    lock = RecordingLock()
    repository.write_lock = lock
    settings = WorktreeSettings(pool_size=1)
    started = time.perf_counter()
    async with running_pool(repository, tmp_path / "worktrees", settings) as pool:
        await pool.wait_ready(1)
        filled = time.perf_counter() - started
        # The list of what a last server left (git reads worktree records unlocked),
        # then the registration of the new worktree, each one locked step.
        assert len(lock.holds) == 2, "filling registers the worktree in one locked step"
        (big / "pkg0/module_0.py").write_text("changed\n")
        base = await repository.snapshot()
        holds_before = len(lock.holds)
        assert await pool.take(tmp_path / "agent", "forkyard/1-agent", base)
        assert len(lock.holds) - holds_before == 1, "taking: the branch and the move, at once"
    assert max(lock.holds) < filled / 4, (lock.holds, filled)
    assert (tmp_path / "agent/pkg0/module_0.py").read_text() == "changed\n"


async def test_make_worktree_says_how_it_made_the_worktree(
    repository: Repository, repo: Path, tmp_path: Path
) -> None:
    head = await repository.resolve("HEAD")
    settings = WorktreeSettings(pool_size=1)
    async with running_pool(repository, tmp_path / "worktrees", settings) as pool:
        await pool.wait_ready(1)
        pooled = await pool.make_worktree(tmp_path / "a", branch="forkyard/a", commit=head)
        sparse = await pool.make_worktree(
            tmp_path / "b", branch="forkyard/b", commit=head, sparse_paths=["docs/deep"]
        )
    assert re.fullmatch(r"prepared worktree in \d+ ms \(pooled\)", pooled)
    assert re.fullmatch(r"prepared worktree in \d+ ms \(fresh, sparse: docs/deep\)", sparse)
    assert sorted(str(p.relative_to(tmp_path / "b")) for p in (tmp_path / "b").rglob("*")) == [
        ".git", ".gitignore", "README.md", "docs", "docs/deep", "docs/deep/er",
        "docs/deep/er/notes.md", "link-to-app",
    ]  # fmt: skip
    # Outside the cone means "not checked out", never "deleted".
    assert git(tmp_path / "b", "status", "--porcelain", "--untracked-files=all") == ""
