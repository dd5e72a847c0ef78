"""The `AgentContext` of an agent running on a node: what the backend reports is queued
and sent back in batches; an approval waits for the orchestrator's answer.

The backend cannot tell it runs remotely: the same properties, the same calls. Limits
are the agent's own (checked here before each model call) plus the shared ones the
orchestrator pushes (`shared_refusal`), so a budget stops a cluster agent as it stops a
local one.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Mapping
from pathlib import Path

from forkyard.agents.base import ApprovalAnswer, RunOutcome
from forkyard.agents.budget import Budget
from forkyard.cluster.protocol import NodeEvent, NodeSpec
from forkyard.settings import RoleConfig, Settings
from forkyard_protocol import Usage


class RemoteContext:
    def __init__(self, spec: NodeSpec, worktree: Path, environ: Mapping[str, str]) -> None:
        self._spec = spec
        self._worktree = worktree
        self._environ = dict(environ)
        self._events: list[NodeEvent] = []
        self._wake = asyncio.Event()
        self._answers: dict[str, asyncio.Future[ApprovalAnswer]] = {}
        self._ids = itertools.count(1)
        self._spent = spec.usage
        #: Set by the orchestrator when a day's or thread's budget was reached.
        self.shared_refusal: str | None = None

    # --- what the backend sees -----------------------------------------------------

    @property
    def agent_number(self) -> int:
        return self._spec.number

    @property
    def cwd(self) -> Path:
        return self._worktree

    @property
    def repo_root(self) -> Path:
        """The person's checkout is not on this node: an explorer reads (read-only) its
        snapshot in the node's worktree instead."""
        return self._worktree

    @property
    def writable(self) -> bool:
        return self._spec.role.worktree

    @property
    def role(self) -> RoleConfig:
        return self._spec.role

    @property
    def role_name(self) -> str:
        return self._spec.role_name

    @property
    def settings(self) -> Settings:
        return self._spec.settings

    @property
    def environ(self) -> Mapping[str, str]:
        return self._environ

    @property
    def extra_env(self) -> Mapping[str, str]:
        return self._spec.extra_env

    async def log(self, kind: str, text: str) -> None:
        self._push(NodeEvent("log", (kind, text)))

    def progress(self, message: str, percentage: int | None = None) -> None:
        self._push(NodeEvent("progress", (message, percentage)))

    def add_usage(self, usage: Usage) -> None:
        spent = self._spent or Usage(cost_usd=0.0)
        cost = None
        if spent.cost_usd is not None and usage.cost_usd is not None:
            cost = spent.cost_usd + usage.cost_usd
        self._spent = Usage(
            input_tokens=spent.input_tokens + usage.input_tokens,
            output_tokens=spent.output_tokens + usage.output_tokens,
            cached_tokens=spent.cached_tokens + usage.cached_tokens,
            cost_usd=cost,
        )
        self._push(NodeEvent("usage", usage.model_dump()))

    def spent(self) -> Usage | None:
        return self._spent

    def budget(self) -> Budget:
        spec = self._spec
        return Budget(
            budget_usd=spec.budget_usd,
            max_tokens=spec.max_tokens,
            shared=lambda: self.shared_refusal,
        )

    async def request_approval(self, tool: str, detail: str) -> ApprovalAnswer:
        request_id = str(next(self._ids))
        future: asyncio.Future[ApprovalAnswer] = asyncio.get_running_loop().create_future()
        self._answers[request_id] = future
        self._push(NodeEvent("approval", (request_id, tool, detail)))
        try:
            return await future
        finally:
            self._answers.pop(request_id, None)

    def take_followups(self) -> list[str]:
        """Follow-ups wait at the orchestrator and run as the next run on this node."""
        return []

    # --- what the actor does with it -----------------------------------------------

    def answer(self, request_id: str, answer: ApprovalAnswer) -> None:
        future = self._answers.get(request_id)
        if future is not None and not future.done():
            future.set_result(answer)

    def _push(self, event: NodeEvent) -> None:
        self._events.append(event)
        self._wake.set()

    def drained(self) -> bool:
        return not self._events

    async def next_batch(self, task: asyncio.Future[RunOutcome], limit: int) -> list[NodeEvent]:
        """The events since the last batch (progress folded to the newest), once there
        are any or the run ended."""
        if not self._events and not task.done():
            waiter: asyncio.Future[object] = asyncio.ensure_future(self._wake.wait())
            pending: set[asyncio.Future[object]] = {waiter, task}  # type: ignore[arg-type]
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
        self._wake.clear()
        taken, self._events = self._events[:limit], self._events[limit:]
        if self._events:
            self._wake.set()
        last_progress = max(
            (index for index, event in enumerate(taken) if event.kind == "progress"), default=-1
        )
        return [
            event
            for index, event in enumerate(taken)
            if event.kind != "progress" or index == last_progress
        ]
