"""The setup step of a new worktree, on real repositories and real (sandboxed) commands:
the user's ignored files arrive copied or linked and never show up in the agent's diff,
the setup command's output is logged and its failure says why, and agents get ports of
their own."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from forkyard.settings import Settings, WorktreeSettings
from forkyard.tools.sandbox import probe_sandbox, sandbox_available
from forkyard.workspace.diff import diff_worktree
from forkyard.workspace.git import Repository
from forkyard.workspace.pool import add_worktree
from forkyard.workspace.setup import (
    SetupError,
    bring_ignored_files,
    parse_patterns,
    port_range,
    selected,
    set_up_worktree,
)
from tests.helpers import GIT_ENV, git, make_repo


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A user's checkout with the usual ignored things next to the tracked ones."""
    repo = make_repo(
        tmp_path / "repo",
        {
            ".gitignore": ".env\n*.local\nnode_modules/\n.venv/\n*.log\nsecret.txt\n",
            "config/app.toml": "name = 'app'\n",
            "src/app.py": "print('app')\n",
        },
    )
    (repo / ".env").write_text("API_URL=http://localhost\n")
    (repo / "config/app.local").write_text("debug = true\n")
    (repo / "config/other.local").write_text("other\n")
    (repo / "node_modules/left-pad").mkdir(parents=True)
    (repo / "node_modules/left-pad/index.js").write_text("module.exports = 1\n")
    (repo / ".venv/lib").mkdir(parents=True)
    (repo / ".venv/lib/site.pth").write_text("/somewhere\n")
    (repo / ".venv/lib/big.bin").write_text("not wanted\n")
    (repo / "build.log").write_text("not wanted either\n")
    (repo / "notes.txt").write_text("untracked, not ignored: never copied\n")
    return repo


@pytest.fixture
async def worktree(checkout: Path, tmp_path: Path) -> Path:
    repository = await Repository.discover(checkout, env=GIT_ENV)
    path = tmp_path / "worktrees" / "1-agent"
    head = await repository.resolve("HEAD")
    await add_worktree(
        repository, path, commit=head, branch="forkyard/1-agent", trash_dir=tmp_path / "trash"
    )
    return path


def worktree_status(worktree: Path) -> str:
    return git(worktree, "status", "--porcelain", "--untracked-files=all")


@pytest.mark.parametrize(
    ("patterns", "path", "is_folder", "expected"),
    [
        ([".env"], ".env", False, True),
        ([".env"], "services/api/.env", False, True),
        (["/.env"], "services/api/.env", False, False),
        (["config/*.local"], "config/app.local", False, True),
        (["config/*.local"], "config/deeper/app.local", False, False),
        (["config/**/*.local"], "config/deeper/app.local", False, True),
        (["node_modules/"], "node_modules", True, True),
        (["node_modules/"], "node_modules", False, False),
        (["node_modules"], "node_modules/left-pad/index.js", False, True),
        (["*.local", "!other.local"], "config/other.local", False, False),
        (["*.local", "!other.local", "other.*"], "config/other.local", False, True),
        (["# a comment", "", "secret.tx?"], "secret.txt", False, True),
        (["[ab].env"], "b.env", False, True),
    ],
)
def test_patterns_follow_gitignore_rules(
    patterns: list[str], path: str, is_folder: bool, expected: bool
) -> None:
    assert selected(parse_patterns(patterns), path, is_folder) is expected


async def test_ignored_files_are_copied_or_linked_and_stay_out_of_the_diff(
    checkout: Path, worktree: Path
) -> None:
    brought = await bring_ignored_files(
        checkout,
        worktree,
        copy=[".env", "config/*.local", "!other.local", ".venv/lib/*.pth", "notes.txt"],
        link=["node_modules"],
        env=GIT_ENV,
    )
    assert brought.copied == [".env", ".venv/lib/site.pth", "config/app.local"]
    assert brought.linked == ["node_modules"]
    assert (worktree / ".env").read_text() == "API_URL=http://localhost\n"
    assert not (worktree / ".env").is_symlink()
    assert (worktree / "config/app.local").read_text() == "debug = true\n"
    assert not (worktree / "config/other.local").exists()
    assert not (worktree / ".venv/lib/big.bin").exists()
    assert not (worktree / "build.log").exists()
    assert not (worktree / "notes.txt").exists(), "only ignored files are brought"
    linked = worktree / "node_modules/left-pad"
    assert linked.is_symlink() and linked.resolve() == (checkout / "node_modules/left-pad")
    assert (linked / "index.js").read_text() == "module.exports = 1\n"
    assert worktree_status(worktree) == ""
    diff = await diff_worktree(worktree, git(worktree, "rev-parse", "HEAD").strip(), checkout)
    assert diff.files == [] and diff.patch == ""


async def test_a_file_the_agents_base_does_not_ignore_is_not_brought(
    checkout: Path, worktree: Path
) -> None:
    # Ignored in the user's checkout only through an uncommitted .gitignore line.
    (checkout / ".gitignore").write_text((checkout / ".gitignore").read_text() + "draft.md\n")
    (checkout / "draft.md").write_text("a draft\n")
    brought = await bring_ignored_files(checkout, worktree, ["draft.md", ".env"], [], GIT_ENV)
    assert brought.copied == [".env"]
    assert brought.skipped == [("draft.md", "not ignored at the agent's base")]
    assert not (worktree / "draft.md").exists()
    assert worktree_status(worktree) == ""


async def test_setup_reads_worktreeinclude_runs_the_command_and_logs_it(
    checkout: Path, worktree: Path
) -> None:
    await require_sandbox()
    (checkout / ".worktreeinclude").write_text("# files for new worktrees\n.env\n")
    git(checkout, "add", ".worktreeinclude")
    git(checkout, "commit", "-q", "-m", "worktreeinclude")
    settings = Settings(
        worktree=WorktreeSettings(
            copy_files=["config/app.local"],
            setup=(
                "echo installing; cat .env; echo port $FORKYARD_PORT_BASE;"
                " cat node_modules/left-pad/index.js; echo token ${SECRET_TOKEN:-hidden}"
            ),
            setup_network=False,
            link=["node_modules/"],
        )
    )
    logs: list[tuple[str, str]] = []

    async def log(kind: str, text: str) -> None:
        logs.append((kind, text))

    await set_up_worktree(
        worktree,
        checkout=checkout,
        settings=settings,
        git_env=GIT_ENV,
        environ={"PATH": os.environ["PATH"], "SECRET_TOKEN": "never seen"},
        extra_env={"FORKYARD_PORT_BASE": "20040"},
        log=log,
    )
    lines = [text for kind, text in logs if kind == "setup"]
    assert "copied .env" in lines and "copied config/app.local" in lines
    assert "linked node_modules (read-only, the user's copy)" in lines
    command_output = lines[lines.index(f"$ {settings.worktree.setup}") + 1 :]
    assert command_output == [
        "installing",
        "API_URL=http://localhost",
        "port 20040",
        "module.exports = 1",
        "token hidden",
    ]


async def test_a_failing_setup_command_raises_with_its_reason(
    checkout: Path, worktree: Path
) -> None:
    await require_sandbox()
    settings = Settings(
        worktree=WorktreeSettings(setup="echo resolving; echo 'no such package: foo' >&2; exit 3")
    )
    logs: list[tuple[str, str]] = []

    async def log(kind: str, text: str) -> None:
        logs.append((kind, text))

    with pytest.raises(SetupError) as failure:
        await set_up_worktree(
            worktree,
            checkout=checkout,
            settings=settings,
            git_env=GIT_ENV,
            environ={"PATH": os.environ["PATH"]},
            extra_env={},
            log=log,
        )
    assert "exit 3" in str(failure.value) and "no such package: foo" in str(failure.value)
    assert ("setup", "resolving") in logs


def test_agents_get_disjoint_port_ranges_that_survive_a_restart() -> None:
    settings = WorktreeSettings(port_base=30_000, ports_per_agent=5)
    ranges = [port_range(settings, number, "repo-1234") for number in range(1, 200)]
    ports = [port for found in ranges for port in found.ports]
    assert len(ports) == len(set(ports)) == 199 * 5
    assert all(30_000 <= port <= 65_535 for port in ports)
    assert port_range(settings, 7, "repo-1234") == ranges[6]
    assert port_range(settings, 1, "other-repo-99") != ranges[0]
    environment = ranges[0].environment()
    first = ranges[0].first
    assert environment["FORKYARD_PORT_BASE"] == environment["FORKYARD_PORT"] == str(first)
    assert environment["FORKYARD_PORTS"].split() == [str(first + n) for n in range(5)]


async def require_sandbox() -> None:
    available, reason = sandbox_available()
    if not available and "not installed" in reason:
        pytest.skip(reason)
    status = await probe_sandbox()
    assert status.available, status.reason
