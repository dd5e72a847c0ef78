"""Running git: one async subprocess per command, each with its own `cwd` and an explicit
environment, so agents working side by side never share process state and the event loop
never waits on git. Errors name the command and quote git's own words.
"""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread

from forkyard.errors import ForkyardError

#: Variables that point git at a particular repository, index or object store. Inherited
#: from whoever started the server (a git hook, say), they would make every command act
#: on the wrong repository, so they never reach our git processes.
_REPOSITORY_LOCATION_VARIABLES = frozenset(
    {
        "GIT_DIR",
        "GIT_WORK_TREE",
        "GIT_INDEX_FILE",
        "GIT_OBJECT_DIRECTORY",
        "GIT_ALTERNATE_OBJECT_DIRECTORIES",
        "GIT_COMMON_DIR",
        "GIT_PREFIX",
        "GIT_IMPLICIT_WORK_TREE",
        "GIT_NAMESPACE",
    }
)


class GitError(ForkyardError):
    """A git command failed, or a path is not what git needs it to be."""

    def __init__(self, message: str, *, returncode: int | None = None, stderr: str = "") -> None:
        super().__init__(message)
        self.returncode = returncode
        self.stderr = stderr


@dataclass(frozen=True)
class GitResult:
    args: tuple[str, ...]
    stdout: bytes
    stderr: str
    returncode: int

    @property
    def text(self) -> str:
        """stdout as text; bytes that are not UTF-8 become U+FFFD rather than an error."""
        return self.stdout.decode("utf-8", errors="replace")

    @property
    def line(self) -> str:
        """stdout without its trailing newline: for commands that print one value."""
        return self.text.strip()


def git_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """A fresh environment for git processes, from `base` (default: this process's).

    Never prompts (there is nobody at a terminal to answer), and drops the variables that
    would redirect git to another repository.
    """
    source = os.environ if base is None else base
    env = {k: v for k, v in source.items() if k not in _REPOSITORY_LOCATION_VARIABLES}
    env["GIT_TERMINAL_PROMPT"] = "0"
    return env


async def run_git(
    *args: str,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    input: bytes | None = None,
    check: bool = True,
) -> GitResult:
    """Run `git args...` in `cwd`; with `check`, a non-zero exit raises GitError naming the
    command and quoting git's stderr, which is what a user needs to see to fix it.

    Paths are printed unquoted (`core.quotepath=off`) so non-ASCII names arrive as UTF-8.
    """
    command = ["git", "-c", "core.quotepath=off", *args]
    environment = git_environment() if env is None else dict(env)
    try:
        done = await anyio.run_process(command, input=input, cwd=cwd, env=environment, check=False)
    except OSError as exc:
        raise GitError(f"cannot run `git {shlex.join(args)}` in {cwd}: {exc}") from exc
    stderr = done.stderr.decode("utf-8", errors="replace")
    result = GitResult(tuple(args), done.stdout, stderr, done.returncode)
    if check and done.returncode != 0:
        raise GitError(
            f"`git {shlex.join(args)}` failed (exit {done.returncode}) in {cwd}: "
            f"{stderr.strip() or '(no message)'}",
            returncode=done.returncode,
            stderr=stderr,
        )
    return result


#: Runs git with extra environment variables, in whatever repository the caller means.
GitRun = Callable[..., Awaitable[GitResult]]


async def tree_through_a_copy_of(
    index: Path, run: GitRun, stage: Callable[[Mapping[str, str]], Awaitable[None]] | None = None
) -> str:
    """The tree sha of a work tree's files as they are on disk (tracked, untracked but
    not ignored, deletions), through a temporary copy of its index, so the index itself
    (the user's, or an agent's that anything may be staged in) is left as it was. The
    copy keeps git's cached stat data, so only changed files are read again: fast on
    large repositories, and racy-git safe. `run(*args, env=...)` runs git there;
    `stage(env)`, when given, stages the files instead of `git add -A` (an overlay
    worktree's, from its upper directory)."""
    scratch = Path(await anyio.to_thread.run_sync(tempfile.mkdtemp, None, "forkyard-index-"))
    try:
        temp_index = scratch / "index"
        await anyio.to_thread.run_sync(_copy_if_present, index, temp_index)
        env = {"GIT_INDEX_FILE": str(temp_index)}
        # A split index would write shared index files into the repository, and the
        # embedded-repository advice is noise here.
        if stage is not None:
            await stage(env)
        else:
            await run(
                "-c", "core.splitIndex=false", "-c", "advice.addEmbeddedRepo=false", "add", "-A",
                env=env,
            )  # fmt: skip
        return (await run("write-tree", env=env)).line
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(shutil.rmtree, scratch, True)


def _copy_if_present(source: Path, target: Path) -> None:
    if source.is_file():
        shutil.copy2(source, target)
