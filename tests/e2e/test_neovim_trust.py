"""Trust in the Neovim plugin, in a real headless Neovim with the real server:
`:checkhealth forkyard` names what an untrusted `.forkyard.toml` had ignored, and
`:Forkyard trust` lets it apply."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.test_neovim_plugin import APP, needs_nvim, run_scenario
from tests.helpers import git, make_repo

pytestmark = pytest.mark.timeout(90)


@needs_nvim
def test_checkhealth_shows_trust_and_forkyard_trust_applies_the_file(
    tmp_path: Path, server_env: dict[str, str]
) -> None:
    repo = make_repo(
        tmp_path / "repo",
        {"app.py": APP, ".forkyard.toml": '[worktree]\nsetup = "make deps"\n'},
    )
    result = run_scenario("trust", tmp_path, server_env, repo)

    before = "\n".join(result["before"])
    assert "WARNING not trusted: 1 keys of .forkyard.toml ignored (worktree.setup)" in before
    assert ":Forkyard trust, or `forkyard trust`" in before
    after = "\n".join(result["after"])
    assert "OK repository trusted: its .forkyard.toml applies in full" in after, after
    assert "not trusted" not in after
    notices = [n["message"] for n in result["notifications"]]
    assert sum("untrusted" in m for m in notices) == 1, notices
    assert all(len(m) <= 100 for m in notices), notices
    trust_file = Path(server_env["XDG_CONFIG_HOME"]) / "forkyard" / "trusted.json"
    assert str(repo.resolve()) in trust_file.read_text()
    assert git(repo, "status", "--porcelain") == "", "nothing written in the repository"
