"""What the gateway knows of the three model APIs it speaks: which one a request is, how
the real key goes upstream, what an error looks like to a client of that API, and where
a response says how many tokens it used.

The gateway forwards bytes; it reads them only to meter. A call's usage comes from the
response: the JSON body, or for a stream the event that carries it (chat completions'
last chunk, asked for with `stream_options.include_usage`; the Responses API's
`response.completed`; Anthropic's `message_start` and `message_delta`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from typing import Any

from forkyard.models.types import Usage


class Api(Enum):
    CHAT = "openai-chat"
    RESPONSES = "openai-responses"
    MESSAGES = "anthropic-messages"
    #: Any other path (model lists, token counts): forwarded, not metered.
    OTHER = "other"

    @property
    def anthropic(self) -> bool:
        return self is Api.MESSAGES


def api_of(path: str, *, anthropic_upstream: bool) -> Api:
    """The API a request path belongs to (query strings ignored)."""
    path = path.split("?", 1)[0].rstrip("/")
    if path.endswith("/chat/completions"):
        return Api.CHAT
    if path.endswith("/responses"):
        return Api.RESPONSES
    if path.endswith("/messages"):
        return Api.MESSAGES
    return Api.MESSAGES if anthropic_upstream and "/messages/" in path else Api.OTHER


def upstream_auth(key: str, *, anthropic: bool) -> dict[str, str]:
    """The headers that carry the real key: Anthropic's `x-api-key`, else a bearer."""
    return {"x-api-key": key} if anthropic else {"authorization": f"Bearer {key}"}


def presented_token(headers: dict[str, str]) -> str | None:
    """The token a client sent, in whichever header its SDK uses."""
    if value := headers.get("x-api-key"):
        return value.strip()
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return None


#: Error kinds and how each API names them.
_OPENAI_TYPES = {
    401: "invalid_api_key",
    402: "insufficient_quota",
    413: "invalid_request_error",
    502: "server_error",
    504: "timeout",
}
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    413: "request_too_large",
    502: "api_error",
    504: "timeout_error",
}


def error_body(anthropic: bool, status: int, message: str, code: str | None = None) -> bytes:
    """An error as a client of that API expects it, so its SDK raises its own error with
    our message (`openai.APIStatusError`, `anthropic.APIStatusError`)."""
    if anthropic:
        kind = _ANTHROPIC_TYPES.get(status, "api_error")
        return json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()
    error = {"message": message, "type": _OPENAI_TYPES.get(status, "server_error"), "code": code}
    return json.dumps({"error": error}).encode()


def with_usage_requested(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    """A streamed chat completion reports its usage only when asked: ask (the client then
    sees one more chunk, with no choices, as it would had it asked itself)."""
    if api is Api.CHAT and body.get("stream") is True:
        options = body.get("stream_options")
        options = dict(options) if isinstance(options, dict) else {}
        if options.get("include_usage") is not True:
            options["include_usage"] = True
            return {**body, "stream_options": options}
    return body


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def usage_of(api: Api, payload: object) -> Usage | None:
    """The usage in a whole (non-streamed) response body, if it has one."""
    if not isinstance(payload, dict):
        return None
    usage = payload.get("usage")
    if not isinstance(usage, dict):
        return None
    if api is Api.CHAT:
        details = usage.get("prompt_tokens_details")
        cached = _int(details.get("cached_tokens")) if isinstance(details, dict) else 0
        return Usage(
            input_tokens=_int(usage.get("prompt_tokens")),
            output_tokens=_int(usage.get("completion_tokens")),
            cached_tokens=cached,
        )
    if api is Api.RESPONSES:
        details = usage.get("input_tokens_details")
        cached = _int(details.get("cached_tokens")) if isinstance(details, dict) else 0
        return Usage(
            input_tokens=_int(usage.get("input_tokens")),
            output_tokens=_int(usage.get("output_tokens")),
            cached_tokens=cached,
        )
    if api is Api.MESSAGES:
        read = _int(usage.get("cache_read_input_tokens"))
        written = _int(usage.get("cache_creation_input_tokens"))
        return Usage(
            input_tokens=_int(usage.get("input_tokens")) + read + written,
            output_tokens=_int(usage.get("output_tokens")),
            cached_tokens=read,
        )
    return None


@dataclass
class StreamMeter:
    """Reads a server-sent-event stream as it passes and keeps the usage it reports.
    Bounded: a line longer than `MAX_LINE` is dropped, not buffered without end."""

    api: Api
    usage: Usage | None = None
    #: The event that closes the call's usage was seen (no more will come).
    final: bool = False
    _pending: bytes = b""

    MAX_LINE = 4 * 1024 * 1024

    def feed(self, chunk: bytes) -> None:
        data = self._pending + chunk
        lines = data.split(b"\n")
        self._pending = lines.pop()
        if len(self._pending) > self.MAX_LINE:
            self._pending = b""
        for line in lines:
            if line.startswith(b"data:"):
                self._event(line[5:].strip())

    def _event(self, data: bytes) -> None:
        if not data or data == b"[DONE]":
            return
        try:
            event = json.loads(data)
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        if self.api is Api.CHAT:
            if (found := usage_of(Api.CHAT, event)) is not None:
                self.usage, self.final = found, True
        elif self.api is Api.RESPONSES:
            if event.get("type") in ("response.completed", "response.incomplete"):
                found = usage_of(Api.RESPONSES, event.get("response"))
                self.usage = found or self.usage
                self.final = True
        elif self.api is Api.MESSAGES:
            self._anthropic(event)

    def _anthropic(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "message_start":
            self.usage = usage_of(Api.MESSAGES, event.get("message")) or self.usage
        elif kind == "message_delta" and isinstance(event.get("usage"), dict):
            # Output tokens there are the running total; input ones, where present, too.
            delta = usage_of(Api.MESSAGES, event)
            if delta is None:
                return
            base = self.usage or Usage()
            self.final = True
            self.usage = Usage(
                input_tokens=max(base.input_tokens, delta.input_tokens),
                output_tokens=delta.output_tokens or base.output_tokens,
                cached_tokens=max(base.cached_tokens, delta.cached_tokens),
            )


def looks_like_event_stream(first_bytes: bytes) -> bool:
    """Whether a body starts as server-sent events do (a field name or a comment)."""
    head = first_bytes.lstrip()[:16]
    return head.startswith((b"data:", b"event:", b":", b"id:", b"retry:"))
