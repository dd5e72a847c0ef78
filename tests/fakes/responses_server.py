"""The fake model server, also speaking the OpenAI Responses API (`POST /v1/responses`).

Codex talks to its model only through the Responses API (its `wire_api = "chat"` is gone),
so testing the real `codex` program against a model on 127.0.0.1 needs this dialect. The
server is a `FakeModelServer` in every other way: the same `Reply` scripts, the same
`requests`, and the chat-completions and Anthropic routes keep working, so one server can
serve every agent program in a test.

    with ResponsesModelServer() as server:
        server.script(Reply(tool_calls=[("exec_command", {"cmd": "echo hi > a.txt"})]),
                      Reply(text="Wrote a.txt"))
        # point codex at server.openai_base_url with wire_api = "responses"

Streams follow the real event sequence: `response.created`, then per output item
`response.output_item.added`, its deltas (`response.output_text.delta` or
`response.function_call_arguments.delta`), `response.output_item.done`, and finally
`response.completed` carrying the whole response and its usage.
"""

from __future__ import annotations

import json
import time
from typing import Any

from tests.fakes import wire
from tests.fakes.model_server import (
    FakeModelServer,
    RecordedRequest,
    Reply,
    _ClientGone,
    _Handler,
)

RESPONSES_PATH_SUFFIX = "/responses"


class ResponsesModelServer(FakeModelServer):
    """`FakeModelServer` plus the Responses API; see the module docstring."""

    def __init__(self, *, default: Reply | None = None) -> None:
        super().__init__(default=default)
        # socketserver builds one handler per connection from this class attribute.
        self._httpd.RequestHandlerClass = _ResponsesHandler

    @property
    def responses_requests(self) -> list[RecordedRequest]:
        """The requests that went to the Responses API."""
        return [r for r in self.requests if r.path.endswith(RESPONSES_PATH_SUFFIX)]


class _ResponsesHandler(_Handler):
    def _serve(self) -> None:
        if not self.path.split("?", 1)[0].endswith(RESPONSES_PATH_SUFFIX):
            super()._serve()
            return
        fake = self.server.fake
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = None
        request = RecordedRequest(
            method=self.command,
            path=self.path.split("?", 1)[0],
            headers={key.lower(): value for key, value in self.headers.items()},
            body=body,
            raw=raw,
        )
        reply = fake._record(request)
        if reply is None:
            self._send_json(
                500, wire.error_body("openai", 500, "fake model server: no scripted reply left")
            )
            return
        try:
            self._answer_responses(request, reply)
            reply._finished.set()
        except _ClientGone:
            reply._disconnected.set()
            self.close_connection = True
        finally:
            reply._ended.set()

    def _answer_responses(self, request: RecordedRequest, reply: Reply) -> None:
        if reply.hang:
            self._wait_for(None)
            raise _ClientGone
        if reply.status != 200:
            message = reply.error_message or wire.default_error_message(reply.status, request)
            self._send_json(reply.status, wire.error_body("openai", reply.status, message))
            return
        if reply.garbage:
            text = reply.garbage if isinstance(reply.garbage, str) else wire.GARBAGE
            self._send_raw(200, "text/html", text.encode())
            return
        script = wire.ScriptedReply(
            text=reply.text,
            tool_calls=list(reply.tool_calls),
            stop_reason=reply.stop_reason,
            model=str((request.body or {}).get("model", "fake-model")),
            input_tokens=max(1, len(request.raw) // 4),
            new_id=self.server.fake._next_id,
        )
        response = _ResponseBuilder(script)
        usage = wire.ReportedUsage(script.input_tokens, wire.output_tokens(script), 0)
        if isinstance(request.body, dict) and request.body.get("stream"):
            self._stream(response.frames(), reply, usage)
        else:
            self.server.fake._report(usage)
            self._send_json(200, response.whole())


class _ResponseBuilder:
    """One scripted reply as a Responses API response: its output items, and the SSE
    events that stream them."""

    def __init__(self, script: wire.ScriptedReply) -> None:
        self._script = script
        self._id = script.new_id("resp_")
        self._created_at = int(time.time())
        self._sequence = 0
        self._items: list[dict[str, Any]] = []
        if script.text:
            self._items.append(
                {
                    "type": "message",
                    "id": script.new_id("msg_"),
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": script.text, "annotations": []}],
                }
            )
        for name, arguments in script.tool_calls:
            self._items.append(
                {
                    "type": "function_call",
                    "id": script.new_id("fc_"),
                    "call_id": script.new_id("call_"),
                    "name": name,
                    "arguments": wire.arguments_text(arguments),
                    "status": "completed",
                }
            )

    def whole(self) -> dict[str, Any]:
        return self._response("completed", self._items)

    def frames(self) -> wire.Frames:
        frames = wire.Frames()
        frames.opening.append(self._event("response.created", response=self._response()))
        for index, item in enumerate(self._items):
            render = self._message_frames if item["type"] == "message" else self._call_frames
            frames.content.extend(render(index, item))
        frames.closing.append(self._event("response.completed", response=self.whole()))
        return frames

    def _message_frames(self, index: int, item: dict[str, Any]) -> list[bytes]:
        text = item["content"][0]["text"]
        part = {"type": "output_text", "text": "", "annotations": []}
        where = {"item_id": item["id"], "output_index": index, "content_index": 0}
        first = self._event(
            "response.output_item.added",
            output_index=index,
            item={**item, "status": "in_progress", "content": []},
        ) + self._event("response.content_part.added", part=part, **where)
        deltas = [
            self._event("response.output_text.delta", delta=piece, **where)
            for piece in wire.split_text(text)
        ]
        last = (
            self._event("response.output_text.done", text=text, **where)
            + self._event("response.content_part.done", part={**part, "text": text}, **where)
            + self._event("response.output_item.done", output_index=index, item=item)
        )
        return _join_first_and_last(first, deltas, last)

    def _call_frames(self, index: int, item: dict[str, Any]) -> list[bytes]:
        where = {"item_id": item["id"], "output_index": index}
        first = self._event(
            "response.output_item.added",
            output_index=index,
            item={**item, "status": "in_progress", "arguments": ""},
        )
        deltas = [
            self._event("response.function_call_arguments.delta", delta=piece, **where)
            for piece in wire.split_arguments(item["arguments"])
        ]
        last = self._event(
            "response.function_call_arguments.done", arguments=item["arguments"], **where
        ) + self._event("response.output_item.done", output_index=index, item=item)
        return _join_first_and_last(first, deltas, last)

    def _response(
        self, status: str = "in_progress", output: list[dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        completed = status == "completed"
        out = wire.output_tokens(self._script)
        return {
            "id": self._id,
            "object": "response",
            "created_at": self._created_at,
            "status": status,
            "error": None,
            "incomplete_details": None,
            "model": self._script.model,
            "output": output or [],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "usage": {
                "input_tokens": self._script.input_tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": out,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": self._script.input_tokens + out,
            }
            if completed
            else None,
        }

    def _event(self, kind: str, **payload: Any) -> bytes:
        self._sequence += 1
        data = {"type": kind, "sequence_number": self._sequence, **payload}
        return f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()


def _join_first_and_last(first: bytes, middle: list[bytes], last: bytes) -> list[bytes]:
    """The item's opening events ride with its first delta and its closing events with
    its last, so that holding a stream after N chunks holds it mid-item."""
    if not middle:
        return [first + last]
    if len(middle) == 1:
        return [first + middle[0] + last]
    return [first + middle[0], *middle[1:-1], middle[-1] + last]
