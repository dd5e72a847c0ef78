"""Copy-on-write worktrees: an agent costs the disk of its changes and starts in
milliseconds, whatever the size of the repository.

A full worktree per agent writes every file of the repository (197 MiB and a second of
kernel time on a 20,000-file one), and deleting thousands of files slows the next
checkouts down. So in overlay mode there is one read-only checkout per base tree (a
plain folder under `.bases/`, shared by every agent on that base), and each agent's
worktree is an overlay mount of it with an upper directory of its own
(`.overlay/<name>/upper`): what the agent writes lands there, a deletion is a whiteout.

The overlay is mounted at the worktree's own path, where the server, its tools, the
sandboxes (which bind the worktree, mounts included) and the person see an ordinary
git worktree: its `.git` file (kept in the upper directory) points at its admin dir,
whose index is a copy of the base's, so `git status` inside stats files and reads none.
bubblewrap 0.8 (Debian 12) has no `--overlay`, so the server mounts the overlay itself:
that takes the right to mount (root, here); elsewhere `choose_mode` picks full
worktrees, once, and says why (`forkyard status`, `:checkhealth`).

The agent's changes are exactly the entries of its upper directory (`changed_paths`):
its diff and its commits pass only those paths to git (hardened as always), so neither
walks the tree. The options `redirect_dir=off,metacopy=off` keep the upper directory a
plain copy of every changed file (a renamed folder is copied, not redirected), so what
is in it is all there is to read. A base checkout is kept while an agent's layer names
it and collected after (`collect_bases`); an agent's work stays in refs exactly as with
full worktrees, since it is committed through the same git.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import anyio
import anyio.to_thread

from forkyard.workspace.runner import GitError, run_git

logger = logging.getLogger(__name__)

OVERLAY_DIR_NAME = ".overlay"
BASES_DIR_NAME = ".bases"
#: Overrides `[worktree] mode` for one server (tests and CI run the suite in each mode).
MODE_ENV = "FORKYARD_WORKTREE_MODE"
#: Plain copies in the upper directory, no index of lower inodes: see the docstring.
MOUNT_OPTIONS = "redirect_dir=off,metacopy=off,index=off"
#: Characters the kernel's option string cannot carry in a path.
_UNSAFE_PATH_CHARACTERS = frozenset(",:\\\n")
_BASE_FILE = "base"
LOCK_REASON = "forkyard overlay worktree: mounted while its server runs"
_TIMEOUT_SECONDS = 30.0

Mode = Literal["overlay", "full"]


@dataclass(frozen=True)
class ModeChoice:
    """The worktree mode a server runs in, and why (shown by `forkyard status`)."""

    mode: Mode
    reason: str


@dataclass(frozen=True)
class Layer:
    """One overlay worktree's own directories, beside the worktree (see `layer_dir`)."""

    worktree: Path
    root: Path
    base: Path

    @property
    def upper(self) -> Path:
        return self.root / "upper"

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def lower(self) -> Path:
        return self.base / "files"


class _Support:
    """Whether overlays can be mounted here: probed once per process."""

    answer: tuple[bool, str] | None = None


def layer_dir(worktree: Path) -> Path:
    """Where an agent's upper and work directories live: next to its worktree, under the
    worktrees folder, so both are found from the worktree's path alone."""
    return worktree.parent / OVERLAY_DIR_NAME / worktree.name


def bases_directory(worktrees_dir: Path) -> Path:
    return worktrees_dir / BASES_DIR_NAME


def layer_of(worktree: Path) -> Layer | None:
    """The worktree's overlay layer, None for a full worktree. Blocking: a few stats."""
    root = layer_dir(worktree)
    try:
        base = Path((root / _BASE_FILE).read_text(encoding="utf-8").strip())
    except OSError:
        return None
    return Layer(worktree, root, base)


async def overlay_layer(worktree: Path) -> Layer | None:
    return await anyio.to_thread.run_sync(layer_of, worktree)


def choose_mode(setting: Mode, environ: Mapping[str, str], support: tuple[bool, str]) -> ModeChoice:
    """The mode to run in: the setting (or `FORKYARD_WORKTREE_MODE`), overlay only where
    `support` says the machine allows it."""
    forced = environ.get(MODE_ENV, "")
    wanted: Mode = "overlay" if forced == "overlay" else "full" if forced == "full" else setting
    source = f"{MODE_ENV}={forced}" if forced in ("overlay", "full") else f"mode = {setting!r}"
    if wanted == "full":
        return ModeChoice("full", f"full worktrees ({source})")
    available, why = support
    if available:
        return ModeChoice("overlay", f"overlay worktrees ({source}; {why})")
    return ModeChoice("full", f"full worktrees: overlays cannot run here ({why})")


async def overlay_support(probe_in: Path) -> tuple[bool, str]:
    """Whether this process can mount overlays in `probe_in` (the worktrees folder):
    tried once, with a real mount, a write and a deletion through it."""
    if _Support.answer is None:
        _Support.answer = await _probe(probe_in)
    return _Support.answer


async def _probe(probe_in: Path) -> tuple[bool, str]:
    if os.geteuid() != 0:
        return False, (
            "mounting an overlay takes root and this server is not (bubblewrap 0.8 has no "
            "--overlay for unprivileged ones)"
        )
    for tool in ("mount", "umount"):
        if await anyio.to_thread.run_sync(shutil.which, tool) is None:
            return False, f"{tool} is not installed"
    if _UNSAFE_PATH_CHARACTERS & set(str(probe_in)):
        return False, f"the worktrees folder's path {probe_in} holds , : or \\"
    await anyio.Path(probe_in).mkdir(parents=True, exist_ok=True)
    scratch = Path(await anyio.to_thread.run_sync(tempfile.mkdtemp, ".probe-", "", probe_in))
    try:
        return await _probe_in(scratch)
    finally:
        with anyio.CancelScope(shield=True):
            await _umount(scratch / "merged")
            await anyio.to_thread.run_sync(shutil.rmtree, scratch, True)


async def _probe_in(scratch: Path) -> tuple[bool, str]:
    lower, upper, work, merged = (scratch / name for name in ("lower", "upper", "work", "merged"))
    await anyio.to_thread.run_sync(_probe_layout, lower, upper, work, merged)
    try:
        await mount_overlay(lower, upper, work, merged)
    except GitError as exc:
        return False, f"the kernel refused an overlay here: {exc}"
    return await anyio.to_thread.run_sync(_probe_writes, upper, merged)


def _probe_layout(lower: Path, upper: Path, work: Path, merged: Path) -> None:
    for folder in (lower, upper, work, merged):
        folder.mkdir()
    (lower / "gone").write_text("x")


def _probe_writes(upper: Path, merged: Path) -> tuple[bool, str]:
    try:
        (merged / "new").write_text("y")
        (merged / "gone").unlink()
        whiteout = os.lstat(upper / "gone")
    except OSError as exc:
        return False, f"an overlay here cannot be written: {exc}"
    if not _is_whiteout(whiteout) or not (upper / "new").is_file():
        return False, "an overlay here does not keep its changes in its upper directory"
    return True, "the server mounts them itself: bubblewrap 0.8 has no --overlay"


async def mount_overlay(lower: Path, upper: Path, work: Path, target: Path) -> None:
    options = f"lowerdir={lower},upperdir={upper},workdir={work},{MOUNT_OPTIONS}"
    command = ["mount", "-t", "overlay", "overlay", "-o", options, str(target)]
    with anyio.fail_after(_TIMEOUT_SECONDS):
        done = await anyio.run_process(command, check=False, env={"PATH": os.defpath})
    if done.returncode != 0:
        message = done.stderr.decode(errors="replace").strip() or f"exit {done.returncode}"
        raise GitError(f"cannot mount the overlay worktree {target}: {message}")


async def _umount(target: Path) -> None:
    """Unmount `target` if it is a mount point; lazily when something still uses it (a
    process of a sandbox being torn down), so that its folders can go."""
    if not await anyio.to_thread.run_sync(os.path.ismount, target):
        return
    env = {"PATH": os.defpath}
    with anyio.fail_after(_TIMEOUT_SECONDS):
        done = await anyio.run_process(["umount", str(target)], check=False, env=env)
        if done.returncode != 0:
            await anyio.run_process(["umount", "-l", str(target)], check=False, env=env)


def _is_whiteout(info: os.stat_result) -> bool:
    return stat.S_ISCHR(info.st_mode) and info.st_rdev == 0


async def ensure_mounted(worktree: Path) -> Layer | None:
    """Mount an overlay worktree whose mount is gone (the machine restarted); None for a
    full worktree. Every git command on a worktree goes through here first."""
    layer = await overlay_layer(worktree)
    if layer is None or await anyio.to_thread.run_sync(os.path.ismount, worktree):
        return layer
    if not await anyio.Path(layer.lower).is_dir():
        raise GitError(
            f"overlay worktree {worktree}: its base checkout {layer.base} is gone; the "
            f"agent's own files are kept in {layer.upper}"
        )
    await anyio.Path(worktree).mkdir(parents=True, exist_ok=True)
    await mount_overlay(layer.lower, layer.upper, layer.work, worktree)
    return layer


async def remount_layers(worktrees_dir: Path) -> list[str]:
    """Mount every overlay worktree of the folder whose mount is gone (after a restart
    of the machine), before git looks at them: unmounted, their `.git` is missing and
    `git worktree prune` would drop their records. Returns the problems, logged."""
    layers = worktrees_dir / OVERLAY_DIR_NAME
    names = await anyio.to_thread.run_sync(_folder_names, layers)
    problems = []
    for name in names:
        try:
            await ensure_mounted(worktrees_dir / name)
        except (GitError, OSError) as exc:
            problems.append(str(exc))
            logger.warning("overlay worktrees: %s", exc)
    return problems


async def unmount_layers(worktrees_dir: Path) -> None:
    """Unmount every overlay worktree of the folder (the server stops); layers stay."""
    names = await anyio.to_thread.run_sync(_folder_names, worktrees_dir / OVERLAY_DIR_NAME)
    for name in names:
        try:
            await _umount(worktrees_dir / name)
        except (OSError, TimeoutError) as exc:
            logger.warning("overlay worktrees: cannot unmount %s: %s", worktrees_dir / name, exc)


def _folder_names(folder: Path) -> list[str]:
    try:
        return sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())
    except OSError:
        return []


async def unmount(worktree: Path) -> Layer | None:
    """Unmount an overlay worktree (its layer stays); None for a full worktree."""
    layer = await overlay_layer(worktree)
    if layer is not None:
        await _umount(worktree)
    return layer


async def remove_layer(worktree: Path, admin_dir: Path | None) -> bool:
    """Unmount an overlay worktree, unlock its record (`admin_dir`, found from the
    repository's side) for `git worktree prune`, and delete its layer and its (now
    empty) folder; its work must be in a ref already. False for a full worktree."""
    layer = await unmount(worktree)
    if layer is None:
        return False
    await anyio.to_thread.run_sync(_remove_layer_files, layer, admin_dir)
    await collect_bases(worktree.parent)
    return True


def _remove_layer_files(layer: Layer, admin_dir: Path | None) -> None:
    if os.path.ismount(layer.worktree):
        raise OSError(f"overlay worktree {layer.worktree} is still mounted")
    if admin_dir is not None:
        (admin_dir / "locked").unlink(missing_ok=True)
    shutil.rmtree(layer.root, ignore_errors=True)
    shutil.rmtree(layer.worktree, ignore_errors=True)


def is_opaque(folder: Path) -> bool:
    """Whether overlayfs marked the folder opaque: nothing of the base below shows."""
    try:
        return os.getxattr(folder, "trusted.overlay.opaque", follow_symlinks=False) == b"y"
    except OSError:
        return False


# --- base checkouts ---------------------------------------------------------------------


#: Base checkouts being handed to a new agent right now (or kept warm): never collected.
_PINS: dict[Path, int] = {}
#: One checkout of a base at a time; a lock lives while someone holds or waits for it.
_BASE_LOCKS: dict[Path, anyio.Lock] = {}


async def base_checkout(
    common_dir: Path, env: Mapping[str, str], bases_dir: Path, tree: str, workers: int
) -> Path:
    """The shared read-only checkout of `tree` (made on first use): `files/` and the
    `index` that describes them, stat data included. The caller pins it."""
    base = bases_dir / tree
    if await anyio.Path(base / "files").is_dir():
        return base
    lock = _BASE_LOCKS.setdefault(base, anyio.Lock())
    try:
        await _make_base(common_dir, env, bases_dir, base, lock, workers)
    finally:
        if not lock.locked() and not lock.statistics().tasks_waiting:
            _BASE_LOCKS.pop(base, None)
    return base


async def _make_base(
    common_dir: Path,
    env: Mapping[str, str],
    bases_dir: Path,
    base: Path,
    lock: anyio.Lock,
    workers: int,
) -> None:
    tree = base.name
    async with lock:
        if await anyio.Path(base / "files").is_dir():
            return
        await anyio.Path(bases_dir).mkdir(parents=True, exist_ok=True)
        scratch = bases_dir / f".new-{tree[:12]}-{uuid.uuid4().hex[:8]}"
        await anyio.Path(scratch / "files").mkdir(parents=True)
        try:
            await _check_out(common_dir, env, scratch, tree, workers)
            await anyio.Path(scratch).rename(base)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(shutil.rmtree, scratch, True)
            raise


async def _check_out(
    common_dir: Path, env: Mapping[str, str], scratch: Path, tree: str, workers: int
) -> None:
    """The user's commit as the user's own checkout would have it (their config and
    filters: nothing of an agent's is involved), with hooks and fsmonitor off."""
    checkout_env = {
        **env,
        "GIT_DIR": str(common_dir),
        "GIT_WORK_TREE": str(scratch / "files"),
        "GIT_INDEX_FILE": str(scratch / "index"),
    }
    options: tuple[str, ...] = ("-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false")
    options += ("-c", f"checkout.workers={workers}", "-c", "core.splitIndex=false")
    await run_git(*options, "read-tree", tree, cwd=scratch, env=checkout_env)
    await run_git(*options, "checkout-index", "--all", "-u", "-q", cwd=scratch, env=checkout_env)


def pin(base: Path) -> None:
    _PINS[base] = _PINS.get(base, 0) + 1


def unpin(base: Path) -> None:
    left = _PINS.get(base, 0) - 1
    if left > 0:
        _PINS[base] = left
    else:
        _PINS.pop(base, None)


def bases_in_use(worktrees_dir: Path) -> set[Path]:
    """The base checkouts an agent's layer names or a dispatch holds. Blocking."""
    used = {base for base in _PINS if base.parent == bases_directory(worktrees_dir)}
    layers = worktrees_dir / OVERLAY_DIR_NAME
    try:
        entries = list(os.scandir(layers))
    except OSError:
        return used
    for entry in entries:
        try:
            used.add(Path((Path(entry.path) / _BASE_FILE).read_text(encoding="utf-8").strip()))
        except OSError:
            continue
    return used


async def collect_bases(worktrees_dir: Path, *, keep: set[Path] | None = None) -> list[Path]:
    """Delete the base checkouts no agent uses any more (and half-made ones); returns
    them. Run after an overlay worktree goes, and by garbage collection."""
    bases_dir = bases_directory(worktrees_dir)
    return await anyio.to_thread.run_sync(_collect_bases, worktrees_dir, bases_dir, keep or set())


def _collect_bases(worktrees_dir: Path, bases_dir: Path, keep: set[Path]) -> list[Path]:
    used = bases_in_use(worktrees_dir) | keep
    removed = []
    try:
        entries = list(os.scandir(bases_dir))
    except OSError:
        return []
    for entry in entries:
        path = Path(entry.path)
        if path in used or entry.name.startswith((".new-", ".gone-")):
            continue
        trashed = bases_dir / f".gone-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(path, trashed)
        except OSError:
            continue
        shutil.rmtree(trashed, ignore_errors=True)
        removed.append(path)
        logger.info("overlay worktrees: removed the unused base checkout %s", path)
    return removed


def write_layer_base(layer_root: Path, base: Path) -> None:
    (layer_root / _BASE_FILE).write_text(f"{base}\n", encoding="utf-8")


def is_whiteout(path: Path) -> bool:
    try:
        return _is_whiteout(os.lstat(path))
    except OSError:
        return False
