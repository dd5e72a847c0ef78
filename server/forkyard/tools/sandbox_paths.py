"""Which host paths a sandboxed command sees: an allow-list, not the whole host.

The sandbox's root is an empty tmpfs. Into it go the system and toolchain directories,
read-only; the caller's paths (a worktree read-write, the repository's git directory
read-only); and nothing else: not the user's home, other repositories, nor the state
directory that holds other agents' worktrees, the database and the logs. What is found
here costs file system calls, so it is computed once per distinct input and cached:
system directories and toolchains do not move while the server runs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from functools import cache, lru_cache
from pathlib import Path

#: Top-level directories of the system, shown read-only where they exist (or recreated
#: as the same symlink, as `/bin -> usr/bin` on merged-/usr systems).
SYSTEM_DIRS: tuple[str, ...] = (
    "usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc", "opt", "nix", "gnu",
)  # fmt: skip
#: Files of /etc that grant something (password hashes, the host's SSH identity): the
#: sandbox sees them empty. Globs relative to /etc.
HIDDEN_SYSTEM_FILES: tuple[str, ...] = (
    "shadow", "shadow-", "gshadow", "gshadow-", "ssh/ssh_host_*_key", "sudoers",
)  # fmt: skip
#: A PATH entry's ancestor holding one of these is a version manager's root (pyenv,
#: nodenv, rbenv...): its shims need the whole of it.
VERSION_MANAGER_MARKERS: tuple[str, ...] = ("versions",)
#: Toolchains whose PATH entry needs a sibling directory: cargo's proxies run rustup's.
SIBLING_TOOLCHAINS: Mapping[str, str] = {".cargo": ".rustup"}
#: How many ancestors of a PATH entry may be a version manager's root.
_MANAGER_DEPTH = 3


@cache
def system_mounts() -> tuple[str, ...]:
    """bwrap options that show the system read-only, with its secrets blanked."""
    options: list[str] = []
    root = Path("/")
    for name in SYSTEM_DIRS:
        path = root / name
        if path.is_symlink():
            options += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            options += ["--ro-bind", str(path), str(path)]
    for pattern in HIDDEN_SYSTEM_FILES:
        for hidden in sorted(Path("/etc").glob(pattern)):
            if hidden.is_file() and not hidden.is_symlink():
                options += ["--ro-bind", os.devnull, str(hidden)]
    return tuple(options)


@cache
def system_roots() -> tuple[Path, ...]:
    """The system directories as the sandbox shows them (resolved)."""
    roots = [(Path("/") / name).resolve() for name in SYSTEM_DIRS]
    return tuple(root for root in dict.fromkeys(roots) if root.is_dir())


def within(path: Path, roots: Sequence[Path]) -> bool:
    return any(path.is_relative_to(root) for root in roots)


@lru_cache(maxsize=64)
def toolchain_dirs(path_value: str, homes: tuple[str, ...] = ()) -> tuple[Path, ...]:
    """Directories outside the system that the commands on PATH need: the PATH entries
    themselves; a virtualenv's bin brings the virtualenv and the base Python its
    pyvenv.cfg names; a version manager's shims bring the manager's root (~/.pyenv).
    A home directory itself (or `/`) on PATH is refused: that would show everything."""
    refused = {Path("/"), *(Path(home).resolve() for home in homes if home)}
    found: list[Path] = []
    system = system_roots()
    for entry in path_value.split(os.pathsep):
        if not entry or not os.path.isabs(entry):
            continue  # `.` or `bin`: relative to wherever the command runs
        directory = Path(entry).resolve()
        if not directory.is_dir() or within(directory, system):
            continue
        if any(directory == refuse or refuse.is_relative_to(directory) for refuse in refused):
            continue
        for needed in _needed_by(directory, refused):
            if needed not in found and not any(r.is_relative_to(needed) for r in refused):
                found.append(needed)
    return tuple(found)


def _needed_by(directory: Path, refused: set[Path]) -> list[Path]:
    needed = [directory]
    venv_config = directory.parent / "pyvenv.cfg"
    if venv_config.is_file():
        needed = [directory.parent]
        if (base := venv_base(venv_config)) is not None:
            needed.append(base)
    for ancestor in list(directory.parents)[:_MANAGER_DEPTH]:
        if any(r.is_relative_to(ancestor) for r in refused):
            break  # a home, or above one: never a toolchain's root
        if any((ancestor / marker).is_dir() for marker in VERSION_MANAGER_MARKERS):
            needed = [ancestor, *[path for path in needed if not path.is_relative_to(ancestor)]]
            break
    sibling = SIBLING_TOOLCHAINS.get(directory.parent.name)
    if sibling is not None and (directory.parent.parent / sibling).is_dir():
        needed.append(directory.parent.parent / sibling)
    return needed


def venv_base(config: Path) -> Path | None:
    """The Python installation a virtualenv runs on (`home = .../bin` in pyvenv.cfg)."""
    try:
        lines = config.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        key, _, value = line.partition("=")
        if key.strip() == "home" and value.strip():
            home = Path(value.strip()).resolve()
            base = home.parent if home.name == "bin" else home
            return base if base.is_dir() and base != Path("/") else None
    return None


def repository_git_dir(repo_root: Path) -> Path | None:
    """The repository's shared git directory (git's common dir), found by the server:
    `.git` itself, or for a checkout that is a worktree or submodule, what its `.git`
    file names, followed to its `commondir`. Blocking: run it in a worker thread."""
    dot_git = repo_root / ".git"
    if dot_git.is_dir():
        return dot_git.resolve()
    gitdir = _gitdir_of(dot_git)
    if gitdir is None:
        return None
    try:
        common = (gitdir / "commondir").read_text(encoding="utf-8").strip()
    except OSError:
        return gitdir
    resolved = (gitdir / common).resolve()
    return resolved if resolved.is_dir() else gitdir


def _gitdir_of(dot_git: Path) -> Path | None:
    """Where a `.git` file (`gitdir: PATH`) points, or None."""
    if dot_git.is_symlink() or not dot_git.is_file():
        return None
    try:
        text = dot_git.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("gitdir:"):
            target = Path(line.removeprefix("gitdir:").strip())
            if not target.is_absolute():
                target = dot_git.parent / target
            target = target.resolve()
            return target if target.is_dir() else None
    return None


def git_read_paths(repo_root: Path, worktree: Path | None) -> list[Path]:
    """What git inside the sandbox needs to read in `worktree` (None: the command runs
    in the checkout itself): the repository's git directory, and the worktree's own
    `.git` file, to be mounted read-only over itself so the agent cannot repoint it.
    Blocking: run it in a worker thread."""
    git_dir = repository_git_dir(repo_root)
    if git_dir is None:
        return []
    paths = [git_dir]
    if worktree is not None:
        dot_git = worktree / ".git"
        # Only the repository's git directory is shown: a `.git` that points elsewhere
        # reveals nothing, git inside just fails.
        if not dot_git.is_symlink() and (dot_git.is_file() or dot_git.is_dir()):
            paths.append(dot_git)
    return paths
