"""The user's checkout and the agents' worktrees, on real git repositories: snapshots
capture exactly what the user sees without touching anything of theirs, worktrees start
from them, and removing a worktree never loses work that is not kept in a ref."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import anyio
import pytest

from forkyard.workspace.git import (
    SNAPSHOT_REF_PREFIX,
    GitError,
    Repository,
    WorktreeTampered,
    run_git,
    slugify,
)
from tests.helpers import GIT_ENV, git, make_repo


@pytest.fixture
async def repository(repo: Path) -> Repository:
    return await Repository.discover(repo, env=GIT_ENV)


def read_only_status(repo: Path) -> str:
    """`git status` that does not refresh the index, so looking changes nothing."""
    return subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all", "--ignored"],
        cwd=repo,
        env={**GIT_ENV, "GIT_OPTIONAL_LOCKS": "0"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def user_state(repo: Path) -> dict[str, object]:
    """Everything of the user's that Forkyard must leave alone."""
    index = repo / ".git" / "index"
    return {
        "status": read_only_status(repo),
        "index_sha": hashlib.sha256(index.read_bytes()).hexdigest(),
        "index_mtime": index.stat().st_mtime_ns,
        "head": git(repo, "rev-parse", "HEAD"),
        "symbolic_head": git(repo, "symbolic-ref", "HEAD"),
        "stash": git(repo, "stash", "list"),
        "branches": git(repo, "for-each-ref", "refs/heads"),
        "files": {
            str(path.relative_to(repo)): path.read_bytes()
            for path in sorted(repo.rglob("*"))
            if path.is_file() and ".git" not in path.relative_to(repo).parts
        },
    }


def real_path(path: Path) -> Path:
    """`path` with symlinks resolved, as git reports it."""
    return path.resolve()


def make_dirty(repo: Path) -> None:
    """Staged, unstaged, deleted, untracked and ignored changes all at once."""
    (repo / "src/app.py").write_text("def add(a, b):\n    return b + a\n")
    (repo / "tests/test_app.py").write_text("# staged, then changed again\n")
    git(repo, "add", "tests/test_app.py")
    (repo / "tests/test_app.py").write_text("# staged, then changed again\n# more\n")
    (repo / "README.md").unlink()
    (repo / "notes").mkdir()
    (repo / "notes/todo.txt").write_text("untracked but not ignored\n")
    (repo / "debug.log").write_text("ignored by .gitignore\n")


def exists_in(repo: Path, commit: str, path: str) -> bool:
    done = subprocess.run(
        ["git", "cat-file", "-e", f"{commit}:{path}"], cwd=repo, env=GIT_ENV, check=False
    )
    return done.returncode == 0


async def test_discover_finds_the_root_from_a_subfolder_or_a_file(repo: Path) -> None:
    from_folder = await Repository.discover(repo / "src", env=GIT_ENV)
    from_file = await Repository.discover(repo / "src" / "app.py", env=GIT_ENV)
    assert from_folder.root == from_file.root == real_path(repo)


async def test_discover_keeps_the_path_the_editor_used(repo: Path, tmp_path: Path) -> None:
    (tmp_path / "link").symlink_to(repo)
    repository = await Repository.discover(tmp_path / "link" / "src", env=GIT_ENV)
    assert repository.root == tmp_path / "link"


@pytest.mark.parametrize("where", ["plain", "missing/deeper"])
async def test_discover_outside_a_repository_says_so(tmp_path: Path, where: str) -> None:
    (tmp_path / "plain").mkdir()
    env = {**GIT_ENV, "GIT_CEILING_DIRECTORIES": str(tmp_path)}
    with pytest.raises(GitError, match=f"not a git repository: .*{where}"):
        await Repository.discover(tmp_path / where, env=env)


async def test_resolve_gives_full_shas_and_names_an_unknown_ref(
    repo: Path, repository: Repository
) -> None:
    assert await repository.resolve("HEAD") == git(repo, "rev-parse", "HEAD").strip()
    assert await repository.resolve("main") == git(repo, "rev-parse", "main").strip()
    with pytest.raises(GitError, match="no-such-branch"):
        await repository.resolve("no-such-branch")
    with pytest.raises(GitError, match="--help"):
        await repository.resolve("--help")


async def test_a_failing_git_command_reports_the_command_and_its_stderr(repo: Path) -> None:
    with pytest.raises(GitError) as failure:
        await run_git("checkout", "no-such-branch", cwd=repo, env=GIT_ENV)
    assert "git checkout no-such-branch" in str(failure.value)
    assert "no-such-branch" in failure.value.stderr
    result = await run_git("checkout", "no-such-branch", cwd=repo, env=GIT_ENV, check=False)
    assert result.returncode != 0


async def test_snapshot_captures_the_dirty_checkout_without_touching_it(
    repo: Path, repository: Repository
) -> None:
    make_dirty(repo)
    git(repo, "stash", "list")  # a stash must not be created either
    before = user_state(repo)

    snapshot = await repository.snapshot()

    assert user_state(repo) == before
    head = git(repo, "rev-parse", "HEAD").strip()
    assert snapshot != head
    assert git(repo, "rev-parse", f"{snapshot}^").strip() == head
    assert git(repo, "show", f"{snapshot}:src/app.py") == "def add(a, b):\n    return b + a\n"
    assert git(repo, "show", f"{snapshot}:tests/test_app.py").endswith("# more\n")
    assert git(repo, "show", f"{snapshot}:notes/todo.txt") == "untracked but not ignored\n"
    assert not exists_in(repo, snapshot, "README.md")
    assert not exists_in(repo, snapshot, "debug.log")
    assert git(repo, "rev-parse", f"{SNAPSHOT_REF_PREFIX}{snapshot}").strip() == snapshot


async def test_snapshot_of_a_clean_checkout_is_head(repo: Path, repository: Repository) -> None:
    (repo / "build.log").write_text("only an ignored file is new\n")
    snapshot = await repository.snapshot()
    assert snapshot == git(repo, "rev-parse", "HEAD").strip()
    assert git(repo, "for-each-ref", "refs/forkyard") == ""


async def test_snapshot_works_without_any_git_identity(repo: Path, tmp_path: Path) -> None:
    no_identity = {
        k: v for k, v in GIT_ENV.items() if not k.startswith(("GIT_AUTHOR", "GIT_COMMITTER"))
    }
    no_identity |= {
        "HOME": str(tmp_path),
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "user.useConfigOnly",
        "GIT_CONFIG_VALUE_0": "true",
    }
    repository = await Repository.discover(repo, env=no_identity)
    (repo / "new.txt").write_text("new\n")
    snapshot = await repository.snapshot()
    assert git(repo, "log", "-1", "--format=%an <%ae>", snapshot).strip() == (
        "Forkyard <forkyard@localhost>"
    )


async def test_snapshot_on_another_base_keeps_that_base_as_parent(
    repo: Path, repository: Repository
) -> None:
    first = git(repo, "rev-parse", "HEAD").strip()
    (repo / "second.txt").write_text("2\n")
    git(repo, "add", "second.txt")
    git(repo, "commit", "-q", "-m", "second")
    (repo / "dirty.txt").write_text("dirty\n")
    snapshot = await repository.snapshot(first)
    assert git(repo, "rev-parse", f"{snapshot}^").strip() == first
    assert exists_in(repo, snapshot, "dirty.txt")


async def test_a_worktree_made_from_a_snapshot_sees_the_dirty_files(
    repo: Path, repository: Repository, tmp_path: Path
) -> None:
    make_dirty(repo)
    before = user_state(repo)
    snapshot = await repository.snapshot()
    worktree = tmp_path / "state dir" / "worktrees" / "1-ünïcode task"

    await repository.add_worktree(worktree, "forkyard/1-unicode-task", snapshot)

    assert (worktree / "src/app.py").read_text() == "def add(a, b):\n    return b + a\n"
    assert (worktree / "notes/todo.txt").read_text() == "untracked but not ignored\n"
    assert not (worktree / "README.md").exists()
    assert not (worktree / "debug.log").exists()
    assert git(worktree, "status", "--porcelain") == ""
    assert git(repo, "rev-parse", "forkyard/1-unicode-task").strip() == snapshot
    after = user_state(repo)
    new_branches = set(str(after.pop("branches")).splitlines()) - set(
        str(before.pop("branches")).splitlines()
    )
    assert new_branches == {f"{snapshot} commit\trefs/heads/forkyard/1-unicode-task"}
    assert after == before

    listed = await repository.list_worktrees()
    assert listed[0].path == real_path(repo)
    assert listed[0].branch == "main"
    ours = [info for info in listed if info.path == worktree]
    assert len(ours) == 1
    assert ours[0].branch == "forkyard/1-unicode-task"
    assert ours[0].head == snapshot


async def test_worktrees_can_be_added_concurrently(
    repo: Path, repository: Repository, tmp_path: Path
) -> None:
    head = await repository.resolve("HEAD")
    async with anyio.create_task_group() as task_group:
        for number in range(1, 7):
            task_group.start_soon(
                repository.add_worktree,
                tmp_path / "state" / f"{number}-task",
                f"forkyard/{number}-task",
                head,
            )
    branches = git(repo, "branch", "--list", "forkyard/*", "--format=%(refname:short)").split()
    assert sorted(branches) == [f"forkyard/{n}-task" for n in range(1, 7)]
    assert len(await repository.list_worktrees()) == 7


async def test_adding_a_worktree_on_a_taken_branch_fails_and_creates_nothing(
    repo: Path, repository: Repository, tmp_path: Path
) -> None:
    head = await repository.resolve("HEAD")
    await repository.add_worktree(tmp_path / "state" / "1-a", "forkyard/1-a", head)
    with pytest.raises(GitError, match="forkyard/1-a"):
        await repository.add_worktree(tmp_path / "state" / "2-a", "forkyard/1-a", head)
    assert not (tmp_path / "state" / "2-a").exists()
    assert (tmp_path / "state" / "1-a" / "README.md").exists()
    assert len(await repository.list_worktrees()) == 2


async def test_commit_worktree_commits_everything_onto_the_branch(
    repo: Path, repository: Repository, tmp_path: Path
) -> None:
    head = await repository.resolve("HEAD")
    worktree = tmp_path / "state" / "1-edit"
    await repository.add_worktree(worktree, "forkyard/1-edit", head)
    assert await repository.commit_worktree(worktree, "nothing yet") is None

    (worktree / "src/app.py").write_text("changed\n")
    (worktree / "new.txt").write_text("new\n")
    (worktree / "README.md").unlink()
    (worktree / "ignored.log").write_text("not committed\n")
    commit = await repository.commit_worktree(worktree, "forkyard: agent #1: edit")

    assert commit is not None
    assert git(repo, "rev-parse", "forkyard/1-edit").strip() == commit
    assert git(repo, "log", "-1", "--format=%s", commit).strip() == "forkyard: agent #1: edit"
    assert git(repo, "show", f"{commit}:new.txt") == "new\n"
    assert not exists_in(repo, commit, "README.md")
    assert not exists_in(repo, commit, "ignored.log")
    assert git(worktree, "status", "--porcelain") == ""
    assert git(repo, "rev-parse", "main").strip() == head


async def test_commit_worktree_never_uses_a_folder_that_lost_its_git_link(
    repo: Path, repository: Repository, tmp_path: Path
) -> None:
    outer = make_repo(tmp_path / "home", {"dotfile": "x\n"})
    worktree = outer / "state" / "1-lost"
    head = await repository.resolve("HEAD")
    await repository.add_worktree(worktree, "forkyard/1-lost", head)
    (worktree / ".git").unlink()  # an agent ran `rm .git`
    (worktree / "new.txt").write_text("new\n")
    outer_head = git(outer, "rev-parse", "HEAD")

    with pytest.raises(WorktreeTampered, match=r"its \.git was changed .* it was deleted") as e:
        await repository.commit_worktree(worktree, "must not land in the outer repository")
    assert git(outer, "rev-parse", "HEAD") == outer_head
    assert git(outer, "diff", "--cached", "--name-only") == ""
    # The agent's work went where it belongs, through the repository's own records.
    assert e.value.commit == git(repo, "rev-parse", "forkyard/1-lost").strip()
    assert git(repo, "show", f"{e.value.commit}:new.txt") == "new\n"


async def test_remove_worktree_keeps_uncommitted_work_in_a_ref(
    repo: Path, repository: Repository, tmp_path: Path
) -> None:
    head = await repository.resolve("HEAD")
    worktree = tmp_path / "state" / "3-work"
    await repository.add_worktree(worktree, "forkyard/3-work", head)
    (worktree / "src/app.py").write_text("uncommitted change\n")
    (worktree / "brand new.txt").write_text("untracked\n")
    (worktree / "README.md").unlink()

    kept = await repository.remove_worktree(
        worktree, "forkyard/3-work", keep_ref="refs/forkyard/discarded/3"
    )

    assert git(repo, "rev-parse", "refs/forkyard/discarded/3").strip() == kept
    assert git(repo, "show", "refs/forkyard/discarded/3:src/app.py") == "uncommitted change\n"
    assert git(repo, "show", "refs/forkyard/discarded/3:brand new.txt") == "untracked\n"
    assert not exists_in(repo, "refs/forkyard/discarded/3", "README.md")
    assert not worktree.exists()
    assert git(repo, "branch", "--list", "forkyard/3-work") == ""
    assert [info.path for info in await repository.list_worktrees()] == [real_path(repo)]


async def test_remove_worktree_after_its_folder_was_deleted_by_hand(
    repo: Path, repository: Repository, tmp_path: Path
) -> None:
    head = await repository.resolve("HEAD")
    worktree = tmp_path / "state" / "4-gone"
    await repository.add_worktree(worktree, "forkyard/4-gone", head)
    (worktree / "work.txt").write_text("committed before the folder went\n")
    commit = await repository.commit_worktree(worktree, "agent work")
    shutil.rmtree(worktree)

    kept = await repository.remove_worktree(
        worktree, "forkyard/4-gone", keep_ref="refs/forkyard/discarded/4"
    )

    assert kept == commit
    assert git(repo, "show", "refs/forkyard/discarded/4:work.txt").startswith("committed")
    assert git(repo, "branch", "--list", "forkyard/4-gone") == ""
    assert "4-gone" not in git(repo, "worktree", "list", "--porcelain")


async def test_remove_worktree_also_keeps_branch_work_the_worktree_left(
    repo: Path, repository: Repository, tmp_path: Path
) -> None:
    head = await repository.resolve("HEAD")
    worktree = tmp_path / "state" / "5-moved"
    await repository.add_worktree(worktree, "forkyard/5-moved", head)
    (worktree / "on-branch.txt").write_text("on the branch\n")
    on_branch = await repository.commit_worktree(worktree, "work on the branch")
    git(worktree, "checkout", "-q", "--detach", head)  # the agent left its branch

    await repository.remove_worktree(worktree, "forkyard/5-moved", "refs/forkyard/discarded/5")

    assert git(repo, "rev-parse", "refs/forkyard/discarded/5").strip() == head
    assert git(repo, "rev-parse", "refs/forkyard/discarded/5-branch").strip() == on_branch


@pytest.mark.parametrize(
    ("title", "slug"),
    [
        ("Add type hints", "add-type-hints"),
        ("  Fix: the *parser*!! (v2) ", "fix-the-parser-v2"),
        ("Ünïcödé café résumé", "unicode-cafe-resume"),
        ("日本語", "agent"),
        ("", "agent"),
        ("---", "agent"),
        (
            "refactor the authentication middleware completely",
            "refactor-the-authentication-middleware",
        ),
        ("a" * 60, "a" * 40),
    ],
)
def test_slugify_makes_short_safe_branch_names(title: str, slug: str) -> None:
    assert slugify(title) == slug
    assert len(slugify(title)) <= 40
