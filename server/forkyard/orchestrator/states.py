"""The one table of how an agent's state may move. Every change of state goes through
`check_move` (in `Orchestrator._update`): a move not in the table is a bug, raised where it
happens, so tests see it instead of a client showing an agent in a state it cannot be in.

Staying in a state (progress, a worktree removed by garbage collection) is not a move.
"""

from __future__ import annotations

from collections.abc import Mapping

from forkyard_protocol.models import AgentState

#: "interrupted": the daemon stopped while the agent was active; "queued" from a finished
#: state: a follow-up runs it again (`forkyard/agent/message`).
TRANSITIONS: Mapping[AgentState | None, frozenset[AgentState]] = {
    None: frozenset({"queued"}),
    "queued": frozenset({"starting", "cancelled", "failed", "interrupted"}),
    "starting": frozenset({"running", "failed", "cancelled", "interrupted"}),
    "running": frozenset({"done", "failed", "cancelled", "interrupted"}),
    "done": frozenset({"applied", "discarded", "queued"}),
    "failed": frozenset({"discarded", "queued"}),
    "cancelled": frozenset({"discarded", "queued"}),
    "interrupted": frozenset({"discarded", "queued"}),
    "applied": frozenset({"discarded"}),
    "discarded": frozenset(),
}


class IllegalTransition(RuntimeError):
    """An agent was asked to move between states the table does not join."""


def check_move(number: int, old: AgentState | None, new: AgentState) -> None:
    if old == new:
        return
    if new not in TRANSITIONS.get(old, frozenset()):
        raise IllegalTransition(f"agent #{number} cannot go from {old} to {new}")
