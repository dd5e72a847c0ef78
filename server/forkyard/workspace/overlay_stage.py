"""`git add -A` for an overlay worktree without walking its tree.

In a full worktree git finds the agent's changes by stat-ing every file. In an overlay
one they are the entries of its upper directory (`overlay.py`): files and links written,
whiteouts for deletions, folders made or made again (opaque) given whole. So the index
is updated for those paths alone, plus any whose index entry differs from the base
checkout (a reset or rebase in the worktree moves the index), through `update-index`
with the same hardened git as everything else on agents' worktrees. What `git add -A`
would leave out stays out: untracked ignored files (`check-ignore`) and anything inside a
`.git`. Should git refuse a path, the plain `add -A` runs instead: slower, never wrong.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import anyio.to_thread

from forkyard.workspace.overlay import Layer, is_opaque, is_whiteout, overlay_layer
from forkyard.workspace.runner import GitError, GitRun

logger = logging.getLogger(__name__)

ADD_ALL = ("-c", "core.splitIndex=false", "-c", "advice.addEmbeddedRepo=false", "add", "-A")


async def stage_worktree(worktree: Path, run: GitRun, env: Mapping[str, str]) -> None:
    """Bring the index `env` names (GIT_INDEX_FILE, else the worktree's own) to the
    worktree's files, as `git add -A` would."""
    layer = await overlay_layer(worktree)
    if layer is None:
        await run(*ADD_ALL, env=env)
        return
    try:
        await _stage_overlay(layer, run, env)
    except GitError as exc:
        logger.info("overlay worktree %s: staged by a full walk (%s)", worktree, exc)
        await run(*ADD_ALL, env=env)


async def _stage_overlay(layer: Layer, run: GitRun, env: Mapping[str, str]) -> None:
    written, whole = await anyio.to_thread.run_sync(upper_paths, layer)
    paths = set(written)
    if whole:
        pathspecs = [f":(literal){path}" for path in whole]
        listed = await run("ls-files", "-z", "--", *pathspecs, env=env)
        paths.update(_split(listed.stdout))
    moved = await run(
        "diff-index", "--cached", "--name-only", "--no-renames", "-z", layer.base.name, env=env
    )
    paths.update(_split(moved.stdout))
    paths = {path for path in paths if not _in_a_git_dir(path)}
    if not paths:
        return
    listing = b"".join(os.fsencode(path) + b"\0" for path in sorted(paths))
    ignored = await run("check-ignore", "-z", "--stdin", input=listing, env=env, check=False)
    if ignored.returncode not in (0, 1):  # 1: none is ignored
        raise GitError(f"check-ignore failed: {ignored.stderr.strip()}")
    paths -= set(_split(ignored.stdout))
    if not paths:
        return
    listing = b"".join(os.fsencode(path) + b"\0" for path in sorted(paths))
    await run(
        "-c", "core.splitIndex=false", "update-index", "--add", "--remove", "--replace",
        "-z", "--stdin", input=listing, env=env,
    )  # fmt: skip


def upper_paths(layer: Layer) -> tuple[list[str], list[str]]:
    """What the upper directory holds: the paths of files, links and whiteouts in it,
    and the paths whose tracked files below must be looked up in the index (deleted or
    replaced folders). Blocking."""
    written: list[str] = []
    whole: list[str] = []
    for path, kind in _entries(layer.upper, layer.lower, ""):
        if kind in ("file", "whiteout"):
            written.append(path)
        if kind in ("whiteout", "opaque"):
            whole.append(path)
    return written, whole


def changed_paths_of(layer: Layer) -> list[str]:
    """The repo-relative paths the agent wrote or deleted (for tests and the bench)."""
    return sorted(path for path, kind in _entries(layer.upper, layer.lower, "") if kind != "opaque")


def _entries(upper: Path, lower: Path | None, prefix: str) -> Iterator[tuple[str, str]]:
    try:
        entries = sorted(os.scandir(upper), key=lambda entry: entry.name)
    except OSError:
        return
    for entry in entries:
        relative = f"{prefix}{entry.name}"
        if entry.name == ".git":
            continue
        if not entry.is_dir(follow_symlinks=False):
            kind = "whiteout" if is_whiteout(Path(entry.path)) else "file"
            yield relative, kind
            continue
        below = None if lower is None else lower / entry.name
        opaque = is_opaque(Path(entry.path))
        if below is not None and (opaque or not below.is_dir() or below.is_symlink()):
            # A folder made where the base has a file (or made again): what the base
            # had there is gone.
            yield relative, "opaque"
            below = None
        yield from _entries(Path(entry.path), below, f"{relative}/")


def _in_a_git_dir(path: str) -> bool:
    return any(part.lower() == ".git" for part in path.split("/"))


def _split(output: bytes) -> list[str]:
    return [os.fsdecode(item) for item in output.split(b"\0") if item]
