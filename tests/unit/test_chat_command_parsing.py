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
