"""Approvals: an agent's tool use that its role's policy says to ask about.

The question goes on the bus (`ApprovalRequested`), so every front attached to the
repository asks its person; the first answer wins and the others are withdrawn
(`ApprovalSettled`). With nobody to ask, the agent waits (still `running`, its progress
saying what for) up to `approval_timeout_seconds`, then it is a Deny. Only the asking
agent waits: the chat and the other agents never do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import anyio

from forkyard.bus import EventBus
from forkyard.clock import new_id
from forkyard_protocol.daemon import ApprovalAnswer, ApprovalRequested, ApprovalSettled
from forkyard_protocol.models import Agent


@dataclass
class _Pending:
    request: ApprovalRequested
    answered: anyio.Event = field(default_factory=anyio.Event)
    answer: ApprovalAnswer = "deny"


class Approvals:
    def __init__(
        self,
        bus: EventBus,
        timeout_seconds: Callable[[], float],
        waiting: Callable[[Agent, str | None], None],
    ) -> None:
        self.bus = bus
        self._timeout_seconds = timeout_seconds
        #: Called with what the agent waits for, then with None when it goes on.
        self._waiting = waiting
        self._pending: dict[str, _Pending] = {}

    async def ask(self, agent: Agent, tool: str, detail: str) -> ApprovalAnswer:
        request = ApprovalRequested(
            approval_id=new_id("approval"), agent=agent, tool=tool, detail=detail
        )
        pending = self._pending[request.approval_id] = _Pending(request)
        self._waiting(agent, f"waiting for your approval: {tool}")
        self.bus.publish(request)
        try:
            with anyio.move_on_after(self._timeout_seconds()):
                await pending.answered.wait()
        finally:
            del self._pending[request.approval_id]
            self.bus.publish(
                ApprovalSettled(approval_id=request.approval_id, answer=pending.answer)
            )
            self._waiting(agent, None)
        return pending.answer

    def answer(self, approval_id: str, answer: ApprovalAnswer) -> bool:
        """Whether this answer decided: False when another came first or it timed out."""
        pending = self._pending.get(approval_id)
        if pending is None or pending.answered.is_set():
            return False
        pending.answer = answer
        pending.answered.set()
        return True

    def waiting(self) -> list[ApprovalRequested]:
        return [p.request for p in self._pending.values() if not p.answered.is_set()]
