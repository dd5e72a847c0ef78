"""An agent's changes as the reviewer gets them, from real worktrees: every kind of file
change is reported with the right status and paths, hunks are single changed regions
that rebuild the agent's text exactly, and their ids do not change between calls."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from forkyard.workspace.diff import (
    WorktreeDiff,
    diff_worktree,
    file_at,
    file_in_commit,
    parse_zero_context_diff,
    worktree_tree,
)
from forkyard.workspace.git import GitError, Repository
from forkyard_protocol.models import FileChange, Hunk
from tests.helpers import GIT_ENV, git, make_repo

BASE_FILES = {
    "README.md": "# sample\n",
    "src/app.py": "".join(f"line {n}\n" for n in range(1, 21)),
    "docs/old name.md": "".join(f"doc {n}\n" for n in range(1, 11)),
    "obsolete.txt": "remove me\n",
    "no newline.txt": "first\nlast without newline",
    "gets newline.txt": "ends abruptly",
    "crlf.txt": "one\r\ntwo\r\nthree\r\n",
    "looks like headers.txt": "-- a/fake\n++ b/fake\n@@ -1 +1 @@\nkeep\n",
    "ünïcödé dir/café.txt": "crème\nbrûlée\n",
    ".gitignore": "*.log\n",
}


@dataclass
class Agent:
    repository: Repository
    checkout: Path
    worktree: Path
    base: str

    async def diff(self) -> WorktreeDiff:
        return await diff_worktree(self.worktree, self.base, self.checkout, env=GIT_ENV)

    def write(self, path: str, data: str | bytes) -> None:
        target = self.worktree / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, bytes):
            target.write_bytes(data)
        else:
            target.write_bytes(data.encode())


@pytest.fixture
async def agent(tmp_path: Path) -> Agent:
    checkout = make_repo(tmp_path / "checkout", BASE_FILES)
    (checkout / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x01\x02")
    git(checkout, "add", "logo.png")
    git(checkout, "commit", "-q", "-m", "logo")
    repository = await Repository.discover(checkout, env=GIT_ENV)
    base = await repository.snapshot()
    worktree = tmp_path / "state" / "worktrees" / "1-task"
    await repository.add_worktree(worktree, "forkyard/1-task", base)
    return Agent(repository, checkout, worktree, base)


def git_apply_check(checkout: Path, patch: str) -> str:
    """What `git apply --check` says about `patch` in `checkout`; empty when it applies."""
    done = subprocess.run(
        ["git", "apply", "--check", "-"],
        cwd=checkout,
        env=GIT_ENV,
        input=patch.encode(),
        capture_output=True,
        check=False,
    )
    return done.stderr.decode() or ("" if done.returncode == 0 else f"exit {done.returncode}")


def index_fingerprint(index: Path) -> tuple[str, int]:
    return hashlib.sha256(index.read_bytes()).hexdigest(), index.stat().st_mtime_ns


def by_path(files: list[FileChange]) -> dict[str, FileChange]:
    return {change.path: change for change in files}


def split_keep_ends(text: str) -> list[str]:
    parts = text.split("\n")
    return [part + "\n" for part in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def apply_hunks(base: str, hunks: list[Hunk]) -> str:
    """Apply zero-context hunks to `base` the way a reviewer's editor would, last first,
    honouring "\\ No newline at end of file"."""
    lines = split_keep_ends(base)
    for hunk in sorted(hunks, key=lambda h: h.old_start, reverse=True):
        old: list[str] = []
        new: list[str] = []
        last: list[str] = old
        for raw in split_keep_ends(hunk.text):
            if raw.startswith("\\"):
                last[-1] = last[-1].removesuffix("\n")
                continue
            last = old if raw[0] == "-" else new
            last.append(raw[1:])
        start = hunk.old_start - 1 if hunk.old_lines else hunk.old_start
        assert lines[start : start + len(old)] == old, f"hunk {hunk.header} does not match"
        lines[start : start + len(old)] = new
    return "".join(lines)


async def test_every_kind_of_change_is_reported(agent: Agent) -> None:
    agent.write("src/app.py", BASE_FILES["src/app.py"].replace("line 5\n", "LINE FIVE\n"))
    agent.write("new module.py", "print('hello')\n")
    agent.write("empty.txt", "")
    (agent.worktree / "obsolete.txt").unlink()
    (agent.worktree / "docs/old name.md").rename(agent.worktree / "docs/new name.md")
    agent.write("logo.png", b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    agent.write("ünïcödé dir/café.txt", "crème\nbrûlée\nau café\n")
    agent.write("debug.log", "ignored\n")

    files = by_path((await agent.diff()).files)

    assert set(files) == {
        "src/app.py",
        "new module.py",
        "empty.txt",
        "obsolete.txt",
        "docs/new name.md",
        "logo.png",
        "ünïcödé dir/café.txt",
    }
    assert (files["src/app.py"].status, files["src/app.py"].additions) == ("modified", 1)
    assert files["src/app.py"].deletions == 1
    assert files["new module.py"].status == "added"
    assert files["empty.txt"].status == "added"
    assert files["empty.txt"].hunks == []
    assert files["obsolete.txt"].status == "deleted"
    assert files["obsolete.txt"].deletions == 1
    renamed = files["docs/new name.md"]
    assert (renamed.status, renamed.old_path, renamed.hunks) == ("renamed", "docs/old name.md", [])
    assert files["logo.png"].binary
    assert files["logo.png"].hunks == []
    assert files["ünïcödé dir/café.txt"].hunks[0].text == "+au café\n"
    checkout = agent.checkout.resolve()
    for path, change in files.items():
        assert change.uri == (checkout / path).as_uri()
    assert files["new module.py"].uri.endswith("/new%20module.py")


async def test_hunks_are_single_regions_that_rebuild_the_agents_text(agent: Agent) -> None:
    app = BASE_FILES["src/app.py"]
    app = app.replace("line 2\n", "line two\n").replace("line 9\n", "")
    app = app.replace("line 15\n", "line 15\ninserted a\ninserted b\n")
    agent.write("src/app.py", app)
    agent.write("no newline.txt", "first\nlast, still without newline")
    agent.write("gets newline.txt", "ends abruptly\n")
    agent.write("crlf.txt", "one\r\nTWO\r\nthree\r\n")
    agent.write("looks like headers.txt", "++ b/fake\n@@ -1 +1 @@\n--- a/new\nkeep\n")
    agent.write("README.md", "# sample\nmore")

    files = by_path((await agent.diff()).files)

    assert len(files["src/app.py"].hunks) == 3
    for path, change in files.items():
        for hunk in change.hunks:
            assert all(line[0] in "+-\\" for line in split_keep_ends(hunk.text)), hunk.text
            assert hunk.text.endswith("\n")
            assert hunk.header.startswith(f"@@ -{hunk.old_start}")
        base = await file_in_commit(agent.checkout, agent.base, path, env=GIT_ENV)
        assert base is not None
        assert apply_hunks(base, change.hunks) == await file_at(agent.worktree, path), path
    assert "\\ No newline at end of file\n" in files["no newline.txt"].hunks[0].text
    assert files["crlf.txt"].hunks[0].text == "-two\r\n+TWO\r\n"
    assert (
        files["looks like headers.txt"].additions,
        files["looks like headers.txt"].deletions,
    ) == (
        1,
        1,
    )


async def test_hunk_ids_are_stable_across_calls_and_distinct(agent: Agent) -> None:
    app = BASE_FILES["src/app.py"].replace("line 3\n", "three\n").replace("line 12\n", "twelve\n")
    agent.write("src/app.py", app)
    agent.write("README.md", "# sample, edited\n")

    first = await agent.diff()
    second = await agent.diff()

    ids = [hunk.id for change in first.files for hunk in change.hunks]
    assert ids == [hunk.id for change in second.files for hunk in change.hunks]
    assert len(ids) == len(set(ids)) == 3
    assert all(re.fullmatch(r"[0-9a-f]{12}", hunk_id) for hunk_id in ids)

    agent.write("README.md", "# sample, edited again\n")
    third = by_path((await agent.diff()).files)
    assert [h.id for h in third["src/app.py"].hunks] == [
        h.id for h in by_path(first.files)["src/app.py"].hunks
    ]
    assert third["README.md"].hunks[0].id != by_path(first.files)["README.md"].hunks[0].id


async def test_patch_is_a_full_index_diff_with_context_that_applies(agent: Agent) -> None:
    agent.write("src/app.py", BASE_FILES["src/app.py"].replace("line 10\n", "line ten\n"))
    agent.write("a new file.txt", "hello\n")

    diff = await agent.diff()

    assert " line 9\n-line 10\n+line ten\n line 11\n" in diff.patch
    assert re.search(r"^index [0-9a-f]{40}\.\.[0-9a-f]{40} 100644$", diff.patch, re.MULTILINE)
    assert git_apply_check(agent.checkout, diff.patch) == ""


async def test_binary_changes_are_marked_in_the_patch(agent: Agent) -> None:
    agent.write("logo.png", b"\x00changed\x00")
    agent.write("data dir/blob with space.bin", b"\x00\x01\x02")
    diff = await agent.diff()
    assert "Binary files a/logo.png and b/logo.png differ" in diff.patch
    files = by_path(diff.files)
    assert files["data dir/blob with space.bin"].status == "added"
    assert files["data dir/blob with space.bin"].binary


async def test_unusual_names_and_bytes_survive(agent: Agent) -> None:
    agent.write('tab\there "quoted".txt', "odd name\n")
    agent.write("latin1.txt", b"caf\xe9\n")
    os.chmod(agent.worktree / "README.md", 0o755)

    files = by_path((await agent.diff()).files)

    assert files['tab\there "quoted".txt'].hunks[0].text == "+odd name\n"
    assert files["latin1.txt"].hunks[0].text == "+caf\ufffd\n"
    assert (files["README.md"].status, files["README.md"].hunks) == ("modified", [])


async def test_quoted_non_ascii_paths_are_unquoted(agent: Agent) -> None:
    agent.write("ünïcödé dir/café.txt", "changed\n")
    tree = await worktree_tree(agent.repository, agent.worktree)
    quoted = git(agent.worktree, "-c", "core.quotepath=on", "diff", "-U0", agent.base, tree)
    assert '"a/\\303\\274n' in quoted
    [change] = parse_zero_context_diff(quoted, agent.checkout)
    assert change.path == "ünïcödé dir/café.txt"


async def test_an_untouched_worktree_has_an_empty_diff(agent: Agent) -> None:
    diff = await agent.diff()
    assert diff.files == []
    assert diff.patch == ""


async def test_worktree_tree_leaves_the_worktrees_own_index_alone(agent: Agent) -> None:
    agent.write("staged.txt", "staged\n")
    git(agent.worktree, "add", "staged.txt")
    agent.write("unstaged.txt", "unstaged\n")
    (agent.worktree / "README.md").unlink()
    agent.write("skip.log", "ignored\n")
    index = Path(git(agent.worktree, "rev-parse", "--git-path", "index").strip())
    before = index_fingerprint(index)

    tree = await worktree_tree(agent.repository, agent.worktree)

    assert index_fingerprint(index) == before
    names = git(agent.worktree, "ls-tree", "-r", "--name-only", tree).splitlines()
    assert "staged.txt" in names
    assert "unstaged.txt" in names
    assert "README.md" not in names
    assert "skip.log" not in names


async def test_file_at_reads_the_agents_version(agent: Agent, tmp_path: Path) -> None:
    agent.write("src/app.py", "new text\n")
    (agent.worktree / "README.md").unlink()
    agent.write("latin1.txt", b"caf\xe9\n")
    (tmp_path / "secret.txt").write_text("outside\n")
    (agent.worktree / "escape").symlink_to(tmp_path / "secret.txt")

    assert await file_at(agent.worktree, "src/app.py") == "new text\n"
    assert await file_at(agent.worktree, "README.md") is None
    assert await file_at(agent.worktree, "src") is None
    assert await file_at(agent.worktree, "ünïcödé dir/café.txt") == "crème\nbrûlée\n"
    assert await file_at(agent.worktree, "latin1.txt") == "caf\ufffd\n"
    for escaping in ["../secret.txt", "src/../../secret.txt", "/etc/passwd", "escape", ""]:
        with pytest.raises(ValueError, match="worktree"):
            await file_at(agent.worktree, escaping)


async def test_file_in_commit_reads_the_base(agent: Agent) -> None:
    text = await file_in_commit(agent.checkout, agent.base, "no newline.txt", env=GIT_ENV)
    assert text == "first\nlast without newline"
    assert await file_in_commit(agent.checkout, agent.base, "missing.txt", env=GIT_ENV) is None
    assert await file_in_commit(agent.checkout, agent.base, "src", env=GIT_ENV) is None
    with pytest.raises(GitError, match="no-such-commit"):
        await file_in_commit(agent.checkout, "no-such-commit", "README.md", env=GIT_ENV)
    with pytest.raises(ValueError, match="leaves the worktree"):
        await file_in_commit(agent.checkout, agent.base, "../README.md", env=GIT_ENV)


def test_parse_reads_hunk_bodies_by_their_counts() -> None:
    text = (
        "diff --git a/x y b/x y\n"
        "index 1111111..2222222 100644\n"
        "--- a/x y\t\n"
        "+++ b/x y\t\n"
        "@@ -1,2 +1 @@ context\n"
        "--- a/not-a-header\n"
        "-@@ -9 +9 @@\n"
        "+diff --git a/q b/q\n"
        "@@ -5,0 +5 @@\n"
        "+tail\n"
        "\\ No newline at end of file\n"
        "diff --git a/bin file b/bin file\n"
        "index 3333333..4444444 100644\n"
        "Binary files a/bin file and b/bin file differ\n"
    )
    first, second = parse_zero_context_diff(text, Path("/checkout"))
    assert first.path == "x y"
    assert [h.text for h in first.hunks] == [
        "--- a/not-a-header\n-@@ -9 +9 @@\n+diff --git a/q b/q\n",
        "+tail\n\\ No newline at end of file\n",
    ]
    assert [(h.old_start, h.old_lines, h.new_start, h.new_lines) for h in first.hunks] == [
        (1, 2, 1, 1),
        (5, 0, 5, 1),
    ]
    assert (first.additions, first.deletions) == (2, 2)
    assert (second.path, second.binary, second.uri) == (
        "bin file",
        True,
        "file:///checkout/bin%20file",
    )
