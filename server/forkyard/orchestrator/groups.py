"""Best of N: one task given to N agents at once (dispatch `count`), grouped by a shared
`Agent.group`, and `forkyard/agent/compare`, which puts agents side by side (what each
changed, its check, where they overlap) so the person can pick one."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from forkyard.clock import new_id
from forkyard.orchestrator.titles import title_from_task
from forkyard_protocol.messages import (
    AgentCompareResult,
    AgentDispatchParams,
    CompareEntry,
    PairOverlap,
)
from forkyard_protocol.models import Agent

if TYPE_CHECKING:
    from forkyard.orchestrator.orchestrator import Orchestrator


async def dispatch_group(orchestrator: Orchestrator, params: AgentDispatchParams) -> list[Agent]:
    """`count` agents on the task (one without it); each titled with its place."""
    count = params.count or 1
    if count == 1:
        return [await orchestrator.dispatch(params)]
    group = new_id("group")
    title = (params.title or title_from_task(params.task, params.backend)).strip()
    agents = []
    for index in range(count):
        one = params.model_copy(update={"count": None, "title": f"{title} ({index + 1}/{count})"})
        agents.append(await orchestrator.dispatch(one, group=group))
    return agents


def group_siblings(orchestrator: Orchestrator, agent: Agent) -> list[Agent]:
    """The other agents of the agent's group that are still done (offered for discard
    when one of them is applied)."""
    if agent.group is None:
        return []
    return [
        other
        for other in orchestrator.agents()
        if other.group == agent.group and other.id != agent.id and other.state == "done"
    ]


async def compare(orchestrator: Orchestrator, refs: Sequence[str]) -> AgentCompareResult:
    agents = [orchestrator.resolve(ref).agent.model_copy(deep=True) for ref in refs]
    entries = [
        CompareEntry(
            agent_id=agent.id,
            files=agent.changes.files,
            additions=agent.changes.additions,
            deletions=agent.changes.deletions,
            check=agent.check,
        )
        for agent in agents
    ]
    done = [agent for agent in agents if agent.state == "done"]
    pairs = await orchestrator.overlaps.pairwise(done)
    return AgentCompareResult(
        agents=entries, overlaps=[PairOverlap(a=a, b=b, paths=paths) for a, b, paths in pairs]
    )
