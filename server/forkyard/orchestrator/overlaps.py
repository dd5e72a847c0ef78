"""Overlaps between done agents (`Agent.overlaps`): kept current when an agent finishes,
is rebased, or stops being done (applied, discarded, run again).

Each done agent's changed lines are kept as spans (`workspace/overlaps.py`), read from the
diff its finish already made; an agent known only from the store (the daemon restarted)
has its diff made once, when first needed. The comparison runs in a worker thread, one
agent against all the others, so a 32nd agent finishing costs one pass over 31 span lists
of the files it shares with them, and never the event loop's time.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import anyio

from forkyard.workspace.diff import files_in_commit
from forkyard.workspace.overlaps import (
    AgentSpans,
    BaseMap,
    overlapping_paths,
    overlaps_with,
    shared_paths_needing_texts,
)
from forkyard_protocol.models import Agent, FileChange, Overlap

if TYPE_CHECKING:
    from forkyard.orchestrator.orchestrator import Orchestrator
    from forkyard.orchestrator.runtime import AgentRuntime

logger = logging.getLogger(__name__)


class OverlapTracker:
    """One per orchestrator."""

    def __init__(self, orchestrator: Orchestrator) -> None:
        self.o = orchestrator
        self._spans: dict[str, AgentSpans] = {}
        self._texts: dict[tuple[str, str], str | None] = {}
        self._maps: dict[tuple[str, str, str], BaseMap] = {}
        self._lock = anyio.Lock()

    async def spans(self, agent: Agent) -> AgentSpans | None:
        """The agent's spans, its diff made if not known yet (after a restart)."""
        known = self._spans.get(agent.id)
        if known is not None and known.base == agent.base_ref:
            return known
        try:
            diff = await self.o.diff(agent.id)
        except Exception as exc:  # a worktree gone: it overlaps nothing we can see
            logger.info("agent #%s: no diff for overlaps: %s", agent.number, exc)
            return None
        spans = AgentSpans.of(agent.id, agent.base_ref, diff.files if diff else [])
        self._spans[agent.id] = spans
        return spans

    async def agent_done(self, runtime: AgentRuntime, files: Sequence[FileChange]) -> None:
        """The agent is done (or was rebased) with these changes: its overlaps, and its
        entry in every other done agent's, computed again."""
        async with self._lock:
            agent = runtime.agent
            if agent.state != "done":
                return
            mine = AgentSpans.of(agent.id, agent.base_ref, files)
            self._spans[agent.id] = mine
            others = await self._other_spans(agent.id)
            await self._fetch_texts(mine, others)
            texts, maps = dict(self._texts), self._maps
            found = await anyio.to_thread.run_sync(lambda: overlaps_with(mine, others, texts, maps))
            mine_now = [Overlap(agent_id=i, paths=p) for i, p in found.items()]
            await self._set(runtime, sorted(mine_now, key=lambda o: self._number(o.agent_id)))
            for other in others:
                await self._set_entry(other.agent_id, agent.id, found.get(other.agent_id, []))

    async def agent_left(self, agent_id: str) -> None:
        """The agent is no longer done: it overlaps nobody any more."""
        async with self._lock:
            self._spans.pop(agent_id, None)
            for runtime in self._done_runtimes():
                try:
                    await self._set_entry(runtime.agent.id, agent_id, [])
                except Exception:  # the other agent's record only: never the caller's
                    logger.exception("agent #%s: could not update its overlaps", agent_id)

    async def pairwise(self, agents: Sequence[Agent]) -> list[tuple[str, str, list[str]]]:
        """Overlaps between each pair of `agents` (in their order), for `compare`."""
        async with self._lock:
            spans = [s for a in agents if (s := await self.spans(a)) is not None]
            for index, first in enumerate(spans):
                await self._fetch_texts(first, spans[index + 1 :])
            texts, maps = dict(self._texts), self._maps

            def compute() -> list[tuple[str, str, list[str]]]:
                found = []
                for index, first in enumerate(spans):
                    for second in spans[index + 1 :]:
                        if paths := overlapping_paths(first, second, texts, maps):
                            found.append((first.agent_id, second.agent_id, paths))
                return found

            return await anyio.to_thread.run_sync(compute)

    # --- helpers ------------------------------------------------------------------------

    def _done_runtimes(self) -> list[AgentRuntime]:
        return [self.o.resolve(agent.id) for agent in self.o.agents() if agent.state == "done"]

    async def _other_spans(self, agent_id: str) -> list[AgentSpans]:
        found = []
        for runtime in self._done_runtimes():
            if runtime.agent.id != agent_id and (spans := await self.spans(runtime.agent)):
                found.append(spans)
        return found

    async def _fetch_texts(self, mine: AgentSpans, others: Sequence[AgentSpans]) -> None:
        """The base texts of shared files where bases differ, read once per (base, path)."""
        wanted: dict[str, set[str]] = {}
        for other in others:
            for path in shared_paths_needing_texts(mine, other):
                for base in (mine.base, other.base):
                    if (base, path) not in self._texts:
                        wanted.setdefault(base, set()).add(path)
        for base, paths in wanted.items():
            ordered = sorted(paths)
            texts = await files_in_commit(self.o.repository.root, base, ordered)
            for path in ordered:
                self._texts[(base, path)] = texts.get(path)

    async def _set(self, runtime: AgentRuntime, overlaps: list[Overlap]) -> None:
        if runtime.agent.overlaps != overlaps:
            await self.o._update(runtime, overlaps=overlaps)

    async def _set_entry(self, agent_id: str, other_id: str, paths: list[str]) -> None:
        """In agent `agent_id`'s overlaps: `other_id` with these paths (none: removed)."""
        try:
            runtime = self.o.resolve(agent_id)
        except Exception:
            return
        if runtime.agent.state != "done":
            return
        kept = [o for o in runtime.agent.overlaps if o.agent_id != other_id]
        if paths:
            kept.append(Overlap(agent_id=other_id, paths=paths))
            kept.sort(key=lambda o: self._number(o.agent_id))
        await self._set(runtime, kept)

    def _number(self, agent_id: str) -> int:
        try:
            return self.o.resolve(agent_id).agent.number
        except Exception:
            return 0
