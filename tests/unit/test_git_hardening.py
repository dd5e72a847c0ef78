"""The server's git on an agent's worktree, attacked as a hostile agent would: the tests
tamper with worktrees Forkyard made (its `.git` replaced, redirected, linked; filter,
diff and fsmonitor commands planted in config and `.gitattributes`; nested repositories)
on the host, with secrets in the server's environment, then let the server diff, commit
and remove them. Every planted command would write a marker file: none may appear, no
secret may reach a file, and the user's branch, HEAD and index must not move."""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from forkyard.settings import WorktreeSettings
from forkyard.workspace.diff import diff_worktree
from forkyard.workspace.gc import disk_usage
from forkyard.workspace.git import Repository, WorktreeTampered, WorktreeUnknown
from forkyard.workspace.hardened import describe_tampering, find_admin_dir
from forkyard.workspace.pool import WorktreePool
from tests.helpers import GIT_ENV, git, make_repo

SECRETS = {
    "OPENAI_API_KEY": "sk-forkyard-test-openai-0123456789",
    "AWS_SECRET_ACCESS_KEY": "forkyard-test-aws-secret-9876543210",
}


@dataclass
class Scene:
    repo: Path
    repository: Repository
    worktree: Path
    branch: str
    markers: Path
    tmp: Path

    def marker(self, name: str) -> str:
        """A shell command that leaves `<markers>/<name>` holding its environment."""
        target = shlex.quote(str(self.markers / name))
        return f"env > {target}; cat"

    def user_state(self) -> dict[str, object]:
        index = self.repo / ".git" / "index"
        return {
            "main": git(self.repo, "rev-parse", "refs/heads/main"),
            "head": (self.repo / ".git" / "HEAD").read_bytes(),
            "index": hashlib.sha256(index.read_bytes()).hexdigest(),
            "config": (self.repo / ".git" / "config").read_bytes(),
            "hooks": sorted(p.name for p in (self.repo / ".git" / "hooks").iterdir()),
        }

    def assert_nothing_ran(self) -> None:
        assert sorted(p.name for p in self.markers.iterdir()) == []
        leaked = [
            str(path)
            for path in self.tmp.rglob("*")
            if path.is_file()
            and not path.is_symlink()
            and any(value.encode() in path.read_bytes() for value in SECRETS.values())
        ]
        assert leaked == []


@pytest.fixture
async def scene(tmp_path: Path) -> Scene:
    repo = make_repo(tmp_path / "repo", {"README.md": "# sample\n", "src/app.py": "A = 1\n"})
    markers = tmp_path / "markers"
    markers.mkdir()
    repository = await Repository.discover(repo, env={**GIT_ENV, **SECRETS})
    worktree = tmp_path / "state" / "worktrees" / "1-task"
    head = await repository.resolve("HEAD")
    await repository.add_worktree(worktree, "forkyard/1-task", head)
    return Scene(repo, repository, worktree, "forkyard/1-task", markers, tmp_path)


def sh(cwd: Path, script: str) -> None:
    """What a hostile agent runs in its worktree (here, on the host)."""
    env = {**GIT_ENV, "GIT_CEILING_DIRECTORIES": str(cwd.parent)}
    subprocess.run(["sh", "-c", script], cwd=cwd, env=env, check=True, capture_output=True)


def plant_repository(scene: Scene, folder: Path) -> None:
    """A repository at `folder` whose config runs a marker at every hook point."""
    hooks = scene.tmp / "planted-hooks"
    hooks.mkdir(exist_ok=True)
    for name in ("pre-commit", "post-index-change", "reference-transaction", "post-checkout"):
        (hooks / name).write_text(f"#!/bin/sh\n{scene.marker('hook-' + name)}\n")
        (hooks / name).chmod(0o755)
    quoted = shlex.quote
    sh(
        folder,
        "git init -q . && "
        f"git config core.fsmonitor {quoted(scene.marker('fsmonitor'))} && "
        f"git config filter.x.clean {quoted(scene.marker('planted-clean'))} && "
        f"git config filter.x.process {quoted(scene.marker('planted-process'))} && "
        f"git config diff.x.textconv {quoted(scene.marker('planted-textconv'))} && "
        f"git config diff.external {quoted(scene.marker('planted-external'))} && "
        f"git config core.hooksPath {quoted(str(hooks))}",
    )


def replace_with_repository(scene: Scene) -> None:
    """The issue's attack: `rm .git && git init -q . && git config ...`."""
    (scene.worktree / ".git").unlink()
    plant_repository(scene, scene.worktree)


def point_at_user_repo(scene: Scene) -> None:
    (scene.worktree / ".git").write_text(f"gitdir: {scene.repo / '.git'}\n")


def point_at_planted_repo(scene: Scene) -> None:
    elsewhere = scene.tmp / "elsewhere"
    elsewhere.mkdir()
    plant_repository(scene, elsewhere)
    (scene.worktree / ".git").write_text(f"gitdir: {elsewhere / '.git'}\n")


def link_to_user_repo(scene: Scene) -> None:
    (scene.worktree / ".git").unlink()
    (scene.worktree / ".git").symlink_to(scene.repo / ".git")


def delete_git_file(scene: Scene) -> None:
    (scene.worktree / ".git").unlink()


TAMPERINGS: dict[str, tuple[Callable[[Scene], None], str]] = {
    "replaced by a planted repository": (replace_with_repository, "a directory now"),
    "gitdir of the user's repository": (point_at_user_repo, "it points at"),
    "gitdir of a planted repository": (point_at_planted_repo, "it points at"),
    "symlink to the user's .git": (link_to_user_repo, "symbolic link"),
    "deleted": (delete_git_file, "it was deleted"),
}


def agent_work(scene: Scene) -> None:
    """The agent's real work, with attributes that pick the planted drivers."""
    (scene.worktree / "src/app.py").write_text("A = 2\n")
    (scene.worktree / "notes.txt").write_text("new file\n")
    (scene.worktree / ".gitattributes").write_text("* filter=x diff=x merge=x\n")


def test_the_planted_commands_do_run_under_plain_git(scene: Scene) -> None:
    """The attack is real: git run the ordinary way in the tampered worktree runs the
    agent's fsmonitor and clean filter with the whole environment."""
    replace_with_repository(scene)
    agent_work(scene)
    env = {**GIT_ENV, **SECRETS}
    subprocess.run(["git", "add", "-A"], cwd=scene.worktree, env=env, check=True)
    ran = {p.name for p in scene.markers.iterdir()}
    assert {"fsmonitor", "planted-process"} <= ran
    assert SECRETS["OPENAI_API_KEY"] in (scene.markers / "fsmonitor").read_text()


@pytest.mark.parametrize("tampering", list(TAMPERINGS))
async def test_a_tampered_git_file_runs_nothing_and_leaves_the_user_repository_alone(
    scene: Scene, tampering: str
) -> None:
    tamper, reason = TAMPERINGS[tampering]
    before = scene.user_state()
    tip = git(scene.repo, "rev-parse", scene.branch).strip()
    agent_work(scene)
    tamper(scene)

    diff = await diff_worktree(scene.worktree, tip, scene.repo, repository=scene.repository)
    with pytest.raises(WorktreeTampered, match=reason) as raised:
        await scene.repository.commit_worktree(scene.worktree, "forkyard: agent #1: task")

    scene.assert_nothing_ran()
    assert scene.user_state() == before
    message = str(raised.value)
    assert "your repository was not touched" in message
    assert str(scene.worktree) in message
    # The work is reviewable: the diff is the files as they are, unfiltered, and the
    # same files are committed on the agent's branch, not through the tampered .git.
    assert sorted(f.path for f in diff.files) == [".gitattributes", "notes.txt", "src/app.py"]
    assert raised.value.commit == git(scene.repo, "rev-parse", scene.branch).strip()
    assert git(scene.repo, "show", f"{raised.value.commit}:src/app.py") == "A = 2\n"
    assert (scene.worktree / "notes.txt").read_text() == "new file\n"


async def test_in_tree_attributes_never_pick_the_users_own_drivers(scene: Scene) -> None:
    """Only `.gitattributes` is the agent's; the commands are in the user's config (and
    the user's hooks, which run for the user's own git, not for an agent's work)."""
    for key, name in (
        ("filter.x.clean", "user-clean"),
        ("filter.x.smudge", "user-smudge"),
        ("filter.x.process", "user-process"),
        ("filter.x.required", None),
        ("diff.x.textconv", "user-textconv"),
        ("diff.x.command", "user-diff-command"),
        ("merge.x.driver", "user-merge"),
        ("core.fsmonitor", "user-fsmonitor"),
    ):
        git(scene.repo, "config", key, "true" if name is None else scene.marker(name))
    hooks = scene.repo / ".git" / "hooks"
    for hook in ("post-index-change", "reference-transaction", "pre-commit"):
        (hooks / hook).write_text(f"#!/bin/sh\n{scene.marker('user-hook-' + hook)}\n")
        (hooks / hook).chmod(0o755)
    before = scene.user_state()
    agent_work(scene)
    tip = git(scene.repo, "rev-parse", scene.branch).strip()

    diff = await diff_worktree(scene.worktree, tip, scene.repo, repository=scene.repository)
    commit = await scene.repository.commit_worktree(scene.worktree, "forkyard: agent #1")

    scene.assert_nothing_ran()
    assert scene.user_state() == before
    [app] = [f for f in diff.files if f.path == "src/app.py"]
    assert app.hunks[0].text == "-A = 1\n+A = 2\n"
    assert commit is not None
    assert git(scene.repo, "show", f"{commit}:src/app.py") == "A = 2\n"


async def test_a_nested_repository_with_planted_config_runs_nothing(scene: Scene) -> None:
    nested = scene.worktree / "vendor" / "lib"
    nested.mkdir(parents=True)
    (nested / "code.c").write_text("int x;\n")
    sh(nested, "git init -q . && git add code.c && git commit -q -m nested")
    plant_repository(scene, nested)
    (nested / "code.c").write_text("int y;\n")  # dirty: `status` would look inside
    agent_work(scene)

    await diff_worktree(scene.worktree, "HEAD", scene.repo, repository=scene.repository)
    await scene.repository.commit_worktree(scene.worktree, "forkyard: agent #1")
    await scene.repository.remove_worktree(scene.worktree, scene.branch, "refs/forkyard/d/1")

    scene.assert_nothing_ran()


async def test_discarding_a_tampered_worktree_keeps_its_work_and_runs_nothing(
    scene: Scene,
) -> None:
    before = scene.user_state()
    agent_work(scene)
    replace_with_repository(scene)

    kept = await scene.repository.remove_worktree(
        scene.worktree, scene.branch, keep_ref="refs/forkyard/discarded/1"
    )

    scene.assert_nothing_ran()
    assert not scene.worktree.exists()
    assert git(scene.repo, "show", f"{kept}:notes.txt") == "new file\n"
    assert git(scene.repo, "worktree", "list", "--porcelain").count("worktree ") == 1
    after = scene.user_state()
    assert after == before


async def test_gc_measures_the_worktree_from_the_repositorys_records(scene: Scene) -> None:
    """A `.git` naming `/` must not make the disk-use walk cover the whole disk."""
    honest = await disk_usage(scene.worktree, scene.repository.common_dir)
    (scene.worktree / ".git").write_text("gitdir: /\n")
    assert await disk_usage(scene.worktree, scene.repository.common_dir) <= honest + 8192


async def test_the_hardened_environment_carries_no_secret(scene: Scene) -> None:
    git_for_agent = await scene.repository.worktree_git(scene.worktree)
    assert not set(SECRETS) & set(git_for_agent.env)
    assert not any(v in " ".join(git_for_agent.options) for v in SECRETS.values())
    assert git_for_agent.env["GIT_DIR"] == str(
        find_admin_dir(scene.repository.common_dir, scene.worktree)
    )
    assert git_for_agent.env["GIT_CONFIG_GLOBAL"] == os.devnull


async def test_commits_keep_the_users_identity(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    git(repo, "config", "user.name", "Ada Lovelace")
    git(repo, "config", "user.email", "ada@example.invalid")
    env = {k: v for k, v in GIT_ENV.items() if not k.startswith(("GIT_AUTHOR", "GIT_COMMITTER"))}
    repository = await Repository.discover(repo, env=env)
    worktree = tmp_path / "wt"
    await repository.add_worktree(worktree, "forkyard/1-x", await repository.resolve("HEAD"))
    (worktree / "new.txt").write_text("x\n")
    commit = await repository.commit_worktree(worktree, "forkyard: agent #1")
    assert commit is not None
    who = git(repo, "log", "-1", "--format=%an <%ae>|%cn <%ce>", commit).strip()
    assert who == "Ada Lovelace <ada@example.invalid>|Ada Lovelace <ada@example.invalid>"


async def test_a_folder_that_is_no_worktree_of_the_repository_is_refused(scene: Scene) -> None:
    stranger = make_repo(scene.tmp / "stranger")
    with pytest.raises(WorktreeUnknown, match="not a worktree of"):
        await scene.repository.commit_worktree(stranger, "must not land anywhere")
    assert git(stranger, "log", "--format=%s").strip() == "initial"


async def test_a_tampered_pooled_worktree_is_never_handed_out(scene: Scene) -> None:
    root = scene.tmp / "state" / "worktrees"
    settings = WorktreeSettings(pool_size=1)
    pool = WorktreePool(
        scene.repository, root / ".pool", root / ".trash", lambda: settings, settle_seconds=0
    )
    head = await scene.repository.resolve("HEAD")
    before = scene.user_state()
    async with anyio.create_task_group() as task_group:
        task_group.start_soon(pool.run)
        await pool.wait_ready(1)
        [pooled] = pool.ready
        (pooled.path / ".git").write_text(f"gitdir: {scene.repo / '.git'}\n")
        how = await pool.make_worktree(root / "2-next", branch="forkyard/2-next", commit=head)
        task_group.cancel_scope.cancel()
    assert "fresh" in how
    assert describe_tampering(root / "2-next", _admin(scene, root / "2-next")) is None
    assert git(root / "2-next", "rev-parse", "--abbrev-ref", "HEAD").strip() == "forkyard/2-next"
    scene.assert_nothing_ran()
    assert scene.user_state() == before


def _admin(scene: Scene, worktree: Path) -> Path:
    admin = find_admin_dir(scene.repository.common_dir, worktree)
    assert admin is not None
    return admin


def test_only_the_gitdir_file_git_wrote_counts_as_intact(scene: Scene) -> None:
    admin = _admin(scene, scene.worktree)
    git_file = scene.worktree / ".git"
    assert describe_tampering(scene.worktree, admin) is None
    # git writes relative paths when told to (worktree.useRelativePaths): still ours.
    git_file.write_text(f"gitdir: {os.path.relpath(admin.resolve(), scene.worktree.resolve())}\n")
    assert describe_tampering(scene.worktree, admin) is None
    for text, reason in (
        (f"gitdir: {admin}/../wt2\n", "points at"),
        ("gitdir: ../../repo/.git/worktrees/1-task\n", "points at"),
        (f"gitdir: {admin}\ngitdir: /elsewhere\n", "not a gitdir file"),
        ("ref: refs/heads/main\n", "not a gitdir file"),
    ):
        git_file.write_text(text)
        assert reason in (describe_tampering(scene.worktree, admin) or "")
    git_file.unlink()
    os.mkfifo(git_file)  # would block a reader that opened it
    assert "not a regular file" in (describe_tampering(scene.worktree, admin) or "")


async def test_a_head_redirected_to_the_users_branch_is_never_committed_through(
    scene: Scene,
) -> None:
    """Unsandboxed, an agent could write its worktree's records in the repository: a
    HEAD naming `main` must not make the server's commit move the user's branch."""
    before = scene.user_state()
    agent_work(scene)
    (_admin(scene, scene.worktree) / "HEAD").write_text("ref: refs/heads/main\n")

    with pytest.raises(WorktreeTampered, match="HEAD was changed to refs/heads/main"):
        await scene.repository.commit_worktree(scene.worktree, "forkyard: agent #1")

    assert scene.user_state() == before
    assert (scene.worktree / "notes.txt").read_text() == "new file\n"
