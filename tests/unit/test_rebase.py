"""Rebasing an agent's worktree onto the person's checkout (`workspace/rebase.py`), on
real repositories: the new base holds the person's commits and uncommitted changes, the
agent's work lands on top, a clash leaves git's markers and names the file, and the old
tip stays in a ref."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from forkyard.workspace.diff import diff_worktree
from forkyard.workspace.git import Repository
from forkyard.workspace.rebase import rebase_worktree
from tests.helpers import GIT_ENV, git, make_repo

APP = "".join(f"line {i}\n" for i in range(1, 11))


@pytest.fixture
async def setup(tmp_path: Path) -> tuple[Repository, Path, str]:
    repo = make_repo(tmp_path / "repo", {"app.py": APP, "notes.txt": "notes\n"})
    repository = await Repository.discover(repo, env=GIT_ENV)
    base = await repository.snapshot("HEAD")
    worktree = tmp_path / "worktrees" / "1-work"
    await repository.add_worktree(worktree, "forkyard/1-work", base)
    return repository, worktree, base


def edit(path: Path, old: str, new: str) -> None:
    path.write_text(path.read_text().replace(old, new))


async def test_the_work_moves_onto_the_persons_commit_and_uncommitted_change(
    setup: tuple[Repository, Path, str],
) -> None:
    repository, worktree, base = setup
    repo = repository.root
    await anyio.Path(worktree / "app.py").write_text(APP.replace("line 8\n", "agent 8\n"))
    edit(repo / "app.py", "line 2\n", "person 2\n")
    git(repo, "commit", "-qam", "the person's commit")
    edit(repo / "notes.txt", "notes\n", "unsaved notes\n")  # uncommitted: in the new base

    outcome = await rebase_worktree(repository, worktree, base, number=1, message="rebased")
    assert outcome.conflicts == []
    assert outcome.kept_ref is not None and outcome.kept_ref.startswith("refs/forkyard/rebased/1-")
    assert (
        git(repo, "rev-parse", f"{outcome.base}^").strip() == git(repo, "rev-parse", "HEAD").strip()
    )
    text = (worktree / "app.py").read_text()
    assert "person 2\n" in text and "agent 8\n" in text
    assert (worktree / "notes.txt").read_text() == "unsaved notes\n"
    diff = await diff_worktree(worktree, outcome.base, repo, repository=repository)
    assert [f.path for f in diff.files] == ["app.py"]
    assert "-line 8\n+agent 8" in diff.patch
    assert "person 2" not in diff.patch and "notes" not in diff.patch, "only the agent's work"

    again = await rebase_worktree(repository, worktree, outcome.base, number=1, message="again")
    assert again.kept_ref is None and again.base == outcome.base, "already there: nothing moves"


async def test_a_clash_leaves_markers_and_keeps_the_old_tip(
    setup: tuple[Repository, Path, str],
) -> None:
    repository, worktree, base = setup
    repo = repository.root
    await anyio.Path(worktree / "app.py").write_text(APP.replace("line 5\n", "agent 5\n"))
    edit(repo / "app.py", "line 5\n", "person 5\n")
    git(repo, "commit", "-qam", "the person's commit")

    outcome = await rebase_worktree(repository, worktree, base, number=1, message="rebased")
    assert outcome.conflicts == ["app.py"]
    marked = (worktree / "app.py").read_text()
    assert "<<<<<<<" in marked and "person 5" in marked and "agent 5" in marked
    assert outcome.kept_ref is not None
    kept = git(repo, "show", f"{outcome.kept_ref}:app.py")
    assert kept == APP.replace("line 5\n", "agent 5\n"), "the work before the rebase is kept"
