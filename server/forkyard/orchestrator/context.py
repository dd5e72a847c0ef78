"""The `AgentContext` a backend gets: a narrow window onto the orchestrator."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from forkyard.agents.base import ApprovalAnswer
from forkyard.agents.budget import Budget
from forkyard.settings import RoleConfig, Settings
from forkyard_protocol import Usage

if TYPE_CHECKING:
    from forkyard.orchestrator.orchestrator import Orchestrator
    from forkyard.orchestrator.runtime import AgentRuntime


class RunContext:
    def __init__(
        self,
        orchestrator: Orchestrator,
        runtime: AgentRuntime,
        cwd: Path,
        role: RoleConfig,
        *,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self._orchestrator = orchestrator
        self._runtime = runtime
        self._cwd = cwd
        self._role = role
        self._extra_env = dict(extra_env or {})

    @property
    def agent_number(self) -> int:
        return self._runtime.agent.number

    @property
    def cwd(self) -> Path:
        return self._cwd

    @property
    def repo_root(self) -> Path:
        return self._orchestrator.repository.root

    @property
    def writable(self) -> bool:
        return self._role.worktree

    @property
    def role(self) -> RoleConfig:
        return self._role

    @property
    def role_name(self) -> str:
        return self._runtime.agent.role

    @property
    def settings(self) -> Settings:
        return self._orchestrator.settings

    @property
    def environ(self) -> Mapping[str, str]:
        return self._orchestrator.environ

    @property
    def extra_env(self) -> Mapping[str, str]:
        return self._extra_env

    async def log(self, kind: str, text: str) -> None:
        await self._orchestrator._log(self._runtime, kind, text)

    def progress(self, message: str, percentage: int | None = None) -> None:
        self._orchestrator.progress(self._runtime, message, percentage)

    def add_usage(self, usage: Usage) -> None:
        self._orchestrator.add_usage(self._runtime, usage)

    async def request_approval(self, tool: str, detail: str) -> ApprovalAnswer:
        return await self._orchestrator.request_approval(self._runtime, tool, detail)

    def spent(self) -> Usage | None:
        return self._runtime.agent.usage

    def budget(self) -> Budget:
        """The agent's own limits, then the day's and its thread's (the person's)."""
        agent = self._runtime.agent
        orchestrator = self._orchestrator
        shared = orchestrator.ledger.check(agent.thread_id, lambda: orchestrator.settings.budget)
        return Budget(budget_usd=agent.budget_usd, max_tokens=agent.max_tokens, shared=shared)

    def take_followups(self) -> list[str]:
        taken, self._runtime.followups[:] = list(self._runtime.followups), []
        return taken
