"""What the gateway knows of the four model APIs it speaks: which one a request is, how
the real key goes upstream, what an error looks like to a client of that API, and where
a response says how many tokens it used.

The gateway forwards bytes; it reads them only to meter. A call's usage comes from the
response: the JSON body, or for a stream the event that carries it (chat completions'
last chunk, asked for with `stream_options.include_usage`; the Responses API's
`response.completed`; Anthropic's `message_start` and `message_delta`; Gemini's
`usageMetadata`, in every chunk as a running total, final in the one with a
`finishReason`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal

from forkyard.models.types import Usage


class Api(Enum):
    CHAT = "openai-chat"
    RESPONSES = "openai-responses"
    MESSAGES = "anthropic-messages"
    #: Google's Gemini API (`models/M:generateContent`, `:streamGenerateContent`).
    GEMINI = "gemini"
    #: Any other path (model lists, token counts): forwarded, not metered.
    OTHER = "other"

    @property
    def anthropic(self) -> bool:
        return self is Api.MESSAGES


#: Whose conventions a call follows: how its key goes upstream and how its errors look.
Dialect = Literal["openai", "anthropic", "gemini"]
GEMINI_KEY_HEADER = "x-goog-api-key"
_GEMINI_CALLS = (":generateContent", ":streamGenerateContent")


def api_of(path: str, *, anthropic_upstream: bool) -> Api:
    """The API a request path belongs to (query strings ignored)."""
    path = path.split("?", 1)[0].rstrip("/")
    if path.endswith(_GEMINI_CALLS):
        return Api.GEMINI
    if path.endswith("/chat/completions"):
        return Api.CHAT
    if path.endswith("/responses"):
        return Api.RESPONSES
    if path.endswith("/messages"):
        return Api.MESSAGES
    return Api.MESSAGES if anthropic_upstream and "/messages/" in path else Api.OTHER


def dialect_of(api: Api, headers: dict[str, str], *, anthropic_upstream: bool) -> Dialect:
    """The conventions of a call: its API's, or for another path (a model list) those
    of the upstream, or Gemini's for a client that sent its key as Gemini's SDK does."""
    if api is Api.GEMINI or (api is Api.OTHER and GEMINI_KEY_HEADER in headers):
        return "gemini"
    if api.anthropic or (api is Api.OTHER and anthropic_upstream):
        return "anthropic"
    return "openai"


def guessed_dialect(target: str, headers: dict[str, str]) -> Dialect:
    """The conventions of a client whose grant is unknown: read from its path and from
    the headers its SDK sends."""
    if api_of(target, anthropic_upstream=False) is Api.GEMINI or GEMINI_KEY_HEADER in headers:
        return "gemini"
    return "anthropic" if "x-api-key" in headers or "anthropic-version" in headers else "openai"


def streams(api: Api, target: str, request: dict[str, Any]) -> bool:
    """Whether a call's answer is server-sent events. Gemini says so in the URL
    (`:streamGenerateContent?alt=sse`; without `alt=sse` it streams one JSON array,
    read whole here), the others with `"stream": true` in the body."""
    if api is Api.GEMINI:
        path, _, query = target.partition("?")
        return path.endswith(":streamGenerateContent") and "alt=sse" in query.split("&")
    return request.get("stream") is True


def without_key_parameter(target: str) -> str:
    """The target without a `key=` query parameter: Gemini's other way to send a key,
    never trusted as a token here nor passed on (the upstream gets the real key in a
    header, and a token in a URL would end up in the upstream's logs)."""
    path, mark, query = target.partition("?")
    if not mark:
        return target
    kept = [part for part in query.split("&") if part.split("=", 1)[0] != "key"]
    return f"{path}?{'&'.join(kept)}" if kept else path


def upstream_auth(key: str, dialect: Dialect) -> dict[str, str]:
    """The headers that carry the real key: Anthropic's `x-api-key`, Gemini's
    `x-goog-api-key`, else a bearer."""
    if dialect == "anthropic":
        return {"x-api-key": key}
    if dialect == "gemini":
        return {GEMINI_KEY_HEADER: key}
    return {"authorization": f"Bearer {key}"}


def presented_token(headers: dict[str, str]) -> str | None:
    """The token a client sent, in whichever header its SDK uses."""
    for name in ("x-api-key", GEMINI_KEY_HEADER):
        if value := headers.get(name):
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
_GEMINI_STATUSES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    402: "RESOURCE_EXHAUSTED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def error_body(
    dialect: Dialect | bool, status: int, message: str, code: str | None = None
) -> bytes:
    """An error as a client of that API expects it, so its SDK raises its own error with
    our message (`openai.APIStatusError`, `anthropic.APIStatusError`, Gemini's
    `ApiError`). A bool means Anthropic's (True) or OpenAI's."""
    if dialect == "gemini":
        error = {
            "code": status,
            "message": message,
            "status": _GEMINI_STATUSES.get(status, "INTERNAL"),
        }
        return json.dumps({"error": error}).encode()
    if dialect is True or dialect == "anthropic":
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


#: (input tokens, output tokens, the details holding the cached ones), by OpenAI API.
_OPENAI_USAGE_FIELDS = {
    Api.CHAT: ("prompt_tokens", "completion_tokens", "prompt_tokens_details"),
    Api.RESPONSES: ("input_tokens", "output_tokens", "input_tokens_details"),
}


def usage_of(api: Api, payload: object) -> Usage | None:
    """The usage in a whole (non-streamed) response body, if it has one."""
    if api is Api.GEMINI:
        return _gemini_usage(payload)
    if not isinstance(payload, dict):
        return None
    usage = payload.get("usage")
    if not isinstance(usage, dict):
        return None
    if api in _OPENAI_USAGE_FIELDS:
        # The two OpenAI APIs report the same three counts under different names.
        inputs, outputs, details_name = _OPENAI_USAGE_FIELDS[api]
        details = usage.get(details_name)
        cached = _int(details.get("cached_tokens")) if isinstance(details, dict) else 0
        return Usage(
            input_tokens=_int(usage.get(inputs)),
            output_tokens=_int(usage.get(outputs)),
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


def _gemini_usage(payload: object) -> Usage | None:
    """`usageMetadata`'s counts (thoughts are output; the prompt's count includes its
    cached part); a streamed JSON array's totals are in its last element that has it."""
    if isinstance(payload, list):
        found = [usage for item in payload if (usage := _gemini_usage(item)) is not None]
        return found[-1] if found else None
    usage = payload.get("usageMetadata") if isinstance(payload, dict) else None
    if not isinstance(usage, dict):
        return None
    return Usage(
        input_tokens=_int(usage.get("promptTokenCount"))
        + _int(usage.get("toolUsePromptTokenCount")),
        output_tokens=_int(usage.get("candidatesTokenCount"))
        + _int(usage.get("thoughtsTokenCount")),
        cached_tokens=_int(usage.get("cachedContentTokenCount")),
    )


def _finished(event: dict[str, Any]) -> bool:
    """Whether a Gemini chunk ends its answer (a candidate says why it stopped)."""
    candidates = event.get("candidates")
    return isinstance(candidates, list) and any(
        isinstance(candidate, dict) and candidate.get("finishReason") for candidate in candidates
    )


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
        elif self.api is Api.GEMINI and (found := _gemini_usage(event)) is not None:
            self.usage = found
            self.final = _finished(event)

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
