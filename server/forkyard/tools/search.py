"""Listing and searching a worktree the way its owner sees it: what git ignores (build
output, virtualenvs, `node_modules`) is not there for the agent either, or a single
listing of a JavaScript project would drown the model in dependencies.

Searching uses ripgrep when it is installed (fast, honours .gitignore itself) and a
plain Python scan of the listed files otherwise; both print `path:line:text`.

Neither ever reads outside the root (explorers search the user's checkout, where a
cloned repository can hold a link to `~/.ssh`): no symlink is followed, by ripgrep (no
`--follow`, and every path it prints is checked) or by the scan (files are opened
through `beneath`, which refuses a link anywhere on the way). The git directory is
skipped whatever its case.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import anyio
import anyio.to_thread

from forkyard.tools.beneath import ManyBeneath, is_git_name, regular_file
from forkyard.tools.process import run_streaming

GIT_TIMEOUT_SECONDS = 60.0
SEARCH_TIMEOUT_SECONDS = 60.0
#: Matches shown per file, so that one generated file cannot fill the whole result.
MAX_MATCHES_PER_FILE = 100
#: A matching line longer than this is cut: minified code is one line of megabytes.
MAX_LINE_CHARS = 300
#: The Python fallback skips files larger than this (rg searches them, but they are
#: rarely source and reading them in Python is slow).
MAX_FALLBACK_FILE_BYTES = 8 * 1024 * 1024
_BINARY_SNIFF_BYTES = 8192
#: ripgrep's complaint when every file was skipped (ignored, or links it does not follow).
_NOTHING_SEARCHED = "No files were searched"


@cache
def ripgrep_path() -> str | None:
    """Absolute path of `rg`, or None when ripgrep is not installed."""
    return shutil.which("rg")


@dataclass(frozen=True)
class SearchResult:
    lines: list[str]
    #: The output stopped early (too many matches for the budget).
    truncated: bool


def glob_matches(relative: str, glob: str) -> bool:
    """Whether a POSIX path relative to the root matches `glob`. A glob without a slash
    matches file names at any depth (`*.py`), as in .gitignore and ripgrep."""
    if "/" not in glob.rstrip("/"):
        return fnmatch.fnmatchcase(relative.rsplit("/", 1)[-1], glob)
    pattern = glob.removeprefix("./")
    return fnmatch.fnmatchcase(relative, pattern) or (
        pattern.startswith("**/") and fnmatch.fnmatchcase(relative, pattern[3:])
    )


async def list_paths(
    root: Path, relative: str, glob: str | None, environ: Mapping[str, str]
) -> list[str]:
    """Files under `root/relative` (a directory or a file, already confined), relative to
    `root`, sorted, without what git ignores. Outside a git work tree, a walk that
    skips `.git` and the patterns of the root's .gitignore."""
    listed = await _git_list(root, relative, environ)
    if listed is None:
        return await anyio.to_thread.run_sync(_walk, root, relative, glob)
    return await anyio.to_thread.run_sync(_existing_matches, root, listed, glob)


async def _git_list(root: Path, relative: str, environ: Mapping[str, str]) -> list[str] | None:
    """Tracked and untracked-but-not-ignored files, or None when `root` is not the top
    of a git work tree (or git fails)."""
    # The work tree is the agent's (or an unvetted clone): its config must not get to
    # run a program here (core.fsmonitor), nor git find a repository above the root.
    argv = ["git", "-c", "core.fsmonitor=false", "-c", "core.untrackedCache=false"]
    argv += ["ls-files", "--cached", "--others", "--exclude-standard", "-z", "--", relative]
    env = {
        **environ,
        "GIT_CEILING_DIRECTORIES": str(root.parent),
        "GIT_OPTIONAL_LOCKS": "0",
    }
    try:
        with anyio.fail_after(GIT_TIMEOUT_SECONDS):
            done = await anyio.run_process(argv, cwd=root, env=env, check=False)
    except (OSError, TimeoutError):
        return None
    if done.returncode != 0:
        return None
    return [path for path in done.stdout.decode(errors="replace").split("\0") if path]


def _existing_matches(root: Path, listed: list[str], glob: str | None) -> list[str]:
    """Deduplicated, still existing (a file deleted since the last commit is still in the
    index) without a symlink on the way (a tracked directory replaced by a link to
    elsewhere), nothing in a `.GIT` (the git directory on a case-insensitive file
    system), glob-filtered and sorted. Blocking: runs in a worker thread."""
    real = ManyBeneath(root)
    result = {
        path
        for path in listed
        if (glob is None or glob_matches(path, glob))
        and not any(is_git_name(part) for part in path.split("/"))
        and real.exists(path)
    }
    return sorted(result)


def _walk(root: Path, relative: str, glob: str | None) -> list[str]:
    """The fallback listing: a walk that follows no symlink and lists links (to files or
    directories) as entries, as git does. Blocking: runs in a worker thread."""
    ignored = _root_ignore_patterns(root)
    start = root / relative
    if start.is_file():
        candidates = [relative]
    else:
        candidates = []
        for directory, subdirs, files in os.walk(start):
            base = Path(directory).relative_to(root).as_posix()
            prefix = "" if base == "." else base + "/"
            links = [name for name in subdirs if os.path.islink(os.path.join(directory, name))]
            subdirs[:] = sorted(
                name
                for name in subdirs
                if name not in links
                and not is_git_name(name)
                and not _ignored(prefix + name, name, ignored)
            )
            candidates += [
                prefix + name
                for name in [*files, *links]
                if not _ignored(prefix + name, name, ignored)
            ]
    return sorted(path for path in candidates if glob is None or glob_matches(path, glob))


def _root_ignore_patterns(root: Path) -> list[str]:
    try:
        text = (root / ".gitignore").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    return [
        line.strip().strip("/")
        for line in text.splitlines()
        if line.strip() and not line.startswith(("#", "!"))
    ]


def _ignored(relative: str, name: str, patterns: list[str]) -> bool:
    return any(
        fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(relative, pattern)
        for pattern in patterns
    )


async def search_with_ripgrep(
    rg: str, root: Path, pattern: str, relative: str, glob: str | None, max_chars: int
) -> SearchResult | str:
    """Matches found by ripgrep, or an error message (an invalid regex, say)."""
    argv = [
        rg,
        "--no-config",
        "--line-number",
        "--no-heading",
        "--with-filename",
        "--color=never",
        "--hidden",
        "--iglob=!.git",
        # Never into a link (the default without a config file; said out loud anyway).
        "--no-follow",
        # `path NUL line:text`: the path is known exactly, to be checked below.
        "--null",
        # Sorted output (single-threaded, still fast) reads better and is reproducible.
        "--sort=path",
        f"--max-columns={MAX_LINE_CHARS}",
        "--max-columns-preview",
        f"--max-count={MAX_MATCHES_PER_FILE}",
    ]
    if glob:
        argv += ["--glob", glob]
    argv += ["--regexp", pattern]
    if relative != ".":
        argv += ["--", relative]
    lines: list[str] = []
    errors: list[str] = []
    size = 0
    truncated = False
    real = ManyBeneath(root)
    checked: dict[str, bool] = {}

    def inside(path: str) -> bool:
        """ripgrep follows no link, so this never fails; it is the backstop that keeps a
        future flag or version from showing a line from elsewhere."""
        known = checked.get(path)
        if known is None:
            known = checked[path] = real.exists(path, allow_final_link=False)
        return known

    def collect(stream: str, line: str) -> None:
        nonlocal size, truncated
        if stream == "stderr":
            errors.append(line)
            return
        path, nul, rest = line.partition("\0")
        path = path.removeprefix("./")
        if not nul or not inside(path):
            return
        shown = f"{path}:{rest}"
        if size + len(shown) + 1 > max_chars:
            truncated = True
        else:
            lines.append(shown)
            size += len(shown) + 1

    result = await run_streaming(
        argv,
        cwd=root,
        env={"PATH": os.defpath},
        on_output=collect,
        timeout=SEARCH_TIMEOUT_SECONDS,
        max_output_bytes=max_chars * 4 + 4096,
    )
    if result.timed_out:
        return f"search timed out after {SEARCH_TIMEOUT_SECONDS:g} s; narrow path or glob"
    if result.returncode == 2 and not lines and any(_NOTHING_SEARCHED in e for e in errors):
        return SearchResult([], truncated=False)  # only links, or all of it ignored
    if result.returncode == 2 and not lines:
        return "search failed: " + ("\n".join(errors[:5]) or "ripgrep exit status 2")
    return SearchResult(lines, truncated or result.truncated)


async def search_with_python(
    root: Path,
    pattern: str,
    relative: str,
    glob: str | None,
    max_chars: int,
    environ: Mapping[str, str],
) -> SearchResult | str:
    """The same search without ripgrep: Python's `re` over the listed files. The regex
    dialects differ only in rarely used corners."""
    try:
        regex = re.compile(pattern)
    except re.error as error:
        return f"invalid regular expression {pattern!r}: {error}"
    paths = await list_paths(root, relative, glob, environ)
    return await anyio.to_thread.run_sync(_scan, root, paths, regex, max_chars)


def _scan(root: Path, paths: list[str], regex: re.Pattern[str], max_chars: int) -> SearchResult:
    """Blocking: runs in a worker thread. Each file is opened without following a link
    (a listed path can be a link, or have become one since the listing)."""
    with ManyBeneath(root.resolve()) as files:
        return _scan_files(files, paths, regex, max_chars)


def _scan_files(
    files: ManyBeneath, paths: list[str], regex: re.Pattern[str], max_chars: int
) -> SearchResult:
    lines: list[str] = []
    size = 0
    for path in paths:
        text = _read_text(files, path)
        if text is None:
            continue
        found = 0
        for number, line in enumerate(text.splitlines(), start=1):
            if not regex.search(line):
                continue
            shown = f"{path}:{number}:{_cut(line)}"
            if size + len(shown) + 1 > max_chars:
                return SearchResult(lines, truncated=True)
            lines.append(shown)
            size += len(shown) + 1
            found += 1
            if found >= MAX_MATCHES_PER_FILE:
                break
    return SearchResult(lines, truncated=False)


def _read_text(files: ManyBeneath, path: str) -> str | None:
    """The text of a regular file reached without links, or None when it is not one, is
    binary or is too large to be worth scanning."""
    try:
        fd = files.open(path, os.O_RDONLY)
    except (OSError, ValueError):
        return None
    with open(fd, "rb") as handle:
        try:
            status = regular_file(fd, path)
        except OSError:
            return None
        if status.st_size > MAX_FALLBACK_FILE_BYTES:
            return None
        data = handle.read(MAX_FALLBACK_FILE_BYTES + 1)
    if b"\0" in data[:_BINARY_SNIFF_BYTES]:
        return None
    return data.decode("utf-8", errors="replace")


def _cut(line: str) -> str:
    if len(line) <= MAX_LINE_CHARS:
        return line
    return line[:MAX_LINE_CHARS] + " [... line cut ...]"
