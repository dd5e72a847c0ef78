"""The limit check the llm loop makes before each model call: reached at the limit, not
only past it; tokens are input plus output; an unknown cost never stops an agent."""

from __future__ import annotations

import pytest

from forkyard.agents.budget import Budget, budget_reached
from forkyard_protocol import Usage


def used(inputs: int, outputs: int, cost: float | None) -> Usage:
    return Usage(input_tokens=inputs, output_tokens=outputs, cached_tokens=0, cost_usd=cost)


@pytest.mark.parametrize(
    ("usage", "budget", "error"),
    [
        (used(600, 400, 0.01), Budget(max_tokens=1000), "budget reached (1,000 of 1,000 tokens)"),
        (used(1000, 234, 0.01), Budget(max_tokens=1000), "budget reached (1,234 of 1,000 tokens)"),
        (used(600, 399, 0.01), Budget(max_tokens=1000), None),
        (used(10, 10, 0.01), Budget(budget_usd=0.01), "budget reached ($0.0100 of $0.0100)"),
        (used(10, 10, 0.0099), Budget(budget_usd=0.01), None),
        (used(10**6, 10**6, None), Budget(budget_usd=0.01), None),
        (used(10, 10, 5.0), Budget(), None),
        (None, Budget(budget_usd=0.0), "budget reached ($0.0000 of $0.0000)"),
        (None, Budget(budget_usd=1.0, max_tokens=1), None),
    ],
)
def test_the_limit_check(usage: Usage | None, budget: Budget, error: str | None) -> None:
    assert budget_reached(usage, budget) == error
