"""What a new worktree needs beyond git before its agent starts.

A checkout holds only what git tracks; the user's own checkout also has `.env` files,
local config and installed dependencies, without which tests and dev servers do not run.
So, as declared in `[worktree]` of `.forkyard.toml` (and in `.worktreeinclude`, the file
other worktree tools read):

- ignored files the user has are copied into the worktree (`copy`), or, for large
  directories, linked to the user's copy (`link`), which agents can read but, sandboxed,
  never change. Only files git ignores are brought: anything else would show up in the
  agent's diff, so what the worktree does not ignore is taken out again and reported.
- a setup command (`uv sync`) runs sandboxed in the worktree; its output goes to the
  agent's log and its failure fails the agent with the reason.
- each agent gets ports of its own, so dev servers of agents side by side never collide.

Patterns use gitignore syntax: `*`, `?`, `[...]`, `**`, a leading `/` or a slash inside
anchors to the repository root, a trailing `/` matches folders only, `!` takes back
(latest line wins). A pattern without a slash matches at any depth, except inside
folders git ignores as a whole (`node_modules/`): those are matched by their own name,
or entered only by patterns that spell their path (`.venv/lib/*.pth`).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import anyio
import anyio.to_thread

from forkyard.errors import ForkyardError
from forkyard.settings import Settings, WorktreeSettings
from forkyard.tools.process import run_streaming
from forkyard.tools.sandbox import (
    SandboxPolicy,
    probe_sandbox,
    sandboxed_argv,
    scrubbed_env,
    unsandboxed_argv,
)
from forkyard.workspace.git import Repository, run_git

WORKTREEINCLUDE = ".worktreeinclude"
HIGHEST_PORT = 65_535
LOG_KIND = "setup"
FAILURE_TAIL_LINES = 5

Log = Callable[[str, str], Awaitable[None]]


class SetupError(ForkyardError):
    """The worktree could not be set up; the message says why, for the agent's error."""


# --- ports ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PortRange:
    """The ports an agent may listen on: `first` and the `count - 1` after it."""

    first: int
    count: int

    @property
    def ports(self) -> range:
        return range(self.first, self.first + self.count)

    def environment(self) -> dict[str, str]:
        """`FORKYARD_PORT_BASE` (and `FORKYARD_PORT`, the same) and `FORKYARD_PORTS`,
        the ports separated by spaces (`set -- $FORKYARD_PORTS` in a shell)."""
        return {
            "FORKYARD_PORT": str(self.first),
            "FORKYARD_PORT_BASE": str(self.first),
            "FORKYARD_PORTS": " ".join(str(port) for port in self.ports),
        }

    def __str__(self) -> str:
        return f"{self.first}-{self.first + self.count - 1}"


def port_range(settings: WorktreeSettings, agent_number: int, repo_key: str) -> PortRange:
    """Agent `agent_number`'s ports: derived from its number, so they stay the same
    across restarts without being stored, and disjoint from the ports of every other
    agent of the repository whose number is less than `slots` away (thousands). Each
    repository starts at its own offset, so the first agents of two repositories do
    not share ports either."""
    width = settings.ports_per_agent
    slots = max(1, (HIGHEST_PORT + 1 - settings.port_base) // width)
    offset = int(hashlib.sha1(repo_key.encode()).hexdigest(), 16) % slots
    slot = (agent_number - 1 + offset) % slots
    return PortRange(settings.port_base + slot * width, width)


# --- ignored files: which ------------------------------------------------------------


@dataclass(frozen=True)
class IncludePattern:
    """One gitignore-style line."""

    text: str
    regex: re.Pattern[str]
    negated: bool
    folders_only: bool
    #: Anchored patterns' literal leading folders ("config/" of "config/*.local"): where
    #: a walk inside an ignored folder has to start.
    literal_prefix: str | None

    def matches(self, path: str, is_folder: bool) -> bool:
        if self.folders_only and not is_folder:
            return False
        return self.regex.fullmatch(path) is not None


def parse_patterns(lines: Iterable[str]) -> list[IncludePattern]:
    patterns = []
    for raw in lines:
        line = raw.rstrip("\n").rstrip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        body = line[1:] if negated else line
        if body.startswith("\\"):  # "\#file", "\!file": a literal first character
            body = body[1:]
        folders_only = body.endswith("/")
        body = body.rstrip("/")
        if not body:
            continue
        anchored = "/" in body
        body = body.lstrip("/")
        regex = _glob_regex(body)
        if not anchored:
            regex = "(?:.*/)?" + regex
        prefix = None
        if anchored:
            literal = re.split(r"[*?\[\\]", body, maxsplit=1)[0]
            prefix = literal[: literal.rfind("/") + 1]
        patterns.append(
            IncludePattern(line, re.compile(regex, re.DOTALL), negated, folders_only, prefix)
        )
    return patterns


def _glob_regex(glob: str) -> str:
    out: list[str] = []
    index = 0
    while index < len(glob):
        char = glob[index]
        if glob.startswith("**/", index):
            out.append("(?:.*/)?")
            index += 3
        elif glob.startswith("/**", index) and index + 3 == len(glob):
            out.append("/.*")
            index += 3
        elif glob.startswith("**", index):
            out.append(".*")
            index += 2
        elif char == "*":
            out.append("[^/]*")
            index += 1
        elif char == "?":
            out.append("[^/]")
            index += 1
        elif char == "[" and (end := glob.find("]", index + 2)) != -1:
            body = glob[index + 1 : end]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            index = end + 1
        elif char == "\\" and index + 1 < len(glob):
            out.append(re.escape(glob[index + 1]))
            index += 2
        else:
            out.append(re.escape(char))
            index += 1
    return "".join(out)


def selected(patterns: Sequence[IncludePattern], path: str, is_folder: bool) -> bool:
    """Whether `path` is included: the last pattern matching it or one of its folders
    decides, as in .gitignore."""
    parts = path.split("/")
    candidates = [("/".join(parts[:depth]), True) for depth in range(1, len(parts))]
    candidates.append((path, is_folder))
    decision = False
    for pattern in patterns:
        if any(pattern.matches(candidate, folder) for candidate, folder in candidates):
            decision = not pattern.negated
    return decision


@dataclass
class Selection:
    """Paths of the user's checkout (repo-relative, POSIX) to bring into a worktree."""

    copy: list[str] = field(default_factory=list)
    link: list[str] = field(default_factory=list)


async def ignored_entries(checkout: Path, env: Mapping[str, str]) -> list[tuple[str, bool]]:
    """The checkout's ignored files, folders git ignores as a whole given once (with
    True), as git sees them."""
    listed = await run_git(
        "ls-files", "-z", "--others", "--ignored", "--exclude-standard", "--directory",
        cwd=checkout, env=env,
    )  # fmt: skip
    entries = []
    for raw in listed.stdout.split(b"\0"):
        if raw:
            name = os.fsdecode(raw)
            entries.append((name.rstrip("/"), name.endswith("/")))
    return entries


def select_entries(
    checkout: Path,
    entries: Sequence[tuple[str, bool]],
    copy: Sequence[IncludePattern],
    link: Sequence[IncludePattern],
) -> Selection:
    """Which ignored entries to link, which to copy. Walks into ignored folders only
    where an anchored pattern points. Blocking: run it in a worker thread."""
    chosen = Selection()

    def choose(path: str, is_folder: bool) -> bool:
        if selected(link, path, is_folder):
            chosen.link.append(path)
        elif selected(copy, path, is_folder):
            chosen.copy.append(path)
        else:
            return False
        return True

    for path, is_folder in entries:
        if choose(path, is_folder) or not is_folder:
            continue
        starts = {
            p.literal_prefix.rstrip("/")
            for p in (*copy, *link)
            if p.literal_prefix and p.literal_prefix.startswith(path + "/") and not p.negated
        }
        for start in sorted(starts):
            for inner, inner_is_folder in _walk(checkout, start):
                choose(inner, inner_is_folder)
    chosen.copy = _outermost(chosen.copy)
    chosen.link = _outermost(chosen.link)
    return chosen


def _walk(checkout: Path, start: str) -> Iterable[tuple[str, bool]]:
    root = checkout / start
    if not root.is_dir() or root.is_symlink():
        return
    for folder, folders, files in os.walk(root):
        relative = PurePosixPath(Path(folder).relative_to(checkout).as_posix())
        for name in folders:
            yield str(relative / name), True
        for name in files:
            yield str(relative / name), False


def _outermost(paths: list[str]) -> list[str]:
    kept: list[str] = []
    for path in sorted(set(paths)):
        if not any(path.startswith(parent + "/") for parent in kept):
            kept.append(path)
    return kept


# --- ignored files: bringing them -----------------------------------------------------


@dataclass
class BroughtFiles:
    copied: list[str] = field(default_factory=list)
    linked: list[str] = field(default_factory=list)
    #: Paths not brought, with the reason.
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _place(checkout: Path, worktree: Path, selection: Selection) -> BroughtFiles:
    """Copy and link; never overwrites what the worktree already has. Blocking."""
    brought = BroughtFiles()
    for path, how in [(p, "copy") for p in selection.copy] + [(p, "link") for p in selection.link]:
        source, target = checkout / path, worktree / path
        if target.exists() or target.is_symlink():
            brought.skipped.append((path, "the worktree has it already"))
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if how == "link" and source.is_dir() and not source.is_symlink():
            # A real folder of links: a folder keeps matching folder-only ignore
            # patterns (`node_modules/`), where a link in its place would not.
            target.mkdir()
            for child in sorted(source.iterdir()):
                (target / child.name).symlink_to(child)
            brought.linked.append(path)
        elif how == "link":
            target.symlink_to(source)
            brought.linked.append(path)
        elif source.is_dir() and not source.is_symlink():
            shutil.copytree(source, target, symlinks=True)
            brought.copied.append(path)
        else:
            shutil.copy2(source, target, follow_symlinks=False)
            brought.copied.append(path)
    return brought


async def bring_ignored_files(
    checkout: Path,
    worktree: Path,
    copy: Sequence[str],
    link: Sequence[str],
    env: Mapping[str, str],
    *,
    repository: Repository | None = None,
) -> BroughtFiles:
    """Copy (or link) the ignored files of `checkout` that the patterns select into
    `worktree`; whatever the worktree would not ignore (its base ignores less than the
    user's checkout) is taken out again, so it never shows up in the agent's diff.

    git in the worktree runs hardened (`Repository.worktree_git`): a setup that failed
    and is tried again finds a worktree its sandboxed command could have changed (its
    `.git`, say), and git must not discover a repository or run a hook through that.
    Pass the `repository` when there is one: else it is found from `checkout`."""
    copy_patterns, link_patterns = parse_patterns(copy), parse_patterns(link)
    if not copy_patterns and not link_patterns:
        return BroughtFiles()
    entries = await ignored_entries(checkout, env)
    selection = await anyio.to_thread.run_sync(
        select_entries, checkout, entries, copy_patterns, link_patterns
    )
    brought = await anyio.to_thread.run_sync(_place, checkout, worktree, selection)
    placed = brought.copied + brought.linked
    if not placed:
        return brought
    if repository is None:
        repository = await Repository.discover(checkout, env)
    git = await repository.worktree_git(worktree)
    checked = await git.run(
        "check-ignore", "-z", "--stdin", check=False,
        input=b"".join(os.fsencode(path) + b"\0" for path in placed),
    )  # fmt: skip
    ignored = {os.fsdecode(raw) for raw in checked.stdout.split(b"\0") if raw}
    for path in [p for p in placed if p not in ignored]:
        await anyio.to_thread.run_sync(_remove, worktree / path)
        brought.skipped.append((path, "not ignored at the agent's base"))
    brought.copied = [p for p in brought.copied if p in ignored]
    brought.linked = [p for p in brought.linked if p in ignored]
    return brought


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


async def read_worktreeinclude(checkout: Path) -> list[str]:
    """The lines of the checkout's `.worktreeinclude`, none when it has no such file."""
    path = anyio.Path(checkout / WORKTREEINCLUDE)
    if not await path.is_file():
        return []
    return (await path.read_text(encoding="utf-8", errors="replace")).splitlines()


# --- the setup command -----------------------------------------------------------------


async def run_setup_command(
    command: str,
    *,
    worktree: Path,
    checkout: Path,
    settings: Settings,
    environ: Mapping[str, str],
    extra_env: Mapping[str, str],
    log: Log,
) -> None:
    """Run the setup command in the worktree, sandboxed like agents' commands (with the
    network when `setup_network`), its output in the agent's log. SetupError says why
    it failed."""
    # Imported here: the sandbox's view uses this module's pattern matching.
    from forkyard.workspace.sandbox_view import sandbox_read_paths

    config = settings.worktree
    status = await probe_sandbox()
    # Readable: the repository's git directory and what `link` points to, not the rest
    # of the user's checkout (its ignored `.env`), which a setup with the network on
    # could send anywhere.
    readable = await sandbox_read_paths(
        worktree=worktree, checkout=checkout, settings=settings, environ=environ
    )
    policy = SandboxPolicy(
        writable=[worktree],
        readable=readable,
        network=config.setup_network,
        extra_env=dict(extra_env),
        priority=settings.agent_priority,
    )
    if status.available:
        argv = await anyio.to_thread.run_sync(lambda: sandboxed_argv(command, policy, cwd=worktree))
    elif settings.allow_unsandboxed_commands:
        await log(LOG_KIND, "bubblewrap is unavailable: running the setup unsandboxed")
        argv = unsandboxed_argv(command, policy.priority)
    else:
        raise SetupError(f"cannot run the setup: the sandbox is unavailable ({status.reason})")
    await log(LOG_KIND, f"$ {command}")

    async def on_output(stream: str, line: str) -> None:
        await log(LOG_KIND, line)

    result = await run_streaming(
        argv,
        cwd=worktree,
        env=scrubbed_env(environ, policy),
        on_output=on_output,
        timeout=config.setup_timeout_seconds,
    )
    if result.timed_out:
        raise SetupError(f"setup `{command}` timed out after {config.setup_timeout_seconds:g} s")
    if result.returncode != 0:
        tail = _last_lines(result.stderr_tail) or _last_lines(result.stdout_tail)
        raise SetupError(
            f"setup `{command}` failed (exit {result.returncode})" + (f": {tail}" if tail else "")
        )


def _last_lines(text: str) -> str:
    return "\n".join(text.strip().splitlines()[-FAILURE_TAIL_LINES:])


# --- all of it ------------------------------------------------------------------------


async def set_up_worktree(
    worktree: Path,
    *,
    checkout: Path,
    settings: Settings,
    git_env: Mapping[str, str],
    environ: Mapping[str, str],
    extra_env: Mapping[str, str],
    log: Log,
    repository: Repository | None = None,
) -> None:
    """Bring the ignored files, then run the setup command, as `[worktree]` says."""
    config = settings.worktree
    copy = list(config.copy_files)
    if config.worktreeinclude:
        copy += await read_worktreeinclude(checkout)
    if copy or config.link:
        brought = await bring_ignored_files(
            checkout, worktree, copy, config.link, git_env, repository=repository
        )
        for path in brought.copied:
            await log(LOG_KIND, f"copied {path}")
        for path in brought.linked:
            await log(LOG_KIND, f"linked {path} (read-only, the user's copy)")
        for path, reason in brought.skipped:
            await log(LOG_KIND, f"not brought: {path}: {reason}")
    if config.setup:
        await run_setup_command(
            config.setup,
            worktree=worktree,
            checkout=checkout,
            settings=settings,
            environ=environ,
            extra_env=extra_env,
            log=log,
        )
