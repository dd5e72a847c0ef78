"""The OpenAI and Anthropic wire formats, as the fake model server writes them.

Pure functions from a scripted reply to response bodies and SSE frames, shaped like the
real APIs' (field names, event order, how tool calls are fragmented), so that the real
SDKs parse them exactly as they parse the real thing.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Api = Literal["openai", "anthropic"]

#: A 200 answer that is not the wire format: what a misconfigured proxy sends.
GARBAGE = (
    "<!doctype html>\n<html><body><h1>It works!</h1></body></html>\n"
    "event: message_start\ndata: {this is not json\n\n"
)

#: Tool call arguments are streamed in pieces of this many characters.
ARGUMENT_FRAGMENT = 8


@dataclass
class ScriptedReply:
    text: str
    tool_calls: Sequence[tuple[str, Mapping[str, Any] | str]]
    stop_reason: str | None
    model: str
    input_tokens: int
    new_id: Callable[[str], str]
    #: The part of `input_tokens` reported as read from the prompt cache.
    cached_tokens: int = 0


@dataclass(frozen=True)
class ReportedUsage:
    """What one reply told the client it used, in the provider-neutral sense: `input`
    counts every prompt token, the cached ones included."""

    input_tokens: int
    output_tokens: int
    cached_tokens: int


def reported_usage(script: ScriptedReply) -> ReportedUsage:
    return ReportedUsage(script.input_tokens, output_tokens(script), script.cached_tokens)


@dataclass
class Frames:
    """A stream in three parts, so the server can hold it between content chunks.
    Each item is written as one HTTP chunk (and may hold several SSE events)."""

    opening: list[bytes] = field(default_factory=list)
    content: list[bytes] = field(default_factory=list)
    closing: list[bytes] = field(default_factory=list)


def split_text(text: str) -> list[str]:
    """Text as the deltas a model streams: a word (with its trailing space) at a time."""
    return re.findall(r"\S+\s*|\s+", text)


def split_arguments(arguments: str) -> list[str]:
    return [
        arguments[start : start + ARGUMENT_FRAGMENT]
        for start in range(0, len(arguments), ARGUMENT_FRAGMENT)
    ]


def arguments_text(arguments: Mapping[str, Any] | str) -> str:
    return arguments if isinstance(arguments, str) else json.dumps(arguments)


def output_tokens(script: ScriptedReply) -> int:
    total = len(script.text) + sum(len(arguments_text(a)) for _, a in script.tool_calls)
    return max(1, total // 4)


# -- errors ---------------------------------------------------------------------------

_OPENAI_ERROR_TYPES = {401: "invalid_request_error", 404: "invalid_request_error"}
_OPENAI_ERROR_CODES = {401: "invalid_api_key", 404: "model_not_found", 429: "rate_limit_exceeded"}
_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def error_body(api: Api, status: int, message: str) -> dict[str, Any]:
    if api == "anthropic":
        kind = _ANTHROPIC_ERROR_TYPES.get(status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": message}}
    kind = _OPENAI_ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request")
    return {
        "error": {
            "message": message,
            "type": kind,
            "param": None,
            "code": _OPENAI_ERROR_CODES.get(status),
        }
    }


def default_error_message(status: int, request: Any) -> str:
    """What the real APIs say; a 401 quotes the key back, as OpenAI's does (partly),
    so that tests can check that no error message of ours repeats it."""
    body = request.body if isinstance(request.body, dict) else {}
    if status == 401:
        headers = request.headers
        key = headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ")
        return f"Incorrect API key provided: {key}."
    if status == 404:
        return f"The model `{body.get('model')}` does not exist or you do not have access to it."
    return f"fake model server: scripted HTTP {status}"


# -- OpenAI chat completions -------------------------------------------------------------


def _openai_finish_reason(script: ScriptedReply) -> str:
    return script.stop_reason or ("tool_calls" if script.tool_calls else "stop")


def _openai_usage(script: ScriptedReply) -> dict[str, Any]:
    out = output_tokens(script)
    return {
        "prompt_tokens": script.input_tokens,
        "completion_tokens": out,
        "total_tokens": script.input_tokens + out,
        "prompt_tokens_details": {"cached_tokens": script.cached_tokens},
    }


def _openai_chunk(
    completion_id: str,
    script: ScriptedReply,
    delta: dict[str, Any] | None,
    finish_reason: str | None = None,
    usage: dict[str, Any] | None = None,
) -> bytes:
    chunk = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": script.model,
        "system_fingerprint": "fp_fake",
        "choices": []
        if delta is None
        else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        "usage": usage,
    }
    return f"data: {json.dumps(chunk)}\n\n".encode()


def _openai_stream(script: ScriptedReply, *, include_usage: bool) -> Frames:
    completion_id = script.new_id("chatcmpl-")
    frames = Frames()
    frames.opening.append(
        _openai_chunk(completion_id, script, {"role": "assistant", "content": ""})
    )
    for piece in split_text(script.text):
        frames.content.append(_openai_chunk(completion_id, script, {"content": piece}))
    for index, (name, arguments) in enumerate(script.tool_calls):
        first = {
            "index": index,
            "id": script.new_id("call_"),
            "type": "function",
            "function": {"name": name, "arguments": ""},
        }
        frames.content.append(_openai_chunk(completion_id, script, {"tool_calls": [first]}))
        for piece in split_arguments(arguments_text(arguments)):
            fragment = {"index": index, "function": {"arguments": piece}}
            frames.content.append(_openai_chunk(completion_id, script, {"tool_calls": [fragment]}))
    frames.closing.append(
        _openai_chunk(completion_id, script, {}, finish_reason=_openai_finish_reason(script))
    )
    if include_usage:
        frames.closing.append(
            _openai_chunk(completion_id, script, None, usage=_openai_usage(script))
        )
    frames.closing.append(b"data: [DONE]\n\n")
    return frames


def _openai_whole(script: ScriptedReply) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": script.text or None}
    if script.tool_calls:
        message["tool_calls"] = [
            {
                "id": script.new_id("call_"),
                "type": "function",
                "function": {"name": name, "arguments": arguments_text(arguments)},
            }
            for name, arguments in script.tool_calls
        ]
    return {
        "id": script.new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": script.model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": _openai_finish_reason(script),
            }
        ],
        "usage": _openai_usage(script),
    }


# -- Anthropic messages --------------------------------------------------------------------


def _anthropic_stop_reason(script: ScriptedReply) -> str:
    return script.stop_reason or ("tool_use" if script.tool_calls else "end_turn")


def _anthropic_input(script: ScriptedReply) -> dict[str, int]:
    """Anthropic counts cache reads apart from `input_tokens` (which excludes them)."""
    return {
        "input_tokens": script.input_tokens - script.cached_tokens,
        "cache_read_input_tokens": script.cached_tokens,
        # As the real API sends it: clients that sum the four (Claude Code) need all.
        "cache_creation_input_tokens": 0,
    }


def _event(kind: str, payload: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **payload})}\n\n".encode()


def _anthropic_stream(script: ScriptedReply) -> Frames:
    frames = Frames()
    message: dict[str, Any] = {
        "id": script.new_id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": script.model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**_anthropic_input(script), "output_tokens": 1},
    }
    frames.opening.append(_event("message_start", {"message": message}) + _event("ping", {}))
    index = 0
    pieces = split_text(script.text)
    if pieces:
        start = _event(
            "content_block_start", {"index": index, "content_block": {"type": "text", "text": ""}}
        )
        for number, piece in enumerate(pieces):
            delta = _event(
                "content_block_delta",
                {"index": index, "delta": {"type": "text_delta", "text": piece}},
            )
            frames.content.append(start + delta if number == 0 else delta)
        frames.content[-1] += _event("content_block_stop", {"index": index})
        index += 1
    for name, arguments in script.tool_calls:
        block = {"type": "tool_use", "id": script.new_id("toolu_"), "name": name, "input": {}}
        frames.content.append(
            _event("content_block_start", {"index": index, "content_block": block})
        )
        for piece in split_arguments(arguments_text(arguments)):
            frames.content.append(
                _event(
                    "content_block_delta",
                    {"index": index, "delta": {"type": "input_json_delta", "partial_json": piece}},
                )
            )
        frames.content[-1] += _event("content_block_stop", {"index": index})
        index += 1
    frames.closing.append(
        _event(
            "message_delta",
            {
                "delta": {"stop_reason": _anthropic_stop_reason(script), "stop_sequence": None},
                "usage": {"output_tokens": output_tokens(script)},
            },
        )
    )
    frames.closing.append(_event("message_stop", {}))
    return frames


def _anthropic_whole(script: ScriptedReply) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if script.text:
        content.append({"type": "text", "text": script.text})
    for name, arguments in script.tool_calls:
        raw = arguments_text(arguments)
        try:
            value = json.loads(raw)
        except ValueError:
            value = {}
        content.append(
            {"type": "tool_use", "id": script.new_id("toolu_"), "name": name, "input": value}
        )
    return {
        "id": script.new_id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": script.model,
        "content": content,
        "stop_reason": _anthropic_stop_reason(script),
        "stop_sequence": None,
        "usage": {**_anthropic_input(script), "output_tokens": output_tokens(script)},
    }


# -- dispatch ------------------------------------------------------------------------------


def stream_frames(api: Api, script: ScriptedReply, *, include_usage: bool) -> Frames:
    if api == "anthropic":
        return _anthropic_stream(script)
    return _openai_stream(script, include_usage=include_usage)


def whole_reply(api: Api, script: ScriptedReply) -> dict[str, Any]:
    return _anthropic_whole(script) if api == "anthropic" else _openai_whole(script)
