"""git on an agent's worktree, run by the server outside the sandbox, running nothing the
agent could have planted.

An agent controls every file of its worktree, and git reads a lot from a worktree: its
`.git` (which says where the repository is, so whose config, hooks and HEAD apply), the
in-tree `.gitattributes` (which pick filter, diff and merge drivers by name), nested
repositories. Anything of that which git executes would run on the host with the
server's environment. So every command the server runs in or for an agent's worktree:

- names its git dir and work tree (`GIT_DIR=<admin dir>`, `GIT_WORK_TREE=<worktree>`).
  The admin dir is found from the repository side: the common dir's
  `worktrees/<id>/gitdir` files, which git writes and the agent cannot (the sandbox
  mounts the repository's git directory read-only). The worktree's `.git` is only
  looked at (lstat, never followed) to tell the user it was changed;
- turns off what could run a program: hooks (`core.hooksPath=/dev/null`), fsmonitor,
  every filter driver the config defines (`filter.<name>.clean/smudge/process` emptied,
  `required` off, so an in-tree `* filter=x` picks a driver that does nothing), textconv
  and external diff (`--no-ext-diff --no-textconv` on every diff), the user's global and
  system config and attributes, recursion into submodules, auto gc;
- runs with a small environment (path, home, locale, temp dir): no secret of the
  server's reaches git, so even a hook point nobody thought of has nothing to leak.

Checkouts of the user's own commits into worktrees no agent has used yet (the pool,
fresh worktrees) keep the user's config, filters included (a checkout must give the
files the user's own checkout would), with the git dir named and hooks and fsmonitor off.

The price: the user's own filter drivers do not run on an agent's files either (an
in-tree attribute could point any file at them), so a file of a filtered kind (a Git LFS
one, say) that the agent changed is committed to its branch as its plain content. Files
it left alone keep their blobs: git only reads files whose stat data changed. Nothing
here reaches the network: none of these commands fetches.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import anyio
import anyio.to_thread

from forkyard.workspace.overlay_stage import stage_worktree
from forkyard.workspace.runner import GitError, GitResult, run_git, tree_through_a_copy_of

#: Variables kept from the server's environment for git on an agent's worktree: what git
#: needs to find programs, decode names and write temporary files; nothing that could
#: carry a secret or redirect git.
_KEPT_VARIABLES = frozenset(
    {"PATH", "HOME", "XDG_CONFIG_HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "USER", "LOGNAME"}
)

#: Config that turns off the hook points of every command, for checkouts too.
_ALWAYS_OFF = (
    "core.hooksPath=/dev/null",
    "core.fsmonitor=false",
    "submodule.recurse=false",
    "gc.auto=0",
    "maintenance.auto=false",
)
#: And for what an agent touched: attributes outside the tree, bare repositories planted
#: in it, the embedded-repository advice.
_AGENT_OFF = (
    "core.attributesFile=/dev/null",
    "safe.bareRepository=explicit",
    "advice.addEmbeddedRepo=false",
)
_FILTER_KEY = re.compile(rb"^filter\.(.+)\.[^.]+$", re.DOTALL)
_MAX_GIT_FILE_BYTES = 4096


class WorktreeUnknown(GitError):
    """The folder is not a registered worktree of the repository."""


class WorktreeTampered(GitError):
    """A worktree's `.git` is not the gitdir file git wrote. `commit` is set when the
    agent's files were committed to its branch anyway (through the repository's own
    records, never that `.git`)."""

    def __init__(self, message: str, *, commit: str | None = None) -> None:
        super().__init__(message)
        self.commit = commit


@dataclass(frozen=True)
class WorktreeGit:
    """How to run git on one worktree without asking it where its repository is."""

    worktree: Path
    admin_dir: Path
    env: dict[str, str]
    options: tuple[str, ...]
    #: Why its `.git` is not ours (None when it is intact).
    tampered: str | None = None

    @property
    def index(self) -> Path:
        return self.admin_dir / "index"

    async def run(
        self,
        *args: str,
        input: bytes | None = None,
        check: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> GitResult:
        environment = self.env if env is None else {**self.env, **env}
        return await run_git(
            *self.options, *args, cwd=self.worktree, env=environment, input=input, check=check
        )

    def moved_to(self, worktree: Path) -> WorktreeGit:
        """The same worktree after `git worktree move` (its admin dir stays)."""
        env = {**self.env, "GIT_WORK_TREE": str(worktree)}
        return replace(self, worktree=worktree, env=env)

    def tampered_error(self, commit: str | None = None) -> WorktreeTampered:
        committed = (
            f" and committed to its branch ({commit[:12]}) without that .git" if commit else ""
        )
        return WorktreeTampered(
            f"agent worktree {self.worktree}: its .git was changed (expected a gitdir file "
            f"pointing at {self.admin_dir}; {self.tampered}); the agent's files are kept "
            f"there{committed}; your repository was not touched",
            commit=commit,
        )


def find_admin_dir(common_dir: Path, worktree: Path) -> Path | None:
    """The admin dir (`<common>/worktrees/<id>`) whose `gitdir` file names `worktree`,
    read from the repository's side only. Blocking: run it in a worker thread."""
    wanted = os.path.realpath(worktree)
    admin_root = common_dir / "worktrees"
    try:
        entries = list(os.scandir(admin_root))
    except OSError:
        return None
    for entry in entries:
        try:
            text = (Path(entry.path) / "gitdir").read_bytes()[:_MAX_GIT_FILE_BYTES]
        except OSError:
            continue
        # Relative when git writes relative worktree paths (worktree.useRelativePaths).
        recorded = Path(entry.path) / os.fsdecode(text.strip())
        if recorded.name == ".git" and os.path.realpath(recorded.parent) == wanted:
            return Path(entry.path)
    return None


def describe_tampering(worktree: Path, admin_dir: Path) -> str | None:
    """What is wrong with the worktree's `.git`, None when it is the gitdir file git
    wrote. Never follows a link. Blocking: run it in a worker thread."""
    git_file = worktree / ".git"
    try:
        info = os.lstat(git_file)
    except FileNotFoundError:
        return "it was deleted"
    except OSError as exc:
        return f"it cannot be read: {exc.strerror}"
    if stat.S_ISLNK(info.st_mode):
        return f"it is a symbolic link to {os.readlink(git_file)}"
    if stat.S_ISDIR(info.st_mode):
        return "it is a directory now, a repository of its own"
    if not stat.S_ISREG(info.st_mode):
        return "it is not a regular file"
    try:
        fd = os.open(git_file, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as handle:
            text = handle.read(_MAX_GIT_FILE_BYTES + 1)
    except OSError as exc:
        return f"it cannot be read: {exc.strerror}"
    line = os.fsdecode(text).strip()
    if not line.startswith("gitdir:") or "\n" in line:
        return "it is not a gitdir file"
    named = line.removeprefix("gitdir:").strip()
    expected = {os.path.normpath(admin_dir), os.path.realpath(admin_dir)}
    # Joined by hand, not resolved: a link the agent made on the way does not count.
    if os.path.normpath(os.path.join(os.path.realpath(worktree), named)) not in expected:
        return f"it points at {named}"
    return None


def minimal_environment(base: Mapping[str, str]) -> dict[str, str]:
    """The variables of `base` git needs (locale, path, home), none of its secrets."""
    env = {k: v for k, v in base.items() if k in _KEPT_VARIABLES or k.startswith("LC_")}
    env["GIT_TERMINAL_PROMPT"] = "0"
    env["GIT_CONFIG_NOSYSTEM"] = "1"
    env["GIT_CONFIG_GLOBAL"] = os.devnull
    env["GIT_ATTR_NOSYSTEM"] = "1"
    return env


async def _locate(common_dir: Path, worktree: Path, root: Path) -> tuple[Path, str | None]:
    found = await anyio.to_thread.run_sync(_admin_and_tampering, common_dir, worktree)
    if found is None:
        raise WorktreeUnknown(f"not a worktree of {root}: {worktree}")
    return found


def _admin_and_tampering(common_dir: Path, worktree: Path) -> tuple[Path, str | None] | None:
    """Both looks in one worker thread: dispatch takes a pooled worktree through this."""
    admin = find_admin_dir(common_dir, worktree)
    return None if admin is None else (admin, describe_tampering(worktree, admin))


async def checkout_git(
    common_dir: Path, worktree: Path, env: Mapping[str, str], *, root: Path
) -> WorktreeGit:
    """git for checking the user's commits out into a worktree no agent has used (the
    pool's, a fresh one): the user's config (filters included) and environment, the git
    dir named, hooks and fsmonitor off. A `.git` that is not ours is an error here:
    nothing of an agent's is in such a worktree to keep."""
    admin, tampered = await _locate(common_dir, worktree, root)
    git = WorktreeGit(
        worktree,
        admin,
        {**env, "GIT_DIR": str(admin), "GIT_WORK_TREE": str(worktree)},
        _config_options(_ALWAYS_OFF),
        tampered,
    )
    if tampered is not None:
        raise git.tampered_error()
    return git


async def agent_git(
    common_dir: Path,
    worktree: Path,
    env: Mapping[str, str],
    *,
    root: Path,
    extra_config: tuple[str, ...] = (),
) -> WorktreeGit:
    """git for a worktree an agent worked in (see the module docstring). A tampered
    `.git` is recorded in `tampered`, not raised: every command here ignores it, so the
    caller decides (commit the agent's files, then report it)."""
    admin, tampered = await _locate(common_dir, worktree, root)
    hardened = minimal_environment(env)
    hardened.update(GIT_DIR=str(admin), GIT_WORK_TREE=str(worktree))
    options = _config_options((*_ALWAYS_OFF, *_AGENT_OFF, *extra_config))
    defined = await run_git(
        *options, "config", "-z", "--get-regexp", r"^filter\.",
        cwd=worktree, env=hardened, check=False,
    )  # fmt: skip
    if defined.returncode not in (0, 1):  # 1: no filter configured
        raise GitError(f"cannot read the filter config for {worktree}: {defined.stderr.strip()}")
    # Through the environment rather than `-c`: a driver's name may hold any character.
    filters_off = _filters_off(defined.stdout)
    hardened["GIT_CONFIG_COUNT"] = str(len(filters_off))
    for number, (key, value) in enumerate(filters_off):
        hardened[f"GIT_CONFIG_KEY_{number}"] = key
        hardened[f"GIT_CONFIG_VALUE_{number}"] = value
    return WorktreeGit(worktree, admin, hardened, options, tampered)


def _filters_off(config: bytes) -> list[tuple[str, str]]:
    """Settings that make each configured filter driver a no-op: an empty command is
    no filter, and `required=false` keeps git from failing for want of one."""
    names: list[str] = []
    for entry in config.split(b"\0"):
        key = entry.split(b"\n", 1)[0]
        match = _FILTER_KEY.match(key)
        name = os.fsdecode(match[1]) if match else None
        if name is not None and name not in names:
            names.append(name)
    settings: list[tuple[str, str]] = []
    for name in names:
        settings += [(f"filter.{name}.{part}", "") for part in ("clean", "smudge", "process")]
        settings.append((f"filter.{name}.required", "false"))
    return settings


def _config_options(settings: tuple[str, ...]) -> tuple[str, ...]:
    options: list[str] = []
    for setting in settings:
        options += ["-c", setting]
    return tuple(options)


def parse_ident(line: str) -> tuple[str, str] | None:
    """Name and email of a `git var GIT_AUTHOR_IDENT` line ("Name <email> 123 +0000")."""
    match = re.match(r"^(.*?) ?<([^<>]*)> -?\d+ [+-]\d{4}$", line.strip())
    return (match[1], match[2]) if match else None


async def tree_of(git: WorktreeGit) -> str:
    """The tree sha of the worktree's files as they are, its own index untouched (the
    agent or its tools may have staged anything there)."""

    async def stage(env: Mapping[str, str]) -> None:
        await stage_worktree(git.worktree, git.run, env)

    return await tree_through_a_copy_of(git.index, git.run, stage)
