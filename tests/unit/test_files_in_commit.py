from __future__ import annotations

from pathlib import Path

import pytest

from forkyard.workspace.diff import file_in_commit, files_in_commit
from forkyard.workspace.git import GitError
from tests.helpers import git, make_repo


async def test_many_files_in_one_batch_match_one_by_one(tmp_path: Path) -> None:
    repo = make_repo(
        tmp_path / "r",
        {"a.txt": "alpha\n", "sub/c.py": "x = 'é 😀'\n", "empty": "", "b b.txt": "spaces\n"},
    )
    head = git(repo, "rev-parse", "HEAD").strip()
    paths = ["a.txt", "missing.txt", "sub", "sub/c.py", "empty", "b b.txt"]
    batch = await files_in_commit(repo, head, paths)
    assert batch == {p: await file_in_commit(repo, head, p) for p in paths}
    assert batch["sub/c.py"] == "x = 'é 😀'\n"
    assert batch["sub"] is None, "a folder is no file"
    assert batch["missing.txt"] is None
    assert batch["empty"] == ""


async def test_unknown_commit_is_a_clear_error(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    with pytest.raises(GitError, match="not a commit"):
        await files_in_commit(repo, "0" * 40, ["README.md"])
