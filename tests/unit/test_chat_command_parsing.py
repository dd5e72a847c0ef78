"""`/dispatch [--role R] <task>`: the role is the word after `--role`, and the task is the
rest exactly as the person typed it."""

from __future__ import annotations

from typing import Any, cast

import pytest

from forkyard.conversation.commands import ChatCommands
from forkyard.orchestrator.orchestrator import Orchestrator
from forkyard_protocol.messages import AgentDispatchParams


class RecordingOrchestrator:
    """Records what a chat command asks the orchestrator to dispatch."""

    def __init__(self) -> None:
        self.dispatched: list[AgentDispatchParams] = []

    async def dispatch(self, params: AgentDispatchParams) -> Any:
        self.dispatched.append(params)

        class Dispatched:
            number, title, role = 1, params.task, params.role

        return Dispatched()


@pytest.mark.parametrize(
    ("typed", "role", "task"),
    [
        ("/dispatch --role r refactor the parser", "r", "refactor the parser"),
        ("/dispatch --role reviewer  review  'src/a b.py'", "reviewer", "review  'src/a b.py'"),
        ("/dispatch write the docs", "worker", "write the docs"),
        ('/dispatch fix "unbalanced quote', "worker", 'fix "unbalanced quote'),
    ],
)
async def test_the_role_is_taken_and_the_task_kept_as_typed(
    typed: str, role: str, task: str
) -> None:
    orchestrator = RecordingOrchestrator()
    commands = ChatCommands(cast(Orchestrator, orchestrator))
    reply = await commands.run(typed, None)
    [params] = orchestrator.dispatched
    assert (params.role, params.task) == (role, task), reply


async def test_a_role_without_a_task_is_told_the_usage() -> None:
    orchestrator = RecordingOrchestrator()
    reply = await ChatCommands(cast(Orchestrator, orchestrator)).run("/dispatch --role r", None)
    assert "Usage" in reply
    assert orchestrator.dispatched == []


class BudgetOrchestrator:
    """Records the budgets a chat command sets; the agent is finished (failed)."""

    def __init__(self) -> None:
        self.budgets: list[tuple[str, float | None]] = []

    async def set_budget(self, ref: str, *, budget_usd: float | None = None) -> Any:
        self.budgets.append((ref, budget_usd))

        class Updated:
            number, state = int(ref), "failed"

        Updated.budget_usd = budget_usd  # type: ignore[attr-defined]
        return Updated()


@pytest.mark.parametrize(
    ("typed", "ref", "usd"),
    [("/budget 3 2.00", "3", 2.0), ("/budget #12 $0.5", "12", 0.5), ("/budget 4 .25", "4", 0.25)],
)
async def test_budget_sets_the_agents_budget_and_replies_in_one_line(
    typed: str, ref: str, usd: float
) -> None:
    orchestrator = BudgetOrchestrator()
    reply = await ChatCommands(cast(Orchestrator, orchestrator)).run(typed, None)
    assert orchestrator.budgets == [(ref, usd)]
    assert "\n" not in reply
    assert reply.startswith(f"Agent #{ref}'s budget is now ${usd:.2f}"), reply
    assert "message" in reply


@pytest.mark.parametrize("typed", ["/budget", "/budget 3", "/budget 3 two", "/budget 3 -1"])
async def test_a_budget_without_an_agent_and_an_amount_is_told_the_usage(typed: str) -> None:
    orchestrator = BudgetOrchestrator()
    reply = await ChatCommands(cast(Orchestrator, orchestrator)).run(typed, None)
    assert reply.startswith("Usage: `/budget <n> <usd>`"), reply
    assert orchestrator.budgets == []
