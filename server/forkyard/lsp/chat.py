"""The conversation methods, and the bridge that streams turns to the client as
`forkyard/chat/*` notifications and work-done progress on the client's token."""

from __future__ import annotations

from pathlib import Path

import anyio
from lsprotocol import types
from pygls.uris import to_fs_path

from forkyard.conversation.service import Turn
from forkyard.errors import InvalidRequest
from forkyard.lsp.server import ForkyardServer
from forkyard_protocol.messages import (
    ChatContext,
    ChatDeltaNotification,
    ChatInterruptParams,
    ChatMessageNotification,
    ChatParams,
    ChatResult,
    ChatTurnNotification,
    Empty,
    ThreadListResult,
    ThreadReadParams,
    ThreadReadResult,
)
from forkyard_protocol.models import Message

MAX_CONTEXT_CHARS = 20_000
#: A chat message longer than this is refused before anything is stored or sent to a
#: model (the wire's 16 MiB bound is for edits and documents, not for prose).
MAX_CHAT_CHARS = 1024 * 1024


class ChatBridge:
    """Conversation listener living in the LSP layer."""

    def __init__(self, server: ForkyardServer) -> None:
        self.server = server

    def delta(self, turn: Turn, delta: str) -> None:
        self.server.notify(
            "forkyard/chat/delta",
            ChatDeltaNotification(
                thread_id=turn.thread_id, turn_id=turn.id, message_id=turn.message_id, delta=delta
            ),
        )
        if turn.token is not None:
            self.server.work_done_progress.report(
                turn.token, types.WorkDoneProgressReport(message="replying")
            )

    def message(self, message: Message) -> None:
        self.server.notify("forkyard/chat/message", ChatMessageNotification(message=message))

    def turn(self, turn: Turn, error: str | None) -> None:
        # Progress first: a client that sees the turn end has seen its progress end too.
        if turn.token is not None:
            progress = self.server.work_done_progress
            if turn.state == "running":
                progress.begin(
                    turn.token, types.WorkDoneProgressBegin(title="Forkyard", message="thinking")
                )
            elif turn.state in ("completed", "failed", "interrupted"):
                progress.end(turn.token, types.WorkDoneProgressEnd(message=turn.state))
        self.server.notify(
            "forkyard/chat/turn",
            ChatTurnNotification(
                thread_id=turn.thread_id, turn_id=turn.id, state=turn.state, error=error
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


def register(server: ForkyardServer) -> None:
    bridge = ChatBridge(server)
    server.on_app_ready.append(lambda app: app.set_conversation_listener(bridge))

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
        conversation = ls.require_app().conversation
        context = await context_text(ls, params.context)
        thread_id, turn_id, message_id = await conversation.chat(
            params.text, params.thread_id, context, params.work_done_token
        )
        return ChatResult(thread_id=thread_id, turn_id=turn_id, message_id=message_id)

    @server.request("forkyard/chat/interrupt")
    async def interrupt(ls: ForkyardServer, params: ChatInterruptParams) -> Empty:
        await ls.require_app().conversation.interrupt(params.thread_id)
        return Empty()

    @server.request("forkyard/thread/list")
    async def thread_list(ls: ForkyardServer, _params: Empty) -> ThreadListResult:
        return ThreadListResult(threads=await ls.require_app().conversation.threads())

    @server.request("forkyard/thread/read")
    async def thread_read(ls: ForkyardServer, params: ThreadReadParams) -> ThreadReadResult:
        thread, messages = await ls.require_app().conversation.read(params.thread_id)
        return ThreadReadResult(thread=thread, messages=messages)
