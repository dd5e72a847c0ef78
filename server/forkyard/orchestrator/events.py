"""How the orchestrator tells the rest of the world what happened, without knowing who
listens: the LSP layer turns these into notifications, progress and diagnostics; the
conversation layer into event messages in a thread."""

from __future__ import annotations

from typing import Literal, Protocol

from forkyard_protocol.models import Agent

NoticeLevel = Literal["info", "warning", "error"]


class OrchestratorListener(Protocol):
    def agent_changed(self, agent: Agent, previous_state: str | None) -> None:
        """Called on the event loop after every change of an agent; must not block."""

    def notice(self, level: NoticeLevel, text: str, agent: Agent | None = None) -> None:
        """Something the user should be told once (finished, failed, orphans found);
        `agent` is the agent it is about, if any."""


class Listeners:
    """Fan-out to every registered listener; one failing listener never stops the others
    or the orchestrator."""

    def __init__(self) -> None:
        self._listeners: list[OrchestratorListener] = []

    def add(self, listener: OrchestratorListener) -> None:
        self._listeners.append(listener)

    def agent_changed(self, agent: Agent, previous_state: str | None) -> None:
        for listener in list(self._listeners):
            try:
                listener.agent_changed(agent.model_copy(deep=True), previous_state)
            except Exception:
                import logging

                logging.getLogger(__name__).exception("agent listener failed")

    def notice(self, level: NoticeLevel, text: str, agent: Agent | None = None) -> None:
        for listener in list(self._listeners):
            try:
                listener.notice(level, text, agent)
            except Exception:
                import logging

                logging.getLogger(__name__).exception("notice listener failed")
