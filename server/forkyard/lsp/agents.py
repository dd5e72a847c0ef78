"""The agent methods, and the bridge that turns orchestrator events into
`forkyard/agent/changed`, work-done progress and `window/showMessage`."""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from lsprotocol import types

from forkyard.agents.base import ApprovalAnswer
from forkyard.app import ForkyardApp
from forkyard.errors import InvalidRequest
from forkyard.lsp.notices import short_notice
from forkyard.lsp.server import ForkyardServer, parse_params
from forkyard.orchestrator.events import NoticeLevel
from forkyard.orchestrator.orchestrator import Approver
from forkyard_protocol.messages import (
    AgentChangedNotification,
    AgentDiffResult,
    AgentDispatchParams,
    AgentFileParams,
    AgentFileResult,
    AgentListResult,
    AgentMessageParams,
    AgentReadResult,
    AgentRef,
    AgentResult,
    Empty,
)
from forkyard_protocol.models import FINAL_STATES, Agent

logger = logging.getLogger(__name__)

_LEVELS = {
    "info": types.MessageType.Info,
    "warning": types.MessageType.Warning,
    "error": types.MessageType.Error,
}


class AgentBridge:
    """Orchestrator listener living in the LSP layer."""

    def __init__(self, server: ForkyardServer) -> None:
        self.server = server
        self._progress: dict[str, MemoryObjectSendStream[Agent]] = {}
        self.token_to_agent: dict[str, str] = {}

    def agent_changed(self, agent: Agent, previous_state: str | None) -> None:
        self.server.notify("forkyard/agent/changed", AgentChangedNotification(agent=agent))
        if not self.server.client_supports_progress():
            return
        stream = self._progress.get(agent.id)
        if stream is None and agent.state in ("starting", "running"):
            send, receive = anyio.create_memory_object_stream[Agent](math.inf)
            self._progress[agent.id] = stream = send
            self.server.spawn(
                lambda: self._report_progress(agent, receive), f"progress of agent {agent.id}"
            )
        if stream is not None:
            with contextlib.suppress(anyio.BrokenResourceError):
                # Broken: the reporter is gone (the server is stopping).
                stream.send_nowait(agent)
            if agent.state in FINAL_STATES or agent.state == "queued":
                stream.close()
                del self._progress[agent.id]

    async def _report_progress(
        self, first: Agent, updates: MemoryObjectReceiveStream[Agent]
    ) -> None:
        """One agent's progress, in order: create the token, begin, report, end."""
        token = f"forkyard/agent/{first.id}/{first.updated_at}"
        progress = self.server.work_done_progress
        async with updates:
            try:
                await progress.create_async(token)
            except Exception as exc:
                logger.info("client refused progress token: %s", exc)
                async for _ in updates:
                    pass
                return
            self.token_to_agent[token] = first.id
            progress.begin(
                token,
                types.WorkDoneProgressBegin(
                    title=f"agent #{first.number}: {first.title}",
                    cancellable=True,
                    message=first.state,
                ),
            )
            last_message = None
            final: Agent | None = None
            async for agent in updates:
                if agent.state in FINAL_STATES or agent.state == "queued":
                    final = agent
                    break
                message = agent.progress.message if agent.progress else agent.state
                if message != last_message:
                    last_message = message
                    percentage = agent.progress.percentage if agent.progress else None
                    progress.report(
                        token, types.WorkDoneProgressReport(message=message, percentage=percentage)
                    )
            end_message = final.state if final else "stopped"
            progress.end(token, types.WorkDoneProgressEnd(message=end_message))
            self.token_to_agent.pop(token, None)
            progress.tokens.pop(token, None)

    def notice(self, level: NoticeLevel, text: str, agent: Agent | None = None) -> None:
        if agent is not None and agent.state == "done" and self.server.client_wants_actions():
            return  # announced with "Show diff / Apply / Discard" actions by the review
        self.server.window_show_message(
            types.ShowMessageParams(type=_LEVELS[level], message=short_notice(text))
        )


APPROVAL_ACTIONS: dict[str, ApprovalAnswer] = {
    "Allow once": "allow_once",
    "Allow for this agent": "allow_for_agent",
    "Deny": "deny",
}
#: An approval nobody answers is a "Deny" after this long, so the agent can go on.
APPROVAL_TIMEOUT_SECONDS = 600


def make_approver(server: ForkyardServer) -> Approver:
    async def approve(agent: Agent, tool: str, detail: str) -> ApprovalAnswer:
        params = types.ShowMessageRequestParams(
            type=types.MessageType.Warning,
            message=f"Forkyard agent #{agent.number} ({agent.title}) wants to use {tool}: {detail}",
            actions=[types.MessageActionItem(title=title) for title in APPROVAL_ACTIONS],
        )
        with anyio.move_on_after(APPROVAL_TIMEOUT_SECONDS):
            answer = await server.window_show_message_request_async(params)
            title = getattr(answer, "title", None)
            return APPROVAL_ACTIONS.get(title, "deny") if isinstance(title, str) else "deny"
        return "deny"

    return approve


def register(server: ForkyardServer) -> None:
    bridge = AgentBridge(server)
    approver = make_approver(server)

    def attach(app: ForkyardApp) -> None:
        app.orchestrator.add_listener(bridge)
        app.orchestrator.approver = approver

    server.on_app_ready.append(attach)

    @server.request("forkyard/agent/dispatch")
    async def dispatch(ls: ForkyardServer, params: AgentDispatchParams) -> AgentResult:
        return AgentResult(agent=await ls.require_app().orchestrator.dispatch(params))

    @server.request("forkyard/agent/list")
    async def list_agents(ls: ForkyardServer, _params: Empty) -> AgentListResult:
        return AgentListResult(agents=ls.require_app().orchestrator.agents())

    @server.request("forkyard/agent/read")
    async def read(ls: ForkyardServer, params: AgentRef) -> AgentReadResult:
        agent, log = await ls.require_app().orchestrator.read(params.agent_id)
        return AgentReadResult(agent=agent, log=log)

    @server.request("forkyard/agent/message")
    async def message(ls: ForkyardServer, params: AgentMessageParams) -> AgentResult:
        orchestrator = ls.require_app().orchestrator
        return AgentResult(agent=await orchestrator.message(params.agent_id, params.text))

    @server.request("forkyard/agent/cancel")
    async def cancel(ls: ForkyardServer, params: AgentRef) -> AgentResult:
        return AgentResult(agent=await ls.require_app().orchestrator.cancel(params.agent_id))

    @server.request("forkyard/agent/discard")
    async def discard(ls: ForkyardServer, params: AgentRef) -> AgentResult:
        return AgentResult(agent=await ls.require_app().orchestrator.discard(params.agent_id))

    @server.request("forkyard/agent/diff")
    async def diff(ls: ForkyardServer, params: AgentRef) -> AgentDiffResult:
        orchestrator = ls.require_app().orchestrator
        agent = orchestrator.resolve(params.agent_id).agent
        result = await orchestrator.diff(params.agent_id)
        return AgentDiffResult(
            agent_id=agent.id,
            base_ref=agent.base_ref,
            patch=result.patch if result else "",
            files=result.files if result else [],
        )

    @server.request("forkyard/agent/file")
    async def file(ls: ForkyardServer, params: AgentFileParams) -> AgentFileResult:
        text = await ls.require_app().orchestrator.file(params.agent_id, params.path)
        return AgentFileResult(text=text)

    @server.feature(types.WINDOW_WORK_DONE_PROGRESS_CANCEL)
    async def progress_cancel(
        ls: ForkyardServer, params: types.WorkDoneProgressCancelParams
    ) -> None:
        agent_id = bridge.token_to_agent.get(str(params.token))
        if agent_id is not None and ls.app is not None:
            await ls.app.orchestrator.cancel(agent_id)

    @server.forkyard_command("forkyard.dispatch")
    async def dispatch_command(ls: ForkyardServer, *args: Any) -> AgentResult:
        if not args or not isinstance(args[0], str):
            raise_invalid("forkyard.dispatch takes [task, role?, backend?]")
        params: dict[str, Any] = {"task": args[0]}
        if len(args) > 1 and args[1]:
            params["role"] = args[1]
        params["backend"] = args[2] if len(args) > 2 and args[2] else "command"
        parsed = parse_params("forkyard.dispatch", AgentDispatchParams, params)
        return AgentResult(agent=await ls.require_app().orchestrator.dispatch(parsed))

    @server.forkyard_command("forkyard.cancel")
    async def cancel_command(ls: ForkyardServer, *args: Any) -> AgentResult:
        agent = await ls.require_app().orchestrator.cancel(agent_arg("forkyard.cancel", args))
        return AgentResult(agent=agent)

    @server.forkyard_command("forkyard.discard")
    async def discard_command(ls: ForkyardServer, *args: Any) -> AgentResult:
        agent = await ls.require_app().orchestrator.discard(agent_arg("forkyard.discard", args))
        return AgentResult(agent=agent)


def agent_arg(command: str, args: tuple[Any, ...]) -> str:
    if not args or not isinstance(args[0], str | int) or isinstance(args[0], bool):
        raise_invalid(f"{command} takes [agentId]")
    return str(args[0])


def raise_invalid(message: str) -> Any:
    raise InvalidRequest(message)
