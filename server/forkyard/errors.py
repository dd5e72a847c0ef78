"""Errors the domain raises for the LSP layer to turn into JSON-RPC answers."""

from __future__ import annotations


class ForkyardError(Exception):
    """Base of every error Forkyard reports to a user."""


class InvalidRequest(ForkyardError):
    """The request cannot be served as asked: answered with -32602 and this message."""


class UnknownAgent(InvalidRequest):
    def __init__(self, ref: str) -> None:
        super().__init__(f"agentId: no agent with id or number {ref!r}")


class UnknownThread(InvalidRequest):
    def __init__(self, thread_id: str) -> None:
        super().__init__(f"threadId: no thread with id {thread_id!r}")
