"""Attacks on the agent tools' confinement with real files, real symlinks and real git,
with ripgrep and with the Python fallback: nothing outside the root is ever read or
written (a unique marker lives outside), a loop of links is a tool error, and the git
directory is out of reach whatever its case."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from forkyard.agents.llm import LlmBackend
from forkyard.settings import BUILTIN_ROLES, AgentLimits, RoleConfig, Settings
from forkyard.tools import file_tools, search
from forkyard.tools.agent_tools import ToolBox, ToolResult
from forkyard.tools.search import ripgrep_path
from tests.fakes.agent_context import FakeAgentContext, server_environ
from tests.fakes.model_server import FakeModelServer, Reply
from tests.helpers import git, make_repo

MARKER = f"forkyard-outside-marker-{uuid.uuid4().hex}"
#: Finds the marker without holding it (a "no matches for ..." answer quotes the pattern).
MARKER_PATTERN = "outside-marker-[0-9a-f]{32}"
#: Found in the root, so that a search that finds nothing proves nothing.
INSIDE = "forkyard-inside-marker"

RIPGREP = ripgrep_path()
ENGINES = [
    pytest.param(
        "ripgrep", marks=pytest.mark.skipif(RIPGREP is None, reason="ripgrep is not installed")
    ),
    pytest.param("python"),
]


def toolbox(root: Path, *, engine: str = "python", role: str = "worker", **kw: Any) -> ToolBox:
    chosen: RoleConfig = BUILTIN_ROLES[role]
    return ToolBox(
        root=root,
        repo_root=root,
        writable=chosen.worktree,
        role=chosen,
        settings=Settings(agent=AgentLimits(max_tool_output_chars=20_000)),
        environ={"PATH": os.defpath, "HOME": str(root)},
        ripgrep=kw.pop("ripgrep", RIPGREP if engine == "ripgrep" else None),
        **kw,
    )


async def call(box: ToolBox, name: str, **arguments: Any) -> ToolResult:
    return await box.call(name, json.dumps(arguments))


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """What no tool may read or write: a file and a folder with the marker."""
    directory = tmp_path / "outside"
    (directory / "deep").mkdir(parents=True)
    (directory / "secret.txt").write_text(f"{MARKER}\n")
    (directory / "deep" / "key.txt").write_text(f"{MARKER} deep\n")
    (directory / "app.py").write_text(f"{MARKER} app\n")
    return directory


@pytest.fixture
def checkout(tmp_path: Path, outside: Path) -> Path:
    """A cloned repository as an explorer searches it: it commits links to a file and a
    folder outside and holds untracked ones too."""
    root = make_repo(tmp_path / "checkout", {"src/app.py": f"x = '{INSIDE}'\n"})
    (root / "committed_file_link").symlink_to(outside / "secret.txt")
    (root / "committed_dir_link").symlink_to(outside)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "links")
    (root / "untracked_file_link").symlink_to("../outside/secret.txt")
    (root / "untracked_dir_link").symlink_to("../outside/deep")
    return root


def outside_snapshot(outside: Path) -> dict[str, bytes]:
    return {p.relative_to(outside).as_posix(): p.read_bytes() for p in outside.rglob("*.*")}


# --- search and list never follow a link out -------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
async def test_search_never_reads_through_a_link_out_of_the_checkout(
    checkout: Path, engine: str
) -> None:
    box = toolbox(checkout, engine=engine, role="explorer")
    found = await call(box, "search", pattern="forkyard-")
    assert not found.is_error, found.text
    assert found.text == f"src/app.py:1:x = '{INSIDE}'"
    for pattern in (MARKER_PATTERN, "deep", "app"):
        result = await call(box, "search", pattern=pattern)
        assert MARKER not in result.text
    listing = await call(box, "list_files")
    assert MARKER not in listing.text
    assert "key.txt" not in listing.text


@pytest.mark.parametrize("engine", ENGINES)
async def test_a_tracked_folder_replaced_by_a_link_is_not_searched(
    checkout: Path, outside: Path, engine: str
) -> None:
    # The index still lists src/app.py; on disk `src` now leads outside, where an
    # app.py holds the marker.
    shutil.rmtree(checkout / "src")
    (checkout / "src").symlink_to(outside)
    box = toolbox(checkout, engine=engine, role="explorer")
    result = await call(box, "search", pattern="forkyard")
    assert MARKER not in result.text
    assert "no matches" in result.text
    assert "src/app.py" not in (await call(box, "list_files")).text


async def test_the_scan_does_not_follow_a_folder_that_became_a_link_after_listing(
    tmp_path: Path, outside: Path
) -> None:
    """The fallback lists, then reads: a folder swapped for a link in between is not
    read through."""
    root = make_repo(tmp_path / "wt", {"sub/app.py": f"{INSIDE}\n", "top.py": f"{INSIDE}\n"})
    listed = await search.list_paths(root, ".", None, {"PATH": os.defpath})
    assert listed == ["sub/app.py", "top.py"]
    shutil.rmtree(root / "sub")
    (root / "sub").symlink_to(outside)
    (root / "top.py").unlink()
    (root / "top.py").symlink_to(outside / "secret.txt")
    found = search._scan(root, [*listed, "deep/../secret.txt"], re.compile("forkyard"), 10_000)
    assert found.lines == []


async def test_ripgrep_told_to_follow_links_still_shows_nothing_from_outside(
    checkout: Path, tmp_path: Path
) -> None:
    """The backstop: every path ripgrep prints is checked, so even an `rg` that follows
    links (a wrapper, a future default) cannot show a line from outside."""
    if RIPGREP is None:
        pytest.skip("ripgrep is not installed")
    following = tmp_path / "rg-follow"
    following.write_text(f'#!/bin/sh\nexec {RIPGREP} "$@" --follow\n')
    following.chmod(0o755)
    box = toolbox(checkout, role="explorer", ripgrep=str(following))
    result = await call(box, "search", pattern="forkyard-")
    assert MARKER not in result.text
    assert INSIDE in result.text


@pytest.mark.parametrize("engine", ENGINES)
async def test_searching_a_path_through_a_link_out_is_refused(checkout: Path, engine: str) -> None:
    box = toolbox(checkout, engine=engine, role="explorer")
    for path in ("committed_dir_link", "untracked_dir_link", "committed_file_link"):
        result = await call(box, "search", pattern=".", path=path)
        assert result.is_error
        assert "outside the worktree" in result.text
        assert MARKER not in result.text


# --- loops ------------------------------------------------------------------------------


@pytest.fixture
def looped(tmp_path: Path) -> Path:
    """A worktree with a loop of two links, a link to itself and a folder link to its
    own parent."""
    root = make_repo(tmp_path / "looped", {"src/app.py": f"x = '{INSIDE}'\n"})
    (root / "a").symlink_to("b")
    (root / "b").symlink_to("a")
    (root / "self").symlink_to("self")
    (root / "src" / "up").symlink_to("..")
    return root


LOOP_CALLS = [
    ("read_file", {"path": "a"}),
    ("read_file", {"path": "self/x"}),
    ("write_file", {"path": "a", "content": "x"}),
    ("write_file", {"path": "b/new.txt", "content": "x"}),
    ("edit_file", {"path": "self", "old_text": "x", "new_text": "y"}),
    ("delete_file", {"path": "a/x"}),
    ("list_files", {"path": "a"}),
    ("search", {"pattern": "x", "path": "self"}),
]


@pytest.mark.parametrize(("tool", "arguments"), LOOP_CALLS, ids=[t for t, _ in LOOP_CALLS])
@pytest.mark.parametrize("engine", ENGINES)
async def test_a_symlink_loop_is_a_tool_error(
    looped: Path, engine: str, tool: str, arguments: dict[str, str]
) -> None:
    result = await call(toolbox(looped, engine=engine), tool, **arguments)
    assert result.is_error
    assert "symlink loop" in result.text, result.text
    assert (looped / "a").is_symlink()
    assert not (looped / "new.txt").exists()


@pytest.mark.parametrize("engine", ENGINES)
async def test_loops_in_the_tree_do_not_stop_a_whole_search_or_listing(
    looped: Path, engine: str
) -> None:
    box = toolbox(looped, engine=engine)
    found = await call(box, "search", pattern=INSIDE)
    assert found.text == f"src/app.py:1:x = '{INSIDE}'"
    listing = (await call(box, "list_files")).text.splitlines()
    assert "src/app.py" in listing
    assert not [line for line in listing if line.startswith("src/up/")]
    # A folder link to its parent resolves inside: reading through it is fine.
    assert (await call(box, "read_file", path="src/up/src/app.py")).text.startswith("x = ")
    # Deleting a looping link removes the link itself.
    assert not (await call(box, "delete_file", path="self")).is_error
    assert not os.path.lexists(looped / "self")


# --- writes never follow a link ---------------------------------------------------------


async def test_a_dangling_link_out_is_not_written_through(tmp_path: Path, outside: Path) -> None:
    root = make_repo(tmp_path / "wt")
    (root / "conf.txt").symlink_to("../outside/created.txt")
    (root / "deep").symlink_to("../outside/not-yet")
    box = toolbox(root)
    for path in ("conf.txt", "deep/new.txt"):
        result = await call(box, "write_file", path=path, content=MARKER)
        assert result.is_error
        assert "outside the worktree" in result.text
    assert not (outside / "created.txt").exists()
    assert not (outside / "not-yet").exists()


@pytest.mark.parametrize("tool", ["write_file", "edit_file", "read_file", "delete_file"])
async def test_a_link_swapped_in_after_the_check_is_not_followed(
    tmp_path: Path, outside: Path, monkeypatch: pytest.MonkeyPatch, tool: str
) -> None:
    """The race: the path is checked while `sub` is a folder; `sub` (or the file itself)
    becomes a link out before the tool opens it."""
    root = make_repo(tmp_path / "wt", {"sub/file.txt": "old text\n", "top.txt": "old text\n"})
    checked = {p: file_tools.confined(root, p, for_write=True) for p in ("sub/file.txt", "top.txt")}
    monkeypatch.setattr(file_tools, "confined", lambda _r, p, **_k: checked[p])
    shutil.rmtree(root / "sub")
    (root / "sub").symlink_to(outside)
    (outside / "file.txt").write_text(f"{MARKER}\n")
    (root / "top.txt").unlink()
    (root / "top.txt").symlink_to(outside / "secret.txt")
    before = outside_snapshot(outside)
    box = toolbox(root)
    arguments = {
        "write_file": {"content": "overwritten\n"},
        "edit_file": {"old_text": MARKER, "new_text": "edited"},
    }.get(tool, {})
    # delete_file removes a link itself, wherever it points: only the folder matters.
    paths = ["sub/file.txt"] + ([] if tool == "delete_file" else ["top.txt"])
    for path in paths:
        result = await call(box, tool, path=path, **arguments)
        assert result.is_error, result.text
        assert "symlink" in result.text
        assert MARKER not in result.text
    assert outside_snapshot(outside) == before


@pytest.mark.parametrize("engine", ENGINES)
async def test_a_fifo_is_refused_without_hanging(tmp_path: Path, engine: str) -> None:
    root = make_repo(tmp_path / "wt", {"a.txt": f"{INSIDE}\n"})
    os.mkfifo(root / "pipe")
    box = toolbox(root, engine=engine)
    for tool, arguments in [
        ("read_file", {}),
        ("write_file", {"content": "x"}),
        ("edit_file", {"old_text": "x", "new_text": "y"}),
        ("search", {"pattern": "x"}),
        ("list_files", {}),
    ]:
        result = await call(box, tool, path="pipe", **arguments)
        assert result.is_error
        assert "not a regular file" in result.text
    assert stat.S_ISFIFO(os.lstat(root / "pipe").st_mode)
    assert (await call(box, "search", pattern=INSIDE)).text == f"a.txt:1:{INSIDE}"


async def test_writes_keep_working_inside(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "wt", {"src/app.py": "a = 1\n"})
    (root / "inner").symlink_to("src")
    box = toolbox(root)
    assert (await call(box, "write_file", path="new/dir/f.txt", content="x\n")).text == (
        "created new/dir/f.txt (1 lines)"
    )
    assert (await call(box, "write_file", path="inner/app.py", content="a = 2\n")).text == (
        "overwrote src/app.py (1 lines)"
    )
    edited = await call(box, "edit_file", path="src/app.py", old_text="2", new_text="3")
    assert not edited.is_error, edited.text
    assert (root / "src" / "app.py").read_text() == "a = 3\n"
    assert not (await call(box, "write_file", path="bad.txt", content="\ud800")).text.startswith(
        "created"
    )
    assert not (root / "bad.txt").exists()


# --- the git directory in any case ------------------------------------------------------

GIT_PATHS = [
    ".git",
    ".git/config",
    ".GIT/config",
    ".Git/config",
    ".gIT/hooks/post-checkout",
    "sub/.git/config",
    "src/../.GIT/config",
    ".g\u200cit/config",
    ".git./config",
    "GIT~1/config",
    "gitlink/config",
]


@pytest.mark.parametrize("path", GIT_PATHS)
async def test_no_write_reaches_the_git_directory_whatever_its_case(
    tmp_path: Path, path: str
) -> None:
    root = make_repo(tmp_path / "wt", {"src/app.py": "a = 1\n"})
    # On a case-insensitive file system `.GIT` is the git directory; here it is made.
    (root / ".GIT").mkdir()
    (root / ".GIT" / "config").write_text("[core]\n")
    (root / "sub" / ".git").mkdir(parents=True)
    (root / "sub" / ".git" / "config").write_text("[core]\n")
    (root / "gitlink").symlink_to(".GIT")
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    box = toolbox(root)
    for tool, arguments in [
        ("write_file", {"content": "[core]\n\tfsmonitor = evil\n"}),
        ("edit_file", {"old_text": "[core]", "new_text": "[core]\n\tfsmonitor = evil"}),
        ("delete_file", {}),
    ]:
        result = await call(box, tool, path=path, **arguments)
        assert result.is_error, (tool, result.text)
        assert "(.git)" in result.text
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("engine", ENGINES)
async def test_listing_and_search_skip_the_git_directory_whatever_its_case(
    tmp_path: Path, engine: str
) -> None:
    root = make_repo(tmp_path / "wt", {"src/app.py": "a = 1\n"})
    for name in (".GIT", ".Git"):
        (root / name).mkdir()
        (root / name / "config").write_text(f"url = https://token@{MARKER}\n")
    box = toolbox(root, engine=engine)
    assert MARKER not in (await call(box, "search", pattern=MARKER_PATTERN)).text
    assert (await call(box, "list_files")).text.splitlines() == ["src/app.py"]


async def test_listing_does_not_run_the_repository_fsmonitor(tmp_path: Path) -> None:
    """A repository's config can name a program git runs on `ls-files`; listing the
    checkout must not run it."""
    root = make_repo(tmp_path / "wt", {"src/app.py": "a = 1\n"})
    ran = tmp_path / "fsmonitor-ran"
    hook = tmp_path / "fsmonitor.sh"
    hook.write_text(f"#!/bin/sh\necho ran >> {ran}\n")
    hook.chmod(0o755)
    git(root, "config", "core.fsmonitor", str(hook))
    listing = await call(toolbox(root, role="explorer"), "list_files")
    assert listing.text.splitlines() == ["src/app.py"]
    assert not ran.exists()


# --- through the agent loop -------------------------------------------------------------


@dataclass
class LoopContext(FakeAgentContext):
    role_name: str = "worker"


async def test_the_agent_loop_gets_tool_errors_and_the_model_never_sees_outside(
    fake_model_server: FakeModelServer, tmp_path: Path, outside: Path
) -> None:
    """A hostile tree under the built-in agent: each attack is a normal tool error the
    model reads, the run goes on to finish, and no request to the model holds the
    marker from outside."""
    root = make_repo(tmp_path / "wt", {"src/app.py": f"x = '{INSIDE}'\n"})
    (root / "a").symlink_to("b")
    (root / "b").symlink_to("a")
    (root / "escape").symlink_to(outside)
    (root / "secret_link").symlink_to(outside / "secret.txt")
    (root / ".GIT").mkdir()
    (root / ".GIT" / "config").write_text("[core]\n")
    before = outside_snapshot(outside)
    attacks = [
        ("read_file", {"path": "a"}),
        ("read_file", {"path": "secret_link"}),
        ("write_file", {"path": "b/x", "content": "x"}),
        ("write_file", {"path": ".GIT/config", "content": "[core]\n\tfsmonitor = evil\n"}),
        ("edit_file", {"path": "escape/secret.txt", "old_text": "f", "new_text": "g"}),
        ("delete_file", {"path": "a/x"}),
        ("search", {"pattern": MARKER_PATTERN}),
        ("list_files", {"path": "escape"}),
    ]
    fake_model_server.script(
        *[Reply(tool_calls=[call]) for call in attacks], Reply(text="Nothing to do.")
    )
    settings = Settings(
        models={"default": fake_model_server.model_config("openai")},
        agent=AgentLimits(max_tool_output_chars=4000),
    )
    context = LoopContext(cwd=root, repo_root=root, settings=settings, environ=server_environ())
    backend = LlmBackend()
    try:
        outcome = await backend.run(context, "Look around.")
    finally:
        await backend.aclose()
    assert outcome.ok, outcome.error
    results = [text for kind, text in context.logs if kind == "tool_result"]
    assert len(results) == len(attacks)
    errors = [text for text in results if " -> error: " in text]
    assert [text.split(" ", 1)[0] for text in errors] == [
        name for name, _ in attacks if name != "search"
    ], results
    assert results[6].startswith("search -> no matches"), results[6]
    assert all(MARKER not in request.raw.decode() for request in fake_model_server.requests)
    assert outside_snapshot(outside) == before
    assert (root / ".GIT" / "config").read_text() == "[core]\n"
