"""Worktree garbage collection on real repositories: worktrees of applied and discarded
agents go after the grace period with their work kept in refs, nothing waiting for
review goes without the user's word, vanished folders are pruned and reported, and
`forkyard gc` / `forkyard status` do the same from a shell."""

from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from forkyard.orchestrator.orchestrator import repository_key, worktrees_directory
from forkyard.store import Store
from forkyard.workspace.gc import GcReport, Removal, collect_garbage, disk_usage
from forkyard.workspace.git import Repository
from forkyard.workspace.pool import add_worktree
from forkyard_protocol.models import Agent, AgentState
from tests.helpers import GIT_ENV, git

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
DAY = 24 * 3600.0


@pytest.fixture
async def repository(repo: Path) -> Repository:
    return await Repository.discover(repo, env=GIT_ENV)


async def agent_with_worktree(
    repository: Repository,
    worktrees: Path,
    number: int,
    state: AgentState,
    *,
    days_ago: float = 10,
) -> Agent:
    """An agent whose worktree holds committed and uncommitted work, as a finished
    agent's does."""
    branch = f"forkyard/{number}-job"
    path = worktrees / f"{number}-job"
    base = await repository.resolve("HEAD")
    await add_worktree(repository, path, commit=base, branch=branch, trash_dir=worktrees / ".trash")
    (path / f"committed-{number}.txt").write_text("committed work\n")
    await repository.commit_worktree(path, "agent work")
    (path / f"uncommitted-{number}.txt").write_text("work in progress\n")
    stamp = (NOW - timedelta(days=days_ago)).isoformat()
    return Agent(
        id=f"agent-{number}",
        number=number,
        title="job",
        task="job",
        role="worker",
        backend="command",
        state=state,
        base_ref=base,
        branch=branch,
        worktree=str(path),
        created_at=stamp,
        updated_at=stamp,
    )


def tree_of(repo: Path, ref: str) -> set[str]:
    return set(git(repo, "ls-tree", "-r", "--name-only", ref).split())


async def gc(
    repository: Repository, agents: list[Agent], worktrees: Path, **options: object
) -> tuple[GcReport, list[Removal]]:
    removed: list[Removal] = []

    async def on_removed(agent: Agent, removal: Removal) -> None:
        removed.append(removal)

    report = await collect_garbage(
        repository,
        agents,
        worktrees_dir=worktrees,
        grace_seconds=3 * DAY,
        now=NOW,
        on_removed=on_removed,
        **options,  # type: ignore[arg-type]
    )
    return report, removed


async def test_reviewed_agents_go_after_the_grace_period_and_their_work_stays_in_refs(
    repository: Repository, repo: Path, tmp_path: Path
) -> None:
    worktrees = tmp_path / "worktrees"
    applied = await agent_with_worktree(repository, worktrees, 1, "applied")
    discarded = await agent_with_worktree(repository, worktrees, 2, "discarded")
    recent = await agent_with_worktree(repository, worktrees, 3, "applied", days_ago=1)
    waiting = [
        await agent_with_worktree(repository, worktrees, number, state)
        for number, state in ((4, "done"), (5, "failed"), (6, "interrupted"), (7, "cancelled"))
    ]
    size = await disk_usage(Path(applied.worktree or ""))
    assert size > 0

    report, removed = await gc(repository, [applied, discarded, recent, *waiting], worktrees)

    assert [r.agent.number for r in removed] == [1, 2]
    assert [r.keep_ref for r in removed] == ["refs/forkyard/applied/1", "refs/forkyard/discarded/2"]
    for removal in removed:
        number = removal.agent.number
        assert not Path(removal.worktree).exists()
        kept = tree_of(repo, removal.keep_ref)
        assert {f"committed-{number}.txt", f"uncommitted-{number}.txt"} <= kept
        assert git(repo, "branch", "--list", f"forkyard/{number}-job") == ""
    assert report.freed_bytes >= size
    assert {kept.agent.number for kept in report.kept} == {3, 4, 5, 6, 7}
    for agent in [recent, *waiting]:
        assert (Path(agent.worktree or "") / f"uncommitted-{agent.number}.txt").exists()
    listed = git(repo, "worktree", "list", "--porcelain")
    assert "1-job" not in listed and "4-job" in listed
    assert not any((worktrees / ".trash").iterdir())
    lines = "\n".join(report.lines())
    assert "removed agent #1 (applied)" in lines and "refs/forkyard/applied/1" in lines
    assert "kept agent #4 (done)" in lines and "forkyard gc --agent 4" in lines


async def test_a_dry_run_reports_the_same_and_changes_nothing(
    repository: Repository, repo: Path, tmp_path: Path
) -> None:
    worktrees = tmp_path / "worktrees"
    applied = await agent_with_worktree(repository, worktrees, 1, "applied")
    refs_before = git(repo, "for-each-ref")
    report, removed = await gc(repository, [applied], worktrees, dry_run=True)
    assert removed == []
    assert [r.agent.number for r in report.removed] == [1]
    assert report.removed[0].disk_bytes > 0
    assert (Path(applied.worktree or "") / "uncommitted-1.txt").exists()
    assert git(repo, "for-each-ref") == refs_before
    assert report.lines()[0].startswith("would remove agent #1 (applied)")


async def test_the_users_word_removes_a_done_agents_worktree_keeping_its_work(
    repository: Repository, repo: Path, tmp_path: Path
) -> None:
    worktrees = tmp_path / "worktrees"
    done = await agent_with_worktree(repository, worktrees, 4, "done", days_ago=0)
    _, removed = await gc(repository, [done], worktrees, forced={4})
    assert [r.keep_ref for r in removed] == ["refs/forkyard/removed/4"]
    assert "uncommitted-4.txt" in tree_of(repo, "refs/forkyard/removed/4")


async def test_a_worktree_whose_work_cannot_be_committed_is_not_removed(
    repository: Repository, tmp_path: Path
) -> None:
    worktrees = tmp_path / "worktrees"
    applied = await agent_with_worktree(repository, worktrees, 1, "applied")
    path = Path(applied.worktree or "")
    (path / ".git").unlink()  # an agent deleted its link to the repository
    report, removed = await gc(repository, [applied], worktrees)
    assert removed == [] and report.removed == []
    assert "agent #1" in report.errors[0] and "kept" in report.errors[0]
    assert (path / "uncommitted-1.txt").read_text() == "work in progress\n"


async def test_a_folder_deleted_by_hand_is_pruned_and_reported(
    repository: Repository, repo: Path, tmp_path: Path
) -> None:
    worktrees = tmp_path / "worktrees"
    done = await agent_with_worktree(repository, worktrees, 4, "done")
    head = await repository.resolve("HEAD")
    detached = worktrees / "by-hand"
    await add_worktree(repository, detached, commit=head, branch=None, trash_dir=tmp_path / "t")
    (detached / "x.txt").write_text("x\n")
    detached_head = await repository.commit_worktree(detached, "detached work")
    orphan = worktrees / "orphan"
    await add_worktree(repository, orphan, commit=head, branch="orphan", trash_dir=tmp_path / "t")
    for path in (Path(done.worktree or ""), detached):
        shutil.rmtree(path)
    (worktrees / ".trash" / "left-over").mkdir(parents=True)

    report, removed = await gc(repository, [done], worktrees)

    assert removed == []
    vanished = {Path(v.path).name: v for v in report.vanished}
    assert set(vanished) == {"4-job", "by-hand"}
    assert vanished["4-job"].agent_number == 4 and vanished["4-job"].branch == "forkyard/4-job"
    assert vanished["by-hand"].keep_ref == "refs/forkyard/pruned/by-hand"
    assert git(repo, "rev-parse", "refs/forkyard/pruned/by-hand").strip() == detached_head
    listed = git(repo, "worktree", "list", "--porcelain")
    assert "4-job" not in listed and "by-hand" not in listed and "orphan" in listed
    assert git(repo, "branch", "--list", "forkyard/4-job").strip(), "its branch keeps its work"
    assert report.orphans == [str(orphan)]
    assert orphan.exists()
    assert not (worktrees / ".trash" / "left-over").exists()
    lines = "\n".join(report.lines())
    assert "pruned agent #4's worktree" in lines and "its folder was deleted" in lines


async def test_forkyard_gc_and_status_from_the_shell(repo: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    home = tmp_path / "home"
    home.mkdir()
    repository = await Repository.discover(repo, env=GIT_ENV)
    key = repository_key(repository.root)
    worktrees = worktrees_directory(state, key)
    applied = await agent_with_worktree(repository, worktrees, 1, "applied", days_ago=30)
    done = await agent_with_worktree(repository, worktrees, 2, "done", days_ago=30)
    async with await Store.open(state) as store:
        for agent in (applied, done):
            await store.save_agent(key, agent)
    env = {**GIT_ENV, "FORKYARD_STATE_DIR": str(state), "HOME": str(home)}
    env["XDG_CONFIG_HOME"] = str(home / ".config")

    def forkyard(*args: str) -> str:
        completed = subprocess.run(
            [sys.executable, "-m", "forkyard.cli", *args, "--repo", str(repo)],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert completed.returncode == 0, completed.stderr
        return completed.stdout

    status = forkyard("status")
    assert "#1 applied" in status and "#2 done" in status and "total" in status
    dry = forkyard("gc", "--dry-run")
    assert "would remove agent #1 (applied)" in dry and "kept agent #2 (done)" in dry
    assert Path(applied.worktree or "").exists()
    real = forkyard("gc")
    assert "removed agent #1 (applied)" in real and "refs/forkyard/applied/1" in real
    assert not Path(applied.worktree or "").exists()
    async with await Store.open(state) as store:
        stored = await store.get_agent_by_number(key, 1)
        log = await store.read_log(applied.id)
    assert stored is not None and stored.worktree is None and stored.branch is None
    assert "removed by `forkyard gc`" in log[-1].text
    assert "#1" not in forkyard("status")


async def test_a_second_collector_with_stale_records_only_catches_up(
    repository: Repository, tmp_path: Path
) -> None:
    # `forkyard gc` from a shell while a server, which still has the old record, runs.
    worktrees = tmp_path / "worktrees"
    applied = await agent_with_worktree(repository, worktrees, 1, "applied")
    _, first = await gc(repository, [applied], worktrees)
    report, second = await gc(repository, [applied], worktrees)
    assert report.errors == []
    assert [r.kept for r in second] == [first[0].kept]
