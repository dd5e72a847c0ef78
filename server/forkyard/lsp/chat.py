"""`forkyard/chat` (the editor context read here, the rest in the daemon), and the feature
that streams turns to the client as `forkyard/chat/*` notifications and work-done
progress on the client's token."""

from __future__ import annotations

from pathlib import Path

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream
from lsprotocol import types
from pygls.uris import to_fs_path

from forkyard.errors import InvalidRequest
from forkyard.lsp.server import ForkyardServer
from forkyard_protocol.daemon import ChatDelta, ChatMessage, ChatTurn, Event
from forkyard_protocol.messages import (
    ChatContext,
    ChatDeltaNotification,
    ChatMessageNotification,
    ChatParams,
    ChatResult,
    ChatTurnNotification,
)

MAX_CONTEXT_CHARS = 20_000
#: A chat message longer than this is refused before anything is stored or sent to a
#: model (the wire's 16 MiB bound is for edits and documents, not for prose).
MAX_CHAT_CHARS = 1024 * 1024


class ChatFeature:
    """Every front sees every thread's events; progress only for this editor's turns."""

    def __init__(self, server: ForkyardServer) -> None:
        self.server = server
        #: turn id -> this client's work-done token for it.
        self.tokens: dict[str, str | int] = {}
        #: The latest state of recent turns, for a token that arrives after its turn's
        #: first events (the daemon's events and its answer race).
        self._states: dict[str, str] = {}

    def adopt(self, turn_id: str, token: str | int) -> None:
        state = self._states.get(turn_id)
        if state in ("completed", "failed", "interrupted"):
            return
        self.tokens[turn_id] = token
        if state == "running":
            self.server.work_done_progress.begin(
                token, types.WorkDoneProgressBegin(title="Forkyard", message="thinking")
            )

    async def consume(self, events: MemoryObjectReceiveStream[Event]) -> None:
        async with events:
            async for event in events:
                if isinstance(event, ChatDelta):
                    self.delta(event)
                elif isinstance(event, ChatMessage):
                    self.server.notify(
                        "forkyard/chat/message", ChatMessageNotification(message=event.message)
                    )
                elif isinstance(event, ChatTurn):
                    self.turn(event)

    def delta(self, event: ChatDelta) -> None:
        self.server.notify(
            "forkyard/chat/delta",
            ChatDeltaNotification(
                thread_id=event.thread_id,
                turn_id=event.turn_id,
                message_id=event.message_id,
                delta=event.delta,
            ),
        )
        if (token := self.tokens.get(event.turn_id)) is not None:
            self.server.work_done_progress.report(
                token, types.WorkDoneProgressReport(message="replying")
            )

    def turn(self, event: ChatTurn) -> None:
        self._states[event.turn_id] = event.state
        if len(self._states) > 1000:
            del self._states[next(iter(self._states))]
        # Progress first: a client that sees the turn end has seen its progress end too.
        if (token := self.tokens.get(event.turn_id)) is not None:
            progress = self.server.work_done_progress
            if event.state == "running":
                progress.begin(
                    token, types.WorkDoneProgressBegin(title="Forkyard", message="thinking")
                )
            elif event.state in ("completed", "failed", "interrupted"):
                progress.end(token, types.WorkDoneProgressEnd(message=event.state))
                del self.tokens[event.turn_id]
        self.server.notify(
            "forkyard/chat/turn",
            ChatTurnNotification(
                thread_id=event.thread_id,
                turn_id=event.turn_id,
                state=event.state,
                error=event.error,
                usage=event.usage,
            ),
        )


def _read_context(document_text: str | None, path: Path, context: ChatContext) -> str:
    """The editor context as the model will read it. Blocking file read: run in a thread."""
    if document_text is None:
        try:
            document_text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            return f"(context file {path} could not be read: {exc})"
    lines = document_text.splitlines()
    if context.range is not None:
        start, end = context.range.start.line, context.range.end.line
        lines = lines[start : end + 1]
        where = f"{path.name} lines {start + 1}-{end + 1}"
    else:
        where = path.name
    body = "\n".join(lines)[:MAX_CONTEXT_CHARS]
    return f"Context from the editor, {where} ({path}):\n```\n{body}\n```"


def register(server: ForkyardServer, feature: ChatFeature) -> None:
    async def context_text(ls: ForkyardServer, context: ChatContext | None) -> str | None:
        if context is None:
            return None
        path = Path(to_fs_path(context.uri) or context.uri)
        document = ls.workspace.text_documents.get(context.uri)
        text = document.source if document is not None else None
        return await anyio.to_thread.run_sync(_read_context, text, path, context)

    @server.request("forkyard/chat")
    async def chat(ls: ForkyardServer, params: ChatParams) -> ChatResult:
        if len(params.text) > MAX_CHAT_CHARS:
            raise InvalidRequest(
                f"text: the message is {len(params.text)} characters long; "
                f"the limit is {MAX_CHAT_CHARS}"
            )
        front = ls.require_front()
        context = await context_text(ls, params.context)
        raw = await front.call(
            "daemon/chat",
            {"text": params.text, "threadId": params.thread_id, "contextText": context},
        )
        result = ChatResult.model_validate(raw)
        if params.work_done_token is not None:
            feature.adopt(result.turn_id, params.work_done_token)
        return result
