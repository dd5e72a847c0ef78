"""An agent's budget: the limits of its model calls, and whether it has reached them.

The check runs before each model call, on what the agent used so far (all its runs), so
a budget stops an agent after the call that crossed it, never in the middle of one. A
cost is compared only when it is known: an unpriced model's dollars are not guessed.

The limits the person set across agents (a day's, a thread's) come along as `shared`,
asked after the agent's own: the orchestrator's ledger knows those sums, not the agent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from forkyard_protocol import Usage

#: Every error of an agent stopped by its budget starts with this (docs/protocol.md).
BUDGET_REACHED = "budget reached"


@dataclass(frozen=True)
class Budget:
    """An agent's limits; None: no limit."""

    budget_usd: float | None = None
    max_tokens: int | None = None
    #: The error of a reached budget shared with other agents and the chat, or None.
    #: Called before each model call, from whichever thread makes the check.
    shared: Callable[[], str | None] | None = None


def budget_reached(used: Usage | None, budget: Budget) -> str | None:
    """The failed agent's error when `used` reached `budget`, else None. Nothing used
    yet counts as no tokens and no cost (a budget of $0 stops before the first call)."""
    used = used or Usage(cost_usd=0.0)
    tokens = used.input_tokens + used.output_tokens
    if budget.max_tokens is not None and tokens >= budget.max_tokens:
        return f"{BUDGET_REACHED} ({tokens:,} of {budget.max_tokens:,} tokens)"
    cost = used.cost_usd
    if budget.budget_usd is not None and cost is not None and cost >= budget.budget_usd:
        return f"{BUDGET_REACHED} (${cost:.4f} of ${budget.budget_usd:.4f})"
    return budget.shared() if budget.shared is not None else None
