"""Path confinement for the agent tools: every path a model names stays inside its root.

The model is not trusted with paths. A path it names is relative to the agent's root
(its worktree, or for explorers the user's checkout) and must still be inside that root
once `..` and every symlink along the way are resolved; a write may never touch the git
metadata (`.git`), through which a worktree could rewrite the user's repository (hooks,
config). Checks run on resolved paths, so `a/../b` is fine and `link/x` through a symlink
that leaves the root is not.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

GIT_DIR = ".git"


class PathRefused(Exception):
    """A path the agent may not use; the message says why, for the model to read."""


def resolve_inside(root: Path, path: str, *, for_write: bool, follow_final: bool = True) -> Path:
    """`path` (relative to `root`) as an absolute path inside `root`, or `PathRefused`.

    `follow_final=False` checks the path's parent only and leaves its last component
    unresolved: deleting a symlink removes the link, wherever it points. Touches the
    file system (symlinks): call it from a worker thread."""
    if not path or not path.strip():
        raise PathRefused("the path is empty; give a path relative to the worktree, e.g. 'src'")
    if "\0" in path:
        raise PathRefused(f"{path!r}: a path may not contain NUL characters")
    posix = PurePosixPath(path)
    if posix.is_absolute() or path.startswith("~"):
        raise PathRefused(
            f"{path}: absolute paths are refused; paths are relative to the worktree "
            f"(e.g. 'src/app.py')"
        )
    real_root = root.resolve()
    candidate = real_root / Path(*posix.parts) if posix.parts else real_root
    if follow_final or candidate == real_root:
        resolved = candidate.resolve()
    else:
        resolved = candidate.parent.resolve() / candidate.name
    if not resolved.is_relative_to(real_root):
        reason = "is a symlink that points" if _through_symlink(real_root, posix) else "resolves"
        raise PathRefused(f"{path}: {reason} outside the worktree; refused")
    relative = resolved.relative_to(real_root)
    if for_write and relative.parts and relative.parts[0] == GIT_DIR:
        raise PathRefused(f"{path}: writing into the git metadata (.git) is refused")
    if for_write and resolved == real_root:
        raise PathRefused(f"{path}: is the worktree itself; name a file inside it")
    return resolved


def relative_display(root: Path, path: Path) -> str:
    """A resolved path inside `root` as the model should see it: POSIX, relative."""
    relative = path.relative_to(root.resolve())
    return relative.as_posix() if relative.parts else "."


def _through_symlink(root: Path, path: PurePosixPath) -> bool:
    """Whether some existing component of `path` is a symlink (for a clearer message)."""
    current = root
    for part in path.parts:
        if part == "..":
            return False
        current = current / part
        if current.is_symlink():
            return True
    return False
