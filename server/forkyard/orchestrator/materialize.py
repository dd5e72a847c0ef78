"""Materialize: an agent's overlay worktree made an ordinary full worktree at the same
path, for tools outside the server (`forkyard agent N --materialize`,
`forkyard/agent/materialize`).

An overlay worktree's files exist only while its server runs (its folder is an empty
mount point otherwise); a full one keeps them. The agent must be still: its work is
committed to its branch first, exactly as at the end of a run, so that nothing of it
lives only in the overlay's upper directory when that goes. `Agent.worktree` does not
change, so nothing else needs telling. Kept out of `orchestrator.py`, which dispatches.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from forkyard.errors import InvalidRequest, WrongState
from forkyard.orchestrator.runtime import is_dir
from forkyard.workspace.overlay import overlay_layer
from forkyard.workspace.overlay_materialize import materialize_worktree
from forkyard.workspace.runner import GitError
from forkyard_protocol.models import Agent

if TYPE_CHECKING:
    from forkyard.orchestrator.orchestrator import Orchestrator

#: States in which the agent (or its setup) may be writing its worktree.
BUSY = ("queued", "starting", "running")

#: Agents being materialized now (by id): a follow-up or a second ask is refused.
_BUSY_IDS: set[str] = set()


def refuse_while_materializing(agent: Agent) -> None:
    """WrongState while the agent's worktree is being materialized: a follow-up started
    then would run in a worktree being unmounted and checked out again."""
    if agent.id in _BUSY_IDS:
        raise WrongState(
            f"agentId: agent #{agent.number}'s worktree is being materialized; "
            "send the follow-up again in a moment"
        )


async def materialize(orchestrator: Orchestrator, ref: str) -> Agent:
    """The agent, its worktree now a full one (at once when it already was); WrongState
    while it is queued, starting or running, or when it has no worktree."""
    runtime = orchestrator.resolve(ref)
    agent = runtime.agent
    refuse_while_materializing(agent)
    if agent.state in BUSY:
        raise WrongState(
            f"agentId: agent #{agent.number} is {agent.state}; cancel it or wait for it to "
            "end before materializing its worktree"
        )
    if not agent.worktree or not await is_dir(agent.worktree):
        raise WrongState(f"agentId: agent #{agent.number} has no worktree to materialize")
    worktree = Path(agent.worktree)
    if await overlay_layer(worktree) is None:
        return agent.model_copy(deep=True)
    _BUSY_IDS.add(agent.id)
    try:
        await _materialize(orchestrator, agent, worktree)
    finally:
        _BUSY_IDS.discard(agent.id)
    await orchestrator._log(runtime, "system", f"worktree materialized: {worktree} is a full one")
    return runtime.agent.model_copy(deep=True)


async def _materialize(orchestrator: Orchestrator, agent: Agent, worktree: Path) -> None:
    repository = orchestrator.repository
    try:
        await repository.commit_worktree(
            worktree, f"forkyard: agent #{agent.number}: {agent.title}"
        )
        workers = orchestrator.settings.worktree.checkout_workers
        await materialize_worktree(repository, worktree, workers=workers)
    except GitError as exc:
        raise InvalidRequest(f"cannot materialize agent #{agent.number}'s worktree: {exc}") from exc
