"""`Repository.list_worktrees` while worktrees come and go: git writes a worktree's
records one file at a time and lists them without a lock, so a list that meets a
half-written entry dies ("failed to read .git/worktrees/<id>/commondir"). It is called
from `forkyard/status`, gc and the pool while dispatches and the pool add worktrees;
these tests hold it to never failing for that."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from anyio import wait_all_tasks_blocked

from forkyard.workspace.git import GitError, Repository, WorktreeInfo
from forkyard.workspace.pool import add_worktree, discard_folder
from tests.helpers import GIT_ENV

#: Enough registrations that, listing without the lock, a run fails most of the time
#: (measured: about one list in three hundred meets a half-written entry).
ROUNDS = 40
ADDERS = 3


@pytest.fixture
async def repository(repo: Path) -> Repository:
    return await Repository.discover(repo, env=GIT_ENV)


async def test_listing_never_fails_while_worktrees_are_added_and_removed(
    repository: Repository, tmp_path: Path
) -> None:
    trash = tmp_path / "trash"
    lists = 0
    failures: list[str] = []
    adding = anyio.Event()

    async def add_and_remove(adder: int) -> None:
        for round_ in range(ROUNDS):
            path = tmp_path / "worktrees" / f"{adder}-{round_}"
            if round_ % 2:
                await repository.add_worktree(path, f"forkyard/{adder}-{round_}", "HEAD")
            else:
                await add_worktree(repository, path, commit="HEAD", branch=None, trash_dir=trash)
            if round_ % 3 == 2:  # removal writes (and prunes) records too
                await discard_folder(repository, path, trash)

    async def list_until_done() -> None:
        nonlocal lists
        while not adding.is_set():
            try:
                await repository.list_worktrees()
            except GitError as exc:
                failures.append(str(exc))
            lists += 1

    with anyio.fail_after(240):
        async with anyio.create_task_group() as listers:
            listers.start_soon(list_until_done)
            listers.start_soon(list_until_done)
            async with anyio.create_task_group() as adders:
                for adder in range(ADDERS):
                    adders.start_soon(add_and_remove, adder)
            adding.set()

    assert failures == []
    assert lists >= ADDERS * ROUNDS // 2, "the listers barely ran beside the adders"
    listed = await repository.list_worktrees()
    removed = sum(1 for round_ in range(ROUNDS) if round_ % 3 == 2)
    assert len(listed) == 1 + ADDERS * (ROUNDS - removed)


async def test_a_list_waits_for_a_registration_in_progress(
    repository: Repository, tmp_path: Path
) -> None:
    """Deterministically: a registration holding the write lock has left an entry
    half-written (an empty `commondir`, as git's own write leaves it for a moment); a
    list started then waits for the lock and sees the finished entry."""
    path = tmp_path / "worktrees" / "one"
    await add_worktree(repository, path, commit="HEAD", branch=None, trash_dir=tmp_path / "t")
    commondir = next((repository.common_dir / "worktrees").iterdir()) / "commondir"
    written = commondir.read_bytes()
    found: list[WorktreeInfo] = []

    async def list_them() -> None:
        found.extend(await repository.list_worktrees())

    with anyio.fail_after(30):
        async with anyio.create_task_group() as task_group, repository.write_lock:
            commondir.write_bytes(b"")
            task_group.start_soon(list_them)
            await wait_all_tasks_blocked()  # the list is waiting for the lock
            assert found == []
            commondir.write_bytes(written)
    assert [info.path.name for info in found[1:]] == ["one"]


async def test_a_broken_entry_that_stays_broken_fails_after_bounded_retries(
    repository: Repository, tmp_path: Path
) -> None:
    """An entry another process left half-written for good (a git killed mid-write) is
    retried a few times, then reported in git's words, not waited on forever."""
    await add_worktree(
        repository, tmp_path / "wt", commit="HEAD", branch=None, trash_dir=tmp_path / "t"
    )
    commondir = next((repository.common_dir / "worktrees").iterdir()) / "commondir"
    commondir.write_bytes(b"")
    with anyio.fail_after(30), pytest.raises(GitError, match=r"failed to read .*commondir"):
        await repository.list_worktrees()
