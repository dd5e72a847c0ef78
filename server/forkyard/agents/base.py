"""The one interface every agent backend implements.

A backend runs one instruction for one agent in a prepared directory and reports through
its context; the orchestrator owns everything around that: the queue, the worktree, the
state machine, cancellation and persistence.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from forkyard.agents.budget import Budget
from forkyard.settings import RoleConfig, Settings
from forkyard_protocol import Usage

ApprovalAnswer = Literal["allow_once", "allow_for_agent", "deny"]


@dataclass(frozen=True)
class Availability:
    available: bool
    reason: str | None = None


@dataclass(frozen=True)
class RunOutcome:
    ok: bool
    summary: str
    error: str | None = None


class AgentContext(Protocol):
    """What a backend may see and do while it runs."""

    @property
    def agent_number(self) -> int: ...
    @property
    def cwd(self) -> Path:
        """The agent's worktree, or for a role without one the user's checkout."""

    @property
    def repo_root(self) -> Path:
        """The user's checkout (read-only to agents)."""

    @property
    def writable(self) -> bool:
        """False for explorers: nothing may be written, whatever the backend asks."""

    @property
    def role(self) -> RoleConfig: ...
    @property
    def role_name(self) -> str: ...
    @property
    def settings(self) -> Settings: ...
    @property
    def environ(self) -> Mapping[str, str]:
        """The server's environment, read-only; backends pass a scrubbed copy on."""

    @property
    def extra_env(self) -> Mapping[str, str]:
        """Variables the server hands to this agent's commands whatever the sandbox's
        allow-list says: its own ports (`FORKYARD_PORT_BASE`, `FORKYARD_PORTS`)."""

    async def log(self, kind: str, text: str) -> None: ...
    def progress(self, message: str, percentage: int | None = None) -> None: ...
    def add_usage(self, usage: Usage) -> None:
        """One model call's tokens and cost, added to the agent's `usage`."""

    def spent(self) -> Usage | None:
        """What the agent's model calls used so far, every run of it included."""

    def budget(self) -> Budget:
        """The agent's limits as they are now (a follow-up may have raised them)."""

    def take_followups(self) -> list[str]:
        """Follow-up instructions the user sent since the last call."""

    async def request_approval(self, tool: str, detail: str) -> ApprovalAnswer:
        """Ask the user whether `tool` may run on `detail` (a command, a path); only
        this agent waits for the answer. No answer means "deny"."""


class Backend(Protocol):
    name: str

    async def availability(self, settings: Settings) -> Availability:
        """Whether dispatching to this backend can work now, and why not."""

    async def run(self, context: AgentContext, instruction: str) -> RunOutcome:
        """Run one instruction to its end. Cancellation (the agent's cancel scope) must
        stop every process the backend started."""
