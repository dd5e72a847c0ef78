"""How the orchestrator reports: every change of an agent and every notice goes onto the
one event bus (`forkyard/bus.py`) as an event of the closed set. Whoever listens (the
conversation, each front the daemon serves) subscribes there; the orchestrator never knows
who does."""

from __future__ import annotations

from forkyard.bus import EventBus
from forkyard_protocol.daemon import AgentChanged, Notice, NoticeLevel
from forkyard_protocol.models import Agent

__all__ = ["NoticeLevel", "Reporter"]


class Reporter:
    """The orchestrator's two kinds of report, as bus events."""

    def __init__(self, bus: EventBus) -> None:
        self.bus = bus

    def agent_changed(self, agent: Agent, previous_state: str | None) -> None:
        self.bus.publish(AgentChanged(agent=agent, previous_state=previous_state))

    def notice(self, level: NoticeLevel, text: str, agent: Agent | None = None) -> None:
        self.bus.publish(Notice(level=level, text=text, agent=agent))
