"""An agent as a running server holds it: the persisted `Agent` plus what only this
process knows (its cancel scope, follow-ups, pending log entries)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import anyio

from forkyard_protocol.models import Agent, LogEntry


@dataclass
class AgentRuntime:
    """An agent and what only a running server knows about it."""

    agent: Agent
    cancel_scope: anyio.CancelScope | None = None
    followups: list[str] = field(default_factory=list)
    rerun: str | None = None
    last_progress_emit: float = 0.0
    progress_flush_pending: bool = False
    pending_log: list[LogEntry] = field(default_factory=list)
    #: Folders of a sparse worktree (dispatch `paths`, else the role's); None: all.
    sparse_paths: list[str] | None = None
    #: The setup step failed: a follow-up in the same worktree runs it again.
    setup_failed: bool = False


async def is_dir(path: str | Path) -> bool:
    return await anyio.Path(path).is_dir()
