"""The agent methods (passed on to the daemon), and the feature that turns the daemon's
agent events into `forkyard/agent/changed`, work-done progress, notices and approvals."""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from lsprotocol import types

from forkyard.lsp.arguments import agent_arg, raise_invalid
from forkyard.lsp.server import ForkyardServer, parse_params
from forkyard.notices import notice_route, short_notice, structured_notice
from forkyard_protocol import REQUESTS
from forkyard_protocol.daemon import (
    AgentChanged,
    ApprovalAnswer,
    ApprovalRequested,
    ApprovalSettled,
    Event,
    Notice,
)
from forkyard_protocol.messages import (
    AgentChangedNotification,
    AgentDispatchParams,
    AgentResult,
)
from forkyard_protocol.models import FINAL_STATES, Agent

logger = logging.getLogger(__name__)

_LEVELS = {
    "info": types.MessageType.Info,
    "warning": types.MessageType.Warning,
    "error": types.MessageType.Error,
}

APPROVAL_ACTIONS: dict[str, ApprovalAnswer] = {
    "Allow once": "allow_once",
    "Allow for this agent": "allow_for_agent",
    "Deny": "deny",
}

#: Requests passed on to the daemon as they are.
PASSED_ON = (
    "forkyard/agent/dispatch",
    "forkyard/agent/list",
    "forkyard/agent/read",
    "forkyard/agent/message",
    "forkyard/agent/cancel",
    "forkyard/agent/discard",
    "forkyard/agent/retry",
    "forkyard/agent/materialize",
    "forkyard/agent/diff",
    "forkyard/agent/file",
    "forkyard/chat/interrupt",
    "forkyard/thread/list",
    "forkyard/thread/read",
    "forkyard/status",
)


def progress_message(agent: Agent) -> str:
    """What a progress report says: the agent's latest line, but not its own command
    again (the title already names it: "agent #2: sed …: $ sed …" says it twice)."""
    message = agent.progress.message if agent.progress else agent.state
    if message.removeprefix("$ ").strip() == agent.task.strip()[: len(message) - 2].strip():
        return agent.state
    return message


class AgentFeature:
    """Agents in the editor: notifications, progress (cancellable), notices, approvals."""

    def __init__(self, server: ForkyardServer) -> None:
        self.server = server
        self._progress: dict[str, MemoryObjectSendStream[Agent]] = {}
        self.token_to_agent: dict[str, str] = {}
        self._reports = 0
        #: Approvals this editor is asking: approval id -> the scope of its question.
        self._asking: dict[str, anyio.CancelScope] = {}

    async def consume(self, events: MemoryObjectReceiveStream[Event]) -> None:
        async with events:
            async for event in events:
                if isinstance(event, AgentChanged):
                    self.agent_changed(event.agent)
                elif isinstance(event, Notice):
                    self.notice(event)
                elif isinstance(event, ApprovalRequested):
                    self.ask(event)
                elif isinstance(event, ApprovalSettled) and (
                    scope := self._asking.pop(event.approval_id, None)
                ):
                    scope.cancel()  # answered elsewhere: the question is withdrawn

    def agent_changed(self, agent: Agent) -> None:
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
                stream.send_nowait(agent)
            if agent.state in FINAL_STATES or agent.state == "queued":
                stream.close()
                del self._progress[agent.id]

    async def _report_progress(
        self, first: Agent, updates: MemoryObjectReceiveStream[Agent]
    ) -> None:
        """One agent's progress, in order: create the token, begin, report, end."""
        # Unique per report: a run that ends and starts again within one millisecond
        # must not reuse its token.
        self._reports += 1
        token = f"forkyard/agent/{first.id}/{self._reports}"
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
                message = progress_message(agent)
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

    def notice(self, notice: Notice) -> None:
        agent = notice.agent
        route = notice_route(self.server.client_capabilities.experimental)
        if agent is not None and route == "structured":
            self.server.notify("forkyard/notice", structured_notice(notice))
            return
        if agent is not None and agent.state == "done" and route == "actions":
            return  # announced with "Show diff / Apply / Discard" actions by the review
        self.server.window_show_message(
            types.ShowMessageParams(type=_LEVELS[notice.level], message=short_notice(notice.text))
        )

    # --- approvals ----------------------------------------------------------------------

    def ask(self, request: ApprovalRequested) -> None:
        scope = anyio.CancelScope()
        self._asking[request.approval_id] = scope
        self.server.spawn(lambda: self._ask(request, scope), f"approval {request.approval_id}")

    async def _ask(self, request: ApprovalRequested, scope: anyio.CancelScope) -> None:
        agent = request.agent
        params = types.ShowMessageRequestParams(
            type=types.MessageType.Warning,
            message=f"Forkyard agent #{agent.number} ({agent.title}) wants to use "
            f"{request.tool}: {request.detail}",
            actions=[types.MessageActionItem(title=title) for title in APPROVAL_ACTIONS],
        )
        answer: ApprovalAnswer | None = None
        # Our own id, so that the question can be withdrawn with `$/cancelRequest` when
        # another editor answers first.
        request_id = f"forkyard/approval/{request.approval_id}"
        protocol = self.server.protocol
        with scope:
            try:
                reply = await protocol.send_request_async(
                    types.WINDOW_SHOW_MESSAGE_REQUEST, params, msg_id=request_id
                )
            except Exception as exc:
                logger.info("approval not answered here: %s", exc)
                reply = None
            title = getattr(reply, "title", None)
            answer = APPROVAL_ACTIONS.get(title, "deny") if isinstance(title, str) else "deny"
        if scope.cancelled_caught:
            protocol._request_futures.pop(request_id, None)
            protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id=request_id))
        self._asking.pop(request.approval_id, None)
        if answer is None or self.server.front is None:
            return  # withdrawn: another front answered
        await self.server.front.call(
            "daemon/approval/answer", {"approvalId": request.approval_id, "answer": answer}
        )


def register(server: ForkyardServer, feature: AgentFeature) -> None:
    def pass_on(method: str) -> None:
        result_model = REQUESTS[method][1]

        @server.request(method)
        async def handler(ls: ForkyardServer, params: Any) -> Any:
            raw = await ls.require_front().call(method, params.wire())
            return result_model.model_validate(raw)

    for method in PASSED_ON:
        pass_on(method)

    @server.feature(types.WINDOW_WORK_DONE_PROGRESS_CANCEL)
    async def progress_cancel(
        ls: ForkyardServer, params: types.WorkDoneProgressCancelParams
    ) -> None:
        agent_id = feature.token_to_agent.get(str(params.token))
        if agent_id is not None and ls.front is not None:
            await ls.front.call("forkyard/agent/cancel", {"agentId": agent_id})

    @server.forkyard_command("forkyard.dispatch")
    async def dispatch_command(ls: ForkyardServer, *args: Any) -> AgentResult:
        if not args or not isinstance(args[0], str):
            raise_invalid("forkyard.dispatch takes [task, role?, backend?]")
        params: dict[str, Any] = {"task": args[0]}
        if len(args) > 1 and args[1]:
            params["role"] = args[1]
        params["backend"] = args[2] if len(args) > 2 and args[2] else "command"
        parsed = parse_params("forkyard.dispatch", AgentDispatchParams, params)
        raw = await ls.require_front().call("forkyard/agent/dispatch", parsed.wire())
        return AgentResult.model_validate(raw)

    @server.forkyard_command("forkyard.cancel")
    async def cancel_command(ls: ForkyardServer, *args: Any) -> AgentResult:
        ref = agent_arg("forkyard.cancel", args)
        raw = await ls.require_front().call("forkyard/agent/cancel", {"agentId": ref})
        return AgentResult.model_validate(raw)

    @server.forkyard_command("forkyard.discard")
    async def discard_command(ls: ForkyardServer, *args: Any) -> AgentResult:
        ref = agent_arg("forkyard.discard", args)
        raw = await ls.require_front().call("forkyard/agent/discard", {"agentId": ref})
        return AgentResult.model_validate(raw)
