"""Reviewing finished agents: their diffs kept ready, hunks located on the user's current
text, and apply plans.

The editor layer asks for "what does agent N change in this file, given the text I have
now" many times (diagnostics on every edit, code actions on every cursor move), so each
`done` agent's diff, base texts and agent texts are computed once, when it finishes, and
kept here until it is applied, discarded or runs again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import anyio

from forkyard.errors import InvalidRequest, WrongState
from forkyard.workspace import confined
from forkyard.workspace.apply import FilePlan, confine_plans, paths_to_read, plan_change_apply
from forkyard.workspace.diff import files_in_commit
from forkyard.workspace.hunks import LocatedHunk, locate_hunks
from forkyard_protocol.models import Agent, Conflict, FileChange

if TYPE_CHECKING:
    from forkyard.orchestrator.orchestrator import Orchestrator

logger = logging.getLogger(__name__)

#: One changed file with both sides: (change, base text, agent's text).
FileSides = tuple[FileChange, str | None, str | None]


class AgentSource(Protocol):
    """Where the review gets agents and their files: the orchestrator in-process, the
    daemon for a front."""

    def resolve_agent(self, ref: str) -> Agent: ...

    async def review_files(self, agent: Agent) -> list[FileSides]: ...


CurrentText = Callable[[str], Awaitable[str | None]]


@dataclass
class FileReview:
    change: FileChange
    base_text: str | None
    agent_text: str | None
    #: (current text) -> located hunks; locating is pure but not free on big files.
    _located: tuple[str, list[LocatedHunk]] | None = None

    def cached(self, current_text: str) -> list[LocatedHunk] | None:
        """The located hunks if already computed for exactly this text (cheap)."""
        if self._located is not None and self._located[0] == current_text:
            return self._located[1]
        return None

    async def located_async(self, current_text: str) -> list[LocatedHunk]:
        """`located`, in a worker thread unless already known."""
        cached = self.cached(current_text)
        if cached is not None:
            return cached
        return await anyio.to_thread.run_sync(self.located, current_text)

    def located(self, current_text: str) -> list[LocatedHunk]:
        """Blocking for big files: callers run it in a worker thread."""
        if self._located is not None and self._located[0] == current_text:
            return self._located[1]
        if self.base_text is None or self.change.binary:
            located: list[LocatedHunk] = []
        else:
            located = locate_hunks(self.base_text, current_text, self.change.hunks)
        self._located = (current_text, located)
        return located


@dataclass
class AgentReview:
    agent: Agent
    files: dict[str, FileReview] = field(default_factory=dict)


@dataclass
class ApplyPlan:
    agent: Agent
    plans: list[FilePlan]
    conflicts: list[Conflict]
    complete: bool
    """True when, once applied, nothing of the agent's change is left to apply."""


def _read_texts(worktree: Path | None, paths: list[str]) -> dict[str, str | None]:
    """The agent's version of each file (blocking: run in a worker thread). Paths come
    from git's own diff of the worktree, so they are inside it."""
    texts: dict[str, str | None] = {}
    root = worktree.resolve() if worktree else None
    for path in paths:
        texts[path] = None
        if worktree is None or root is None:
            continue
        target = worktree / path
        try:
            if target.is_symlink():
                # git stores a symlink as its target path; never follow it (it may
                # point outside the worktree).
                texts[path] = os.readlink(target)
            elif target.resolve().is_relative_to(root):
                texts[path] = target.read_text(encoding="utf-8", errors="replace")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            pass
    return texts


async def load_review_files(orchestrator: Orchestrator, agent: Agent) -> list[FileSides]:
    """The agent's diff and both sides of every changed file (the daemon's half of a
    review: it owns the worktrees)."""
    root = orchestrator.repository.root
    diff = await orchestrator.diff(agent.id)
    changes = diff.files if diff else []
    base_paths = [c.old_path or c.path for c in changes if c.status != "added"]
    base_texts = await files_in_commit(root, agent.base_ref, base_paths)
    worktree = Path(agent.worktree) if agent.worktree else None
    agent_paths = [c.path for c in changes if c.status != "deleted"]
    agent_texts = await anyio.to_thread.run_sync(_read_texts, worktree, agent_paths)
    return [
        (
            change,
            None if change.status == "added" else base_texts.get(change.old_path or change.path),
            agent_texts.get(change.path),
        )
        for change in changes
    ]


class ReviewService:
    """The front's half: each done agent's files kept, hunks located on current text."""

    def __init__(self, source: AgentSource) -> None:
        self.source = source
        self._reviews: dict[str, AgentReview] = {}

    def reviews(self) -> list[AgentReview]:
        """Newest agent first."""
        return sorted(self._reviews.values(), key=lambda r: r.agent.number, reverse=True)

    def for_path(self, path: str) -> list[tuple[AgentReview, FileReview]]:
        return [(r, r.files[path]) for r in self.reviews() if path in r.files]

    def drop(self, agent_id: str) -> AgentReview | None:
        return self._reviews.pop(agent_id, None)

    def cached(self, agent_id: str) -> AgentReview | None:
        return self._reviews.get(agent_id)

    async def load(self, agent: Agent) -> AgentReview:
        """The agent's diff and both sides of every changed file, read once."""
        review = AgentReview(agent)
        for change, base_text, agent_text in await self.source.review_files(agent):
            review.files[change.path] = FileReview(change, base_text, agent_text)
        self._reviews[agent.id] = review
        return review

    async def get(self, agent_ref: str) -> AgentReview:
        agent = self.source.resolve_agent(agent_ref)
        if agent.state != "done":
            raise WrongState(
                f"agentId: agent #{agent.number} is {agent.state}; only a done agent applies"
            )
        review = self._reviews.get(agent.id)
        if review is None or review.agent.updated_at != agent.updated_at:
            review = await self.load(agent)
        return review

    async def plan(
        self,
        agent_ref: str,
        current_text: CurrentText,
        paths: Collection[str] | None = None,
        hunk_ids: Collection[str] | None = None,
    ) -> ApplyPlan:
        review = await self.get(agent_ref)
        files = list(review.files.values())
        if paths is not None:
            unknown = set(paths) - set(review.files)
            if unknown:
                raise InvalidRequest(
                    f"paths: agent #{review.agent.number} did not change "
                    + ", ".join(sorted(unknown))
                )
            files = [f for f in files if f.change.path in paths]
        if hunk_ids is not None:
            wanted = set(hunk_ids)
            known = {h.id for f in files for h in f.change.hunks}
            if unknown_ids := wanted - known:
                raise InvalidRequest(f"hunkIds: unknown hunk ids {sorted(unknown_ids)}")
            files = [f for f in files if any(h.id in wanted for h in f.change.hunks)]
        plans: list[FilePlan] = []
        conflicts: list[Conflict] = []
        for file in files:
            if file.change.binary:
                conflicts.append(
                    Conflict(
                        path=file.change.path,
                        reason="binary file: take it with "
                        f"`git checkout {review.agent.branch} -- {file.change.path}`",
                    )
                )
                continue
            current = {p: await current_text(p) for p in paths_to_read(file.change)}
            file_plans = await anyio.to_thread.run_sync(
                lambda f=file, c=current: plan_change_apply(  # type: ignore[misc]
                    f.change, f.base_text, f.agent_text, c, hunk_ids
                )
            )
            for plan in file_plans:
                conflicts.extend(plan.conflicts)
            plans.extend(file_plans)
        whole = paths is None and hunk_ids is None
        selected_all = whole or (
            len(files) == len(review.files)
            and (hunk_ids is None or set(hunk_ids) >= {h.id for f in files for h in f.change.hunks})
        )
        return ApplyPlan(review.agent, plans, conflicts, complete=selected_all and not conflicts)

    async def confined_plan(
        self,
        root: Path,
        agent_ref: str,
        current_text: CurrentText,
        paths: Collection[str] | None = None,
        hunk_ids: Collection[str] | None = None,
    ) -> ApplyPlan:
        """`plan`, without anything that would write through a symbolic link or outside
        the checkout `root`, on either side: those changes become conflicts saying so.
        The one plan every front applies (an editor's edit, the terminal's write)."""
        plan = await self.plan(agent_ref, current_text, paths, hunk_ids)
        review = await self.get(plan.agent.id)
        changes = [file.change for file in review.files.values()]
        worktree = Path(plan.agent.worktree) if plan.agent.worktree else None
        found = await anyio.to_thread.run_sync(
            confined.apply_problems,
            root,
            worktree,
            [file_plan.path for file_plan in plan.plans],
            [change.path for change in changes if change.status != "deleted"],
        )
        if not found:
            return plan
        plans, conflicts, dropped = confine_plans(plan.plans, changes, found)
        kept = [c for c in plan.conflicts if c.path not in dropped]
        return replace(plan, plans=plans, conflicts=kept + conflicts, complete=False)
