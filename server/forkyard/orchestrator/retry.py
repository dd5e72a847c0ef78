"""Retry: an agent that failed, was interrupted (the daemon stopped under it: a window
reloaded, a machine slept) or was cancelled runs its task again as a new agent, on the
same base commit, so that the person gets the run they asked for without retyping it.

A new agent rather than the old one queued again: the old run's log, worktree and error
stay as they were, to compare with; a follow-up in the old worktree remains
`forkyard/agent/message`. Kept out of `orchestrator.py`, which only dispatches.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from forkyard.errors import WrongState
from forkyard_protocol.messages import AgentDispatchParams
from forkyard_protocol.models import Agent

if TYPE_CHECKING:
    from forkyard.orchestrator.orchestrator import Orchestrator

#: The states a retry starts from: runs that did not finish their task.
RETRYABLE = ("failed", "interrupted", "cancelled")


def retry_params(agent: Agent) -> AgentDispatchParams:
    """The dispatch that runs `agent`'s task again: same task, role, backend, title,
    thread, budget and base commit (already a snapshot when it was made from the
    checkout, so the checkout's uncommitted files are not taken again)."""
    return AgentDispatchParams(
        task=agent.task,
        role=agent.role,
        backend=agent.backend,
        title=agent.title,
        thread_id=agent.thread_id,
        base_ref=agent.base_ref,
        include_uncommitted=False,
        budget_usd=agent.budget_usd,
        max_tokens=agent.max_tokens,
    )


async def retry(orchestrator: Orchestrator, ref: str) -> Agent:
    """The new agent, queued; WrongState when the agent did not fail, stop or get
    interrupted (a done agent is reviewed, a running one is still going)."""
    agent = orchestrator.resolve(ref).agent
    if agent.state not in RETRYABLE:
        raise WrongState(
            f"agentId: agent #{agent.number} is {agent.state}; only a failed, interrupted "
            "or cancelled agent can be retried"
        )
    return await orchestrator.dispatch(retry_params(agent))
