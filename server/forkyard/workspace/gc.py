"""Worktrees that have served their purpose go, and no work goes with them.

Every agent's worktree is a full checkout: left alone they fill the disk. The rules:

- A worktree of an agent the user applied or discarded is removed once it has been in
  that state for the grace period (`worktree.gc_grace_seconds`). A `done`, `failed`,
  `cancelled` or `interrupted` agent's worktree is still waiting for the user: it is
  removed only when the user names the agent (`forkyard gc --agent N`).
- Before a worktree goes, everything uncommitted in it is committed, and its last commit
  is kept under `refs/forkyard/<applied|discarded|removed>/<n>`, a ref git never
  collects. Then the folder is renamed into a trash folder (instant, so the repository's
  write lock is held only for git's bookkeeping) and deleted.
- Entries of worktrees whose folder was deleted by hand are pruned (`git worktree
  prune`) and reported; a detached one's last commit is kept under
  `refs/forkyard/pruned/<name>`.
- Worktrees under Forkyard's folder that no agent owns are reported, never removed.

Everything removed is logged, and a dry run reports the same without changing anything.
This module knows agents only as protocol models: the caller (the orchestrator, or the
`forkyard gc` command) records what happened to them through `on_removed`.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import anyio
import anyio.to_thread

from forkyard.workspace.git import (
    KEEP_ON_REMOVE_MESSAGE,
    GitError,
    Repository,
    WorktreeInfo,
)
from forkyard.workspace.hardened import find_admin_dir
from forkyard.workspace.overlay import (
    bases_directory,
    collect_bases,
    layer_of,
    overlay_layer,
    remount_layers,
)
from forkyard.workspace.pool import (
    empty_trash_folder,
    is_internal,
    move_to_trash,
    pool_directory,
    prune_worktrees,
    trash_directory,
)
from forkyard_protocol.models import ACTIVE_STATES, Agent

logger = logging.getLogger(__name__)

#: States in which the user has finished with an agent: its worktree may go after the
#: grace period.
REVIEWED_STATES = frozenset({"applied", "discarded"})


@dataclass
class Removal:
    agent: Agent
    worktree: str
    keep_ref: str
    disk_bytes: int
    #: The commit kept under `keep_ref`; None in a dry run.
    kept: str | None = None


@dataclass
class Kept:
    agent: Agent
    reason: str


@dataclass
class Vanished:
    """A registered worktree whose folder is gone."""

    path: str
    branch: str | None
    head: str | None
    agent_number: int | None
    keep_ref: str | None = None


@dataclass
class GcReport:
    dry_run: bool
    removed: list[Removal] = field(default_factory=list)
    kept: list[Kept] = field(default_factory=list)
    vanished: list[Vanished] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    trash: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def freed_bytes(self) -> int:
        return sum(removal.disk_bytes for removal in self.removed)

    def lines(self) -> list[str]:
        """The report for people, one line per thing."""
        would = "would remove" if self.dry_run else "removed"
        out = []
        for removal in self.removed:
            agent = removal.agent
            commit = f" ({removal.kept[:12]})" if removal.kept else ""
            out.append(
                f"{would} agent #{agent.number} ({agent.state}) worktree {removal.worktree}, "
                f"{human_bytes(removal.disk_bytes)}; work kept at {removal.keep_ref}{commit}"
            )
        for vanished in self.vanished:
            owner = f"agent #{vanished.agent_number}'s " if vanished.agent_number else ""
            keeps = (
                f"; its commit kept at {vanished.keep_ref}"
                if vanished.keep_ref
                else f"; branch {vanished.branch} keeps its commits"
                if vanished.branch
                else ""
            )
            verb = "would prune" if self.dry_run else "pruned"
            out.append(f"{verb} {owner}worktree {vanished.path}: its folder was deleted{keeps}")
        for path in self.trash:
            out.append(f"{'would delete' if self.dry_run else 'deleted'} leftover {path}")
        for kept in self.kept:
            agent = kept.agent
            out.append(
                f"kept agent #{agent.number} ({agent.state}) {agent.worktree}: {kept.reason}"
            )
        for path in self.orphans:
            out.append(f"kept {path}: no agent owns it (remove it by hand if unwanted)")
        out.extend(f"error: {error}" for error in self.errors)
        total = f"{'would free' if self.dry_run else 'freed'} {human_bytes(self.freed_bytes)}"
        out.append(total)
        return out


OnRemoved = Callable[[Agent, Removal], Awaitable[None]]


def keep_ref_for(agent: Agent) -> str:
    kind = agent.state if agent.state in REVIEWED_STATES else "removed"
    return f"refs/forkyard/{kind}/{agent.number}"


def age_seconds(agent: Agent, now: datetime) -> float:
    try:
        changed = datetime.fromisoformat(agent.updated_at)
    except ValueError:
        return 0.0
    if changed.tzinfo is None:
        changed = changed.replace(tzinfo=UTC)
    return (now - changed).total_seconds()


def removal_reason(
    agent: Agent, *, now: datetime, grace_seconds: float, forced: Collection[int]
) -> str | None:
    """None when the agent's worktree may go now, else why it stays."""
    if agent.state in ACTIVE_STATES or agent.state == "queued":
        return f"agent is {agent.state}"
    if agent.number in forced:
        return None
    if agent.state not in REVIEWED_STATES:
        return (
            f"waiting for review; removed once applied or discarded, or with "
            f"`forkyard gc --agent {agent.number}`"
        )
    age = age_seconds(agent, now)
    if age < grace_seconds:
        return (
            f"{agent.state} {human_duration(age)} ago; goes after {human_duration(grace_seconds)}"
        )
    return None


async def collect_garbage(
    repository: Repository,
    agents: Sequence[Agent],
    *,
    worktrees_dir: Path,
    grace_seconds: float,
    now: datetime | None = None,
    dry_run: bool = False,
    forced: Collection[int] = (),
    on_removed: OnRemoved | None = None,
) -> GcReport:
    """Prune vanished worktrees, remove the worktrees the rules allow, empty the trash;
    report all of it. A failure to remove one worktree is reported and the rest goes
    on; a worktree whose work cannot be committed first is never removed."""
    now = now or datetime.now(UTC)
    report = GcReport(dry_run=dry_run)
    await remount_layers(worktrees_dir)  # an unmounted overlay would look vanished to git
    listed = await repository.list_worktrees()
    await _prune_vanished(repository, listed, agents, worktrees_dir, report)
    for agent in agents:
        if not agent.worktree:
            continue
        reason = removal_reason(agent, now=now, grace_seconds=grace_seconds, forced=forced)
        if reason is not None:
            report.kept.append(Kept(agent, reason))
            continue
        size = await disk_usage(Path(agent.worktree), repository.common_dir)
        removal = Removal(agent, agent.worktree, keep_ref_for(agent), size)
        if collected := await _collected_elsewhere(repository, agent, removal.keep_ref):
            # Another gc (`forkyard gc` next to a running server) got there first: only
            # the agent's record is behind.
            removal.kept = collected
            if on_removed is not None and not dry_run:
                await on_removed(agent, removal)
        elif not dry_run:
            try:
                removal.kept = await remove_agent_worktree(
                    repository,
                    Path(agent.worktree),
                    agent.branch,
                    removal.keep_ref,
                    trash_directory(worktrees_dir),
                )
            except (GitError, OSError) as exc:
                report.errors.append(f"agent #{agent.number}: {exc}; its worktree is kept")
                continue
            logger.info(
                "gc: removed agent #%s's worktree %s, work kept at %s (%s)",
                agent.number, agent.worktree, removal.keep_ref, removal.kept,
            )  # fmt: skip
            if on_removed is not None:
                await on_removed(agent, removal)
        report.removed.append(removal)
    report.orphans = await anyio.to_thread.run_sync(_orphans, listed, agents, worktrees_dir)
    await _empty_trash(worktrees_dir, report)
    if not dry_run:
        await collect_bases(worktrees_dir)
    return report


async def _collected_elsewhere(repository: Repository, agent: Agent, keep_ref: str) -> str | None:
    """The kept commit, when the worktree, its record and its branch are gone and the
    keep ref exists; else None."""
    if not agent.worktree or await anyio.Path(agent.worktree).exists():
        return None
    if agent.branch and await repository.branch_tip(agent.branch):
        return None
    try:
        return await repository.resolve(keep_ref)
    except GitError:
        return None


async def remove_agent_worktree(
    repository: Repository, worktree: Path, branch: str | None, keep_ref: str, trash_dir: Path
) -> str:
    """Commit what is uncommitted, keep the last commit under `keep_ref`, remove the
    worktree and its branch. Returns the kept commit.

    `commit_worktree` refuses a folder that is not a worktree of this repository, in
    which case nothing is removed; it commits a worktree whose `.git` the agent changed
    without using that `.git`, and the worktree goes like any other. The folder is moved
    into the trash before git's records go, so the lock is never held while thousands of
    files are deleted.
    """
    trashed: Path | None = None
    if await anyio.Path(worktree).is_dir():
        await repository.commit_worktree(worktree, KEEP_ON_REMOVE_MESSAGE, tampered_ok=True)
        if await overlay_layer(worktree) is None:  # an overlay's layer goes with its record
            trashed = await move_to_trash(worktree, trash_dir)
    try:
        kept = await repository.remove_worktree(worktree, branch, keep_ref)
    except BaseException:
        if trashed is not None:
            with anyio.CancelScope(shield=True):
                await anyio.Path(trashed).rename(worktree)
        raise
    if trashed is not None:
        await empty_trash_folder(trashed)
    return kept


async def _prune_vanished(
    repository: Repository,
    listed: Sequence[WorktreeInfo],
    agents: Sequence[Agent],
    worktrees_dir: Path,
    report: GcReport,
) -> None:
    vanished = [info for info in listed if info.prunable]
    if not vanished:
        return
    owners = {Path(a.worktree): a.number for a in agents if a.worktree}
    pool = pool_directory(worktrees_dir)
    for info in vanished:
        path = Path(info.path)  # git lists absolute paths
        entry = Vanished(str(info.path), info.branch, info.head, owners.get(path))
        if info.detached and info.head and not path.is_relative_to(pool):
            entry.keep_ref = f"refs/forkyard/pruned/{path.name}"
        report.vanished.append(entry)
    if report.dry_run:
        return
    async with repository.write_lock:
        for entry in report.vanished:
            if entry.keep_ref and entry.head:
                await repository.git("update-ref", entry.keep_ref, entry.head)
        await prune_worktrees(repository)
    for entry in report.vanished:
        logger.info("gc: pruned worktree %s (folder deleted by hand)", entry.path)


def _orphans(
    listed: Sequence[WorktreeInfo], agents: Sequence[Agent], worktrees_dir: Path
) -> list[str]:
    """Registered worktrees under Forkyard's folder that no agent owns (blocking)."""
    root = worktrees_dir.resolve()
    owned = {Path(a.worktree).resolve() for a in agents if a.worktree}
    found = []
    for info in listed:
        path = Path(info.path).resolve()
        if info.prunable or not path.is_relative_to(root) or path in owned:
            continue
        if not is_internal(path, worktrees_dir):
            found.append(str(info.path))
    return found


async def _empty_trash(worktrees_dir: Path, report: GcReport) -> None:
    """Leftovers of removals a stopped server did not finish."""
    trash = anyio.Path(trash_directory(worktrees_dir))
    if not await trash.is_dir():
        return
    async for child in trash.iterdir():
        report.trash.append(str(child))
        if not report.dry_run:
            logger.info("gc: deleting leftover %s", child)
            await empty_trash_folder(Path(child))


# --- disk use ---------------------------------------------------------------------------


async def disk_usage(path: Path, common_dir: Path | None = None) -> int:
    """Bytes a worktree takes on disk: its files (links not followed, hard links once)
    and, given the repository's `common_dir`, its record there (index, logs). 0 when it
    is gone. The record is found from the repository's side: the worktree's `.git` is
    the agent's to change, and could name any folder to walk."""
    return await anyio.to_thread.run_sync(_worktree_bytes, path, common_dir)


def _worktree_bytes(path: Path, common_dir: Path | None) -> int:
    if not path.is_dir():
        return 0
    seen: set[tuple[int, int]] = set()
    layer = layer_of(path)
    # An overlay worktree costs its own layer: the base checkout is shared (and counted
    # once, as the pool's).
    total = _tree_bytes(path if layer is None else layer.root, seen)
    admin = find_admin_dir(common_dir, path) if common_dir is not None else None
    if admin is not None:
        total += _tree_bytes(admin, seen)
    return total


def _tree_bytes(root: Path, seen: set[tuple[int, int]]) -> int:
    total = 0
    stack = [str(root)]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            key = (info.st_dev, info.st_ino)
            if key in seen:
                continue
            seen.add(key)
            total += info.st_blocks * 512
            if stat.S_ISDIR(info.st_mode):
                stack.append(entry.path)
    return total


def human_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def human_duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


@dataclass
class WorktreeUse:
    """One folder under Forkyard's worktrees and what it costs on disk."""

    path: str
    disk_bytes: int
    kind: Literal["agent", "pool", "orphan"]
    agent: Agent | None = None
    exists: bool = True


async def worktree_usage(
    repository: Repository, agents: Sequence[Agent], worktrees_dir: Path, *, measure: bool = True
) -> list[WorktreeUse]:
    """Disk used per agent (newest first), by the warm pool, and by worktrees no agent
    owns. Without `measure`, only which folders there are (every size 0): walking big
    worktrees takes a while."""

    async def size_of(path: Path) -> int:
        return await disk_usage(path, repository.common_dir) if measure else 0

    uses = []
    for agent in sorted(agents, key=lambda a: a.number, reverse=True):
        if agent.worktree:
            exists = await anyio.Path(agent.worktree).is_dir()
            size = await size_of(Path(agent.worktree)) if exists else 0
            uses.append(WorktreeUse(agent.worktree, size, "agent", agent, exists))
    pool = anyio.Path(pool_directory(worktrees_dir))
    if await pool.is_dir():
        async for child in pool.iterdir():
            if await child.is_dir():
                uses.append(WorktreeUse(str(child), await size_of(Path(child)), "pool"))
    bases = anyio.Path(bases_directory(worktrees_dir))
    if await bases.is_dir():
        async for child in bases.iterdir():
            if await child.is_dir() and not child.name.startswith("."):
                uses.append(WorktreeUse(str(child), await size_of(Path(child)), "pool"))
    listed = await repository.list_worktrees()
    for orphan in await anyio.to_thread.run_sync(_orphans, listed, agents, worktrees_dir):
        uses.append(WorktreeUse(orphan, await size_of(Path(orphan)), "orphan"))
    return uses
