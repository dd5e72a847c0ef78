"""What an LSP front knows of its repository: the link to the daemon that owns it, the
mirror of its agents, the review of done agents (hunks located on this editor's text),
and the front's own bus, on which the daemon's events arrive for the features to consume
(each feature one task)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskGroup

import forkyard
from forkyard.bus import EventBus
from forkyard.daemon.link import DaemonLink
from forkyard.daemon.paths import DaemonPaths
from forkyard.review.service import FileSides, ReviewService
from forkyard.settings import current_environ, load_settings
from forkyard_protocol.daemon import (
    DAEMON_PROTOCOL_VERSION,
    AttachParams,
    AttachResult,
    Event,
    ReviewResult,
    StopResult,
)
from forkyard_protocol.models import Agent, FileChange, ForkyardCapabilities

logger = logging.getLogger(__name__)


def front_severity(
    root: Path, initialization_options: Any, client_settings: dict[str, Any] | None
) -> str:
    """`diagnostic_severity` from the front's layered settings (blocking: config files).
    The front draws the diagnostics, so it reads this setting itself."""
    options = initialization_options if isinstance(initialization_options, dict) else None
    loaded = load_settings(root, current_environ(), options, client_settings)
    return loaded.settings.diagnostic_severity


class FrontSession:
    def __init__(
        self,
        root: Path,
        state_dir: Path,
        environ: Mapping[str, str],
        initialization_options: dict[str, Any] | None,
        name: str,
        idle_seconds: float,
    ) -> None:
        self.root = root
        self.state_dir = state_dir
        self.initialization_options = initialization_options
        self.client_settings: dict[str, Any] | None = None
        #: `diagnostic_severity` of the hunk diagnostics (settings.py); set from the
        #: front's settings at initialize and whenever they change.
        self.diagnostic_severity = "information"
        self.name = name
        self.bus = EventBus()
        self.review = ReviewService(self)
        self.link = DaemonLink(
            DaemonPaths(state_dir),
            environ,
            self._attach_params,
            idle_seconds=idle_seconds,
            on_event=self.bus.publish,
            on_attach=self._on_attach,
        )
        self.capabilities: ForkyardCapabilities | None = None
        self.attached: AttachResult | None = None
        #: Called on every attach after the first (the daemon was restarted under us).
        self.on_reattach: list[Callable[[AttachResult], None]] = []

    def _attach_params(self) -> AttachParams:
        return AttachParams(
            root=str(self.root),
            kind="editor",
            name=self.name,
            version=forkyard.__version__,
            initialization_options=self.initialization_options,
            client_settings=self.client_settings,
        )

    def _on_attach(self, result: AttachResult, again: bool) -> None:
        self.attached = result
        self.capabilities = result.capabilities
        self.root = Path(result.root)
        if again:
            for callback in self.on_reattach:
                callback(result)

    async def open(self, task_group: TaskGroup) -> AttachResult:
        return await self.link.open(task_group)

    def version_mismatch(self) -> str | None:
        result = self.attached
        if result is None:
            return None
        if (
            result.daemon_version == forkyard.__version__
            and result.protocol == DAEMON_PROTOCOL_VERSION
        ):
            return None
        return (
            f"Forkyard's daemon runs {result.daemon_version}, this editor {forkyard.__version__}; "
            "it is replaced once no agent runs"
        )

    async def replace_daemon_when_idle(self) -> None:
        """A daemon of another version stops once no agent runs; the link then starts
        ours and attaches again."""
        raw = await self.link.call("daemon/stop", {"now": False})
        logger.info("asked the old daemon to stop: %s", StopResult.model_validate(raw))

    # --- the review's source (`review/service.py: AgentSource`) ---------------------------

    def resolve_agent(self, ref: str) -> Agent:
        return self.link.resolve_agent(ref)

    async def review_files(self, agent: Agent) -> list[FileSides]:
        result = ReviewResult.model_validate(
            await self.link.call("daemon/review", {"agentId": agent.id})
        )
        self.link.agents[result.agent.id] = result.agent
        return [
            (FileChange.model_validate(file.change), file.base_text, file.agent_text)
            for file in result.files
        ]

    # --- requests -------------------------------------------------------------------------

    async def call(self, method: str, params: Any = None) -> Any:
        return await self.link.call(method, params)

    def agents(self) -> list[Agent]:
        return sorted(self.link.agents.values(), key=lambda a: a.number, reverse=True)

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            await self.link.close()
        self.bus.close()


__all__ = ["Event", "FrontSession"]
