"""An orchestrator's worktrees over their life: the ones no agent owns (told, never
deleted), garbage collection of applied and discarded agents' worktrees (their work kept
in refs first), and the disk each uses."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from forkyard.workspace.gc import GcReport, Removal, WorktreeUse, collect_garbage, worktree_usage
from forkyard.workspace.git import GitError
from forkyard.workspace.pool import is_internal
from forkyard_protocol.models import Agent

if TYPE_CHECKING:
    from forkyard.orchestrator.orchestrator import Orchestrator

logger = logging.getLogger(__name__)

#: How often to look at the settings again while automatic worktree gc is off.
GC_IDLE_SECONDS = 3600.0


class Worktrees:
    def __init__(self, orchestrator: Orchestrator) -> None:
        self.o = orchestrator

    async def orphans_notice(self) -> str | None:
        """The one line to tell a person who opens the repository about worktrees under
        the state directory that no agent owns (kept, never deleted); None if none."""
        try:
            worktrees = await self.o.repository.list_worktrees()
        except GitError as exc:
            return f"cannot list worktrees: {exc}"
        root = self.o.worktrees_dir
        owned_paths = [r.agent.worktree for r in self.o._agents.values() if r.agent.worktree]

        def unowned() -> list[str]:
            resolved_root = root.resolve()
            owned = {Path(p).resolve() for p in owned_paths}
            return [
                str(w.path)
                for w in worktrees
                if Path(w.path).resolve().is_relative_to(resolved_root)
                and Path(w.path).resolve() not in owned
                and not is_internal(Path(w.path), root)
            ]

        orphans = await anyio.to_thread.run_sync(unowned)
        if orphans:
            # A notice is one short line (an editor shows a longer one as a prompt): the
            # folders' names there, their whole paths in the log and `forkyard status`.
            logger.warning("worktrees no agent owns, kept: %s", ", ".join(orphans))
            return f"Forkyard kept {len(orphans)} worktree(s) no agent owns: " + ", ".join(
                Path(p).name for p in orphans
            )
        return None

    async def collect_garbage(
        self, *, dry_run: bool = False, forced: frozenset[int] = frozenset()
    ) -> GcReport:
        """Remove worktrees of agents applied or discarded longer than the grace period
        (and of `forced` agent numbers), their work kept in refs; see workspace/gc.py."""

        async def removed(agent: Agent, removal: Removal) -> None:
            runtime = self.o._agents.get(agent.id)
            if runtime is None:
                return
            await self.o._log(
                runtime,
                "system",
                f"worktree {removal.worktree} removed; its work is kept at {removal.keep_ref}",
            )
            await self.o._update(runtime, worktree=None, branch=None)

        report = await collect_garbage(
            self.o.repository,
            [runtime.agent for runtime in self.o._agents.values()],
            worktrees_dir=self.o.worktrees_dir,
            grace_seconds=self.o.settings.worktree.gc_grace_seconds,
            dry_run=dry_run,
            forced=forced,
            on_removed=removed,
        )
        if report.removed or report.vanished or report.trash or report.errors:
            for line in report.lines():
                logger.info("gc: %s", line)
        return report

    async def collect_garbage_forever(self) -> None:
        while True:
            interval = self.o.settings.worktree.gc_interval_seconds
            if interval > 0:
                try:
                    await self.collect_garbage()
                except (GitError, OSError) as exc:
                    logger.warning("worktree gc of %s failed: %s", self.o.repository.root, exc)
                except Exception:
                    # A bug here must not take the server (its task group) down.
                    logger.exception("worktree gc of %s failed", self.o.repository.root)
            await anyio.sleep(interval or GC_IDLE_SECONDS)

    async def usage(self, *, measure: bool = True) -> list[WorktreeUse]:
        """Disk used per agent's worktree, by the pool, and by unowned worktrees."""
        agents = [r.agent for r in self.o._agents.values()]
        return await worktree_usage(
            self.o.repository, agents, self.o.worktrees_dir, measure=measure
        )
