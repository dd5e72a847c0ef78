"""The built-in agent's tools on real worktrees: each tool does its job, every way out of
the worktree is refused with nothing changed outside, roles and policies are enforced
whatever the model calls, and no result is ever larger than the configured budget."""

from __future__ import annotations

import json
import os
import shlex
import socket
import sys
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from forkyard.settings import BUILTIN_ROLES, AgentLimits, RoleConfig, Settings
from forkyard.tools.agent_tools import TOOL_NAMES, ToolBox, ToolResult
from forkyard.tools.sandbox import SandboxStatus
from forkyard.tools.search import ripgrep_path
from tests.helpers import git

MAX_CHARS = 5000
SECRET = "sk-test-agent-tools-secret"
PYTHON = shlex.quote(sys.executable)


@pytest.fixture
def worktree(repo: Path, tmp_path: Path) -> Path:
    """An agent's worktree of the sample repository, outside the user's checkout, with
    an untracked file and an ignored one."""
    path = tmp_path / "worktrees" / "1-agent"
    git(repo, "worktree", "add", "-q", "-b", "forkyard/1-agent", str(path))
    (path / "notes.txt").write_text("untracked notes: add numbers\n")
    (path / "debug.log").write_text("ignored: def add appears here too\n")
    return path


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory next to the worktree that no tool may touch."""
    directory = tmp_path / "outside"
    directory.mkdir()
    (directory / "secret.txt").write_text("outside secret\n")
    return directory


@pytest.fixture
def localhost_server() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.setblocking(False)
        yield server


def make_settings(**changes: Any) -> Settings:
    return Settings(agent=AgentLimits(max_tool_output_chars=MAX_CHARS), **changes)


def toolbox(
    root: Path,
    repo_root: Path | None = None,
    *,
    role: RoleConfig | None = None,
    writable: bool | None = None,
    settings: Settings | None = None,
    environ: Mapping[str, str] | None = None,
    ripgrep: str | None = "auto",
    **kwargs: Any,
) -> ToolBox:
    role = role or BUILTIN_ROLES["worker"]
    return ToolBox(
        root=root,
        repo_root=repo_root or root,
        writable=role.worktree if writable is None else writable,
        role=role,
        settings=settings or make_settings(),
        environ=environ if environ is not None else {**os.environ, "OPENAI_API_KEY": SECRET},
        ripgrep=ripgrep,
        **kwargs,
    )


async def call(box: ToolBox, name: str, **arguments: Any) -> ToolResult:
    return await box.call(name, json.dumps(arguments))


def tree_snapshot(root: Path) -> dict[str, bytes]:
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and ".git" not in path.relative_to(root).parts
    }


# --- reading -----------------------------------------------------------------------------


async def test_list_files_shows_tracked_and_untracked_files_but_not_ignored_ones(
    worktree: Path,
) -> None:
    result = await call(toolbox(worktree), "list_files")
    assert not result.is_error
    assert result.text.splitlines() == [
        ".gitignore",
        "README.md",
        "notes.txt",
        "src/app.py",
        "tests/test_app.py",
    ]


async def test_list_files_narrows_by_path_and_glob_and_forgets_deleted_files(
    worktree: Path,
) -> None:
    box = toolbox(worktree)
    assert (await call(box, "list_files", path="src")).text == "src/app.py"
    assert (await call(box, "list_files", glob="*.py")).text.splitlines() == [
        "src/app.py",
        "tests/test_app.py",
    ]
    (worktree / "README.md").unlink()
    assert "README.md" not in (await call(box, "list_files")).text
    missing = await call(box, "list_files", path="nope")
    assert missing.is_error
    assert "nope does not exist" in missing.text


async def test_list_files_outside_git_walks_and_honours_the_root_gitignore(
    tmp_path: Path,
) -> None:
    root = tmp_path / "plain"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "mod.py").write_text("x = 1\n")
    (root / "build").mkdir()
    (root / "build" / "out.txt").write_text("generated\n")
    (root / ".gitignore").write_text("build/\n")
    result = await call(toolbox(root), "list_files")
    assert result.text.splitlines() == [".gitignore", "pkg/mod.py"]


async def test_read_file_whole_and_by_line_range(worktree: Path) -> None:
    (worktree / "lines.txt").write_text("".join(f"line {n}\n" for n in range(1, 11)))
    box = toolbox(worktree)
    whole = await call(box, "read_file", path="src/app.py")
    assert whole.text == "def add(a, b):\n    return a + b\n"
    part = await call(box, "read_file", path="lines.txt", start_line=3, end_line=4)
    assert part.text.startswith("line 3\nline 4\n")
    assert "[lines 3-4 of 10]" in part.text
    beyond = await call(box, "read_file", path="lines.txt", start_line=11)
    assert beyond.is_error
    assert "beyond the end" in beyond.text


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("missing.py", "does not exist"),
        ("src", "is a directory"),
        ("blob.bin", "binary file"),
    ],
)
async def test_read_file_errors_say_what_is_wrong(worktree: Path, path: str, expected: str) -> None:
    (worktree / "blob.bin").write_bytes(b"\x89PNG\0\0\0binary")
    result = await call(toolbox(worktree), "read_file", path=path)
    assert result.is_error
    assert expected in result.text


async def test_reading_a_ten_megabyte_file_is_truncated_with_a_marker(worktree: Path) -> None:
    (worktree / "huge.txt").write_text(("x" * 99 + "\n") * 100_000)
    result = await call(toolbox(worktree), "read_file", path="huge.txt")
    assert not result.is_error
    assert len(result.text) <= MAX_CHARS
    assert "truncated" in result.text
    assert "of 100000 lines" in result.text
    assert "start_line=" in result.text


SEARCHERS = [
    pytest.param(
        ripgrep_path(),
        id="ripgrep",
        marks=pytest.mark.skipif(ripgrep_path() is None, reason="rg not installed"),
    ),
    pytest.param(None, id="python"),
]


@pytest.mark.parametrize("ripgrep", SEARCHERS)
async def test_search_finds_matches_but_not_in_ignored_files(
    worktree: Path, ripgrep: str | None
) -> None:
    box = toolbox(worktree, ripgrep=ripgrep)
    result = await call(box, "search", pattern=r"def \w+\(")
    assert not result.is_error
    assert result.text.splitlines() == [
        "src/app.py:1:def add(a, b):",
        "tests/test_app.py:4:def test_add():",
    ]
    narrowed = await call(box, "search", pattern="add", glob="*.txt")
    assert narrowed.text == "notes.txt:1:untracked notes: add numbers"
    in_dir = await call(box, "search", pattern="add", path="src")
    assert in_dir.text.splitlines() == ["src/app.py:1:def add(a, b):"]
    none = await call(box, "search", pattern="no such text anywhere")
    assert not none.is_error
    assert "no matches" in none.text
    invalid = await call(box, "search", pattern="(unclosed")
    assert invalid.is_error


@pytest.mark.parametrize("ripgrep", SEARCHERS)
async def test_search_output_is_bounded(worktree: Path, ripgrep: str | None) -> None:
    for index in range(40):
        (worktree / f"gen{index}.txt").write_text("needle line\n" * 100)
    result = await call(toolbox(worktree, ripgrep=ripgrep), "search", pattern="needle")
    assert len(result.text) <= MAX_CHARS
    assert "more matches not shown" in result.text


# --- writing -----------------------------------------------------------------------------


async def test_write_file_creates_directories_and_overwrites(worktree: Path) -> None:
    box = toolbox(worktree)
    created = await call(box, "write_file", path="pkg/new.py", content="x = 1\n")
    assert created.text == "created pkg/new.py (1 lines)"
    assert (worktree / "pkg" / "new.py").read_text() == "x = 1\n"
    again = await call(box, "write_file", path="pkg/new.py", content="x = 2\r\ny = 3\r\n")
    assert again.text.startswith("overwrote pkg/new.py")
    assert (worktree / "pkg" / "new.py").read_bytes() == b"x = 2\r\ny = 3\r\n"


async def test_edit_file_replaces_exactly_one_occurrence(worktree: Path) -> None:
    result = await call(
        toolbox(worktree),
        "edit_file",
        path="src/app.py",
        old_text="    return a + b\n",
        new_text="    return int(a) + int(b)\n",
    )
    assert not result.is_error, result.text
    assert (worktree / "src/app.py").read_text() == "def add(a, b):\n    return int(a) + int(b)\n"


@pytest.mark.parametrize(("occurrences", "expected"), [(0, "not found"), (3, "occurs 3 times")])
async def test_edit_file_refuses_zero_or_several_occurrences(
    worktree: Path, occurrences: int, expected: str
) -> None:
    target = worktree / "counts.txt"
    target.write_text("start\n" + "value = 1\n" * occurrences + "end\n")
    before = target.read_bytes()
    result = await call(
        toolbox(worktree), "edit_file", path="counts.txt", old_text="value = 1", new_text="v = 2"
    )
    assert result.is_error
    assert expected in result.text
    assert target.read_bytes() == before


async def test_edit_file_keeps_line_endings(worktree: Path) -> None:
    target = worktree / "crlf.txt"
    target.write_bytes(b"one\r\ntwo\r\nthree\r\n")
    result = await call(
        toolbox(worktree), "edit_file", path="crlf.txt", old_text="two", new_text="2"
    )
    assert not result.is_error
    assert target.read_bytes() == b"one\r\n2\r\nthree\r\n"


async def test_delete_file(worktree: Path) -> None:
    box = toolbox(worktree)
    assert (await call(box, "delete_file", path="notes.txt")).text == "deleted notes.txt"
    assert not (worktree / "notes.txt").exists()
    missing = await call(box, "delete_file", path="notes.txt")
    assert missing.is_error
    assert "does not exist" in missing.text
    directory = await call(box, "delete_file", path="src")
    assert directory.is_error
    assert (worktree / "src" / "app.py").exists()


# --- escapes -----------------------------------------------------------------------------

ESCAPING_CALLS = [
    ("read_file", {"path": "../outside/secret.txt"}),
    ("read_file", {"path": "/etc/passwd"}),
    ("read_file", {"path": "escape/secret.txt"}),
    ("read_file", {"path": "secret_link"}),
    ("list_files", {"path": "../outside"}),
    ("list_files", {"path": "escape"}),
    ("search", {"pattern": "secret", "path": "escape"}),
    ("search", {"pattern": "root", "path": "/etc"}),
    ("write_file", {"path": "../outside/secret.txt", "content": "overwritten"}),
    ("write_file", {"path": "/tmp/forkyard-escape.txt", "content": "x"}),
    ("write_file", {"path": "escape/secret.txt", "content": "overwritten"}),
    ("write_file", {"path": "secret_link", "content": "overwritten"}),
    ("write_file", {"path": "src/../../outside/new.txt", "content": "x"}),
    ("write_file", {"path": ".git", "content": "gitdir: /elsewhere\n"}),
    ("write_file", {"path": ".git/config", "content": "[core]\n"}),
    ("edit_file", {"path": "escape/secret.txt", "old_text": "outside", "new_text": "x"}),
    ("edit_file", {"path": ".git", "old_text": "gitdir", "new_text": "x"}),
    ("delete_file", {"path": "../outside/secret.txt"}),
    ("delete_file", {"path": "escape/secret.txt"}),
    ("delete_file", {"path": ".git"}),
]


@pytest.mark.parametrize(
    ("tool", "arguments"),
    ESCAPING_CALLS,
    ids=[f"{t}:{next(iter(a.values()))}" for t, a in ESCAPING_CALLS],
)
async def test_every_way_out_of_the_worktree_is_refused(
    worktree: Path, outside: Path, repo: Path, tool: str, arguments: dict[str, str]
) -> None:
    (worktree / "escape").symlink_to(outside)
    (worktree / "secret_link").symlink_to(outside / "secret.txt")
    before_outside = tree_snapshot(outside)
    before_git = (worktree / ".git").read_bytes()
    before_config = (repo / ".git" / "config").read_bytes()
    result = await call(toolbox(worktree, repo), tool, **arguments)
    assert result.is_error, result.text
    assert "outside secret" not in result.text
    assert "root:" not in result.text
    assert any(
        reason in result.text
        for reason in ("outside the worktree", "absolute paths are refused", "(.git)")
    ), result.text
    assert tree_snapshot(outside) == before_outside
    assert (worktree / ".git").read_bytes() == before_git
    assert (repo / ".git" / "config").read_bytes() == before_config
    assert not os.path.lexists("/tmp/forkyard-escape.txt")


async def test_paths_that_stay_inside_are_fine(worktree: Path) -> None:
    box = toolbox(worktree)
    result = await call(box, "read_file", path="tests/../src/app.py")
    assert result.text.startswith("def add")
    (worktree / "inner_link").symlink_to(worktree / "src")
    assert (await call(box, "list_files", path="inner_link")).is_error is False


async def test_deleting_a_symlink_removes_the_link_not_its_target(worktree: Path) -> None:
    (worktree / "inner").symlink_to(worktree / "notes.txt")
    result = await call(toolbox(worktree), "delete_file", path="inner")
    assert not result.is_error
    assert (worktree / "notes.txt").exists()
    assert not (worktree / "inner").is_symlink()


# --- roles and arguments -------------------------------------------------------------------


async def test_explorer_is_offered_only_reading_tools_and_refused_the_others(
    repo: Path,
) -> None:
    # Even a configured role that lists writing tools cannot write without a worktree.
    sneaky = RoleConfig(tools=list(TOOL_NAMES), worktree=False)
    for role in (BUILTIN_ROLES["explorer"], sneaky):
        box = toolbox(repo, role=role)
        assert [spec.name for spec in box.specs()] == [
            "list_files",
            "read_file",
            "search",
            "finish",
        ]
        before = tree_snapshot(repo)
        for tool, arguments in [
            ("write_file", {"path": "README.md", "content": "changed"}),
            ("edit_file", {"path": "README.md", "old_text": "sample", "new_text": "x"}),
            ("delete_file", {"path": "README.md"}),
            ("run_command", {"command": "touch created-by-explorer"}),
        ]:
            result = await call(box, tool, **arguments)
            assert result.is_error
            assert "not allowed for this agent's role" in result.text
            assert "allowed tools: list_files, read_file, search, finish" in result.text
        assert tree_snapshot(repo) == before
        assert git(repo, "status", "--porcelain") == ""


async def test_a_tool_the_role_lacks_is_refused_by_name(worktree: Path) -> None:
    box = toolbox(worktree, role=RoleConfig(tools=["read_file"]))
    assert [spec.name for spec in box.specs()] == ["read_file", "finish"]
    result = await call(box, "search", pattern="add")
    assert result.is_error
    assert "allowed tools: read_file, finish" in result.text


async def test_a_policy_that_denies_a_tool_hides_and_refuses_it(worktree: Path) -> None:
    box = toolbox(worktree, role=RoleConfig(policy={"run_command": "deny"}))
    assert "run_command" not in [spec.name for spec in box.specs()]
    result = await call(box, "run_command", command="touch denied")
    assert result.is_error
    assert "policy denies" in result.text
    assert not (worktree / "denied").exists()


@pytest.mark.parametrize(
    ("name", "arguments", "expected"),
    [
        ("read_file", "{not json", "not valid JSON"),
        ("read_file", "[1, 2]", "must be a JSON object"),
        ("read_file", "{}", "path: required"),
        ("read_file", '{"path": 3}', "path: Input should be a valid string"),
        ("read_file", '{"path": "x", "start_line": 0}', "start_line"),
        ("read_file", '{"file_path": "src/app.py"}', "file_path: unknown argument"),
        ("edit_file", '{"path": "src/app.py", "old_text": "a"}', "new_text: required"),
        ("run_command", '{"command": ""}', "command"),
        ("finish", "{}", "summary: required"),
        ("rm_rf", "{}", "unknown tool 'rm_rf'"),
    ],
)
async def test_bad_calls_get_an_error_the_model_can_act_on(
    worktree: Path, name: str, arguments: str, expected: str
) -> None:
    result = await toolbox(worktree).call(name, arguments)
    assert result.is_error
    assert expected in result.text


async def test_finish_carries_the_summary(worktree: Path) -> None:
    result = await call(toolbox(worktree), "finish", summary="Done: added types.")
    assert result.finish_summary == "Done: added types."


# --- run_command ---------------------------------------------------------------------------


@pytest.mark.usefixtures("working_bwrap")
async def test_run_command_runs_in_the_worktree_and_reports_status(
    worktree: Path, repo: Path
) -> None:
    box = toolbox(worktree, repo)
    ok = await call(box, "run_command", command="pwd; echo made > made.txt; git status --short")
    assert not ok.is_error, ok.text
    assert str(worktree) in ok.text
    assert "?? made.txt" in ok.text
    assert ok.text.endswith("[exit status 0]")
    assert (worktree / "made.txt").read_text() == "made\n"
    failing = await call(box, "run_command", command="echo broken >&2; exit 3")
    assert failing.is_error
    assert "broken" in failing.text
    assert "[exit status 3]" in failing.text


@pytest.mark.usefixtures("working_bwrap")
async def test_run_command_cannot_write_the_checkout_or_home(worktree: Path, repo: Path) -> None:
    before = tree_snapshot(repo)
    home_file = Path.home() / f"forkyard-escape-{uuid.uuid4().hex}"
    command = (
        f"echo changed > {repo}/README.md; touch {repo}/new-in-checkout; "
        f"touch {home_file}; echo x >> {repo}/.git/config"
    )
    try:
        await call(toolbox(worktree, repo), "run_command", command=command)
        assert not home_file.exists()
    finally:
        home_file.unlink(missing_ok=True)
    assert tree_snapshot(repo) == before
    assert git(repo, "status", "--porcelain") == ""
    assert "x" not in (repo / ".git" / "config").read_text().splitlines()


@pytest.mark.usefixtures("working_bwrap")
async def test_run_command_has_no_network_not_even_localhost(
    worktree: Path, localhost_server: socket.socket
) -> None:
    port = localhost_server.getsockname()[1]
    script = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)"
    result = await call(
        toolbox(worktree), "run_command", command=f"{PYTHON} -c {shlex.quote(script)}"
    )
    assert result.is_error
    assert "[exit status 1]" in result.text
    with pytest.raises(BlockingIOError):
        localhost_server.accept()


@pytest.mark.usefixtures("working_bwrap")
async def test_run_command_never_sees_the_servers_secrets(worktree: Path) -> None:
    result = await call(toolbox(worktree), "run_command", command="echo key=$OPENAI_API_KEY; env")
    assert not result.is_error
    assert "key=\n" in result.text
    assert SECRET not in result.text


@pytest.mark.usefixtures("working_bwrap")
async def test_run_command_output_of_ten_megabytes_is_truncated(worktree: Path) -> None:
    command = "head -c 10000000 /dev/zero | tr '\\0' 'x'; echo; echo the-last-line"
    result = await call(toolbox(worktree), "run_command", command=command)
    assert len(result.text) <= MAX_CHARS
    assert "truncated" in result.text
    assert "the-last-line" in result.text
    assert result.text.endswith("[exit status 0]")


@pytest.mark.usefixtures("working_bwrap")
async def test_run_command_times_out(worktree: Path) -> None:
    result = await call(toolbox(worktree), "run_command", command="sleep 30", timeout_seconds=0.5)
    assert result.is_error
    assert "timed out after 0.5 s" in result.text


async def test_without_a_sandbox_run_command_is_refused_unless_allowed(worktree: Path) -> None:
    async def no_bwrap() -> SandboxStatus:
        return SandboxStatus(False, "bwrap not installed: apt-get install bubblewrap")

    refused = await call(
        toolbox(worktree, sandbox_probe=no_bwrap), "run_command", command="touch ran"
    )
    assert refused.is_error
    assert "sandbox is unavailable" in refused.text
    assert not (worktree / "ran").exists()
    allowed = toolbox(
        worktree, sandbox_probe=no_bwrap, settings=make_settings(allow_unsandboxed_commands=True)
    )
    result = await call(allowed, "run_command", command="touch ran; echo key=$OPENAI_API_KEY")
    assert not result.is_error
    assert "unsandboxed" in result.text
    assert SECRET not in result.text
    assert (worktree / "ran").exists()
