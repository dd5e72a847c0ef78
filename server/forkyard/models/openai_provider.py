"""Chat completions over the official `openai` SDK, for every OpenAI-compatible endpoint
(OpenAI, Ollama, vLLM, llama.cpp server, LM Studio, OpenRouter)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncGenerator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import openai
from openai.types.chat import (
    ChatCompletionChunk,
    ChatCompletionMessageParam,
    ChatCompletionToolParam,
)

from forkyard.models.errors import invalid_response_error
from forkyard.models.provider import SDKChatModel, close_quietly
from forkyard.models.types import (
    ChatMessage,
    Completion,
    StopReason,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolSpec,
    Usage,
)

OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"

_STOP_REASONS: dict[str, StopReason] = {
    "stop": "end",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "length": "max_tokens",
}


class OpenAIChatModel(SDKChatModel[openai.AsyncOpenAI]):
    """A `ChatModel` over `AsyncOpenAI` chat completions with `stream=True`."""

    provider = "openai"

    def _build_client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            api_key=self._api_key,
            base_url=self.base_url,
            timeout=self.timeout_seconds,
            max_retries=self.max_retries,
        )

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[ToolSpec] = (),
        *,
        system: str | None = None,
    ) -> AsyncGenerator[StreamEvent, None]:
        client = await self._client()
        request_messages = to_openai_messages(messages, system)
        request_tools = [to_openai_tool(tool) for tool in tools]
        sdk_stream = await self._call(
            lambda: client.chat.completions.create(
                model=self.model,
                messages=request_messages,
                tools=request_tools or openai.omit,
                max_tokens=self.max_output_tokens or openai.omit,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        assembler = _ChunkAssembler()
        try:
            iterator = sdk_stream.__aiter__()
            while (chunk := await self._next(iterator)) is not None:
                for text in assembler.feed(chunk):
                    yield TextDelta(text=text)
        finally:
            await close_quietly(sdk_stream)
        if not assembler.chunks:
            raise invalid_response_error(self.base_url, "no completion chunks in the stream")
        yield assembler.completion()


def to_openai_messages(
    messages: Sequence[ChatMessage], system: str | None
) -> list[ChatCompletionMessageParam]:
    """Our messages in the chat completions format; `system` goes first."""
    result: list[dict[str, Any]] = []
    if system:
        result.append({"role": "system", "content": system})
    for message in messages:
        if message.role == "assistant":
            entry: dict[str, Any] = {"role": "assistant", "content": message.text or None}
            if message.tool_calls:
                entry["tool_calls"] = [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": _valid_json(call.arguments)},
                    }
                    for call in message.tool_calls
                ]
            elif not message.text:
                entry["content"] = ""
            result.append(entry)
        elif message.role == "tool":
            result.append(
                {
                    "role": "tool",
                    "tool_call_id": message.tool_call_id or "",
                    "content": message.text,
                }
            )
        else:
            result.append({"role": message.role, "content": message.text})
    return cast(list[ChatCompletionMessageParam], result)


def to_openai_tool(tool: ToolSpec) -> ChatCompletionToolParam:
    return {
        "type": "function",
        "function": {
            "name": tool.name,
            "description": tool.description,
            "parameters": tool.parameters,
        },
    }


def _valid_json(arguments: str) -> str:
    """Arguments as sent back in the history: endpoints that parse them (vLLM, Ollama)
    reject the whole request over invalid JSON, and the tool's result already told the
    model what was wrong with them."""
    try:
        json.loads(arguments)
    except ValueError:
        return "{}"
    return arguments


@dataclass
class _PendingCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass
class _ChunkAssembler:
    """Builds the reply from streamed chunks; tool calls by their `index`, as the API
    streams them: the first fragment carries id and name, the rest argument pieces."""

    chunks: int = 0
    text: list[str] = field(default_factory=list)
    calls: dict[int, _PendingCall] = field(default_factory=dict)
    finish_reason: str | None = None
    usage: Usage | None = None

    def feed(self, chunk: ChatCompletionChunk) -> Iterator[str]:
        self.chunks += 1
        if chunk.usage is not None:
            details = chunk.usage.prompt_tokens_details
            self.usage = Usage(
                input_tokens=chunk.usage.prompt_tokens or 0,
                output_tokens=chunk.usage.completion_tokens or 0,
                cached_tokens=(details.cached_tokens or 0) if details is not None else 0,
            )
        for choice in chunk.choices or ():
            if choice.index not in (0, None):
                continue
            if choice.finish_reason:
                self.finish_reason = choice.finish_reason
            delta = choice.delta
            if delta is None:
                continue
            for fragment in delta.tool_calls or ():
                self._feed_call(fragment.index, fragment.id, fragment.function)
            if delta.content:
                self.text.append(delta.content)
                yield delta.content

    def _feed_call(self, index: int | None, call_id: str | None, function: Any) -> None:
        if index is None:
            # Some servers leave out `index`: a new id starts a new call.
            index = len(self.calls) if call_id or not self.calls else max(self.calls)
        pending = self.calls.setdefault(index, _PendingCall())
        if call_id and not pending.id:
            pending.id = call_id
        if function is None:
            return
        name = function.name or ""
        if name and name != pending.name:
            # Usually sent once; a few servers repeat it in every fragment.
            pending.name = pending.name + name if pending.name and not pending.arguments else name
        if function.arguments:
            pending.arguments.append(function.arguments)

    def completion(self) -> Completion:
        tool_calls = tuple(
            ToolCall(
                id=pending.id or f"call_{uuid.uuid4().hex[:12]}",
                name=pending.name,
                arguments="".join(pending.arguments) or "{}",
            )
            for _, pending in sorted(self.calls.items())
        )
        stop_reason = _STOP_REASONS.get(self.finish_reason or "", "other")
        if self.finish_reason is None:
            stop_reason = "tool_calls" if tool_calls else "end"
        return Completion(
            text="".join(self.text),
            tool_calls=tool_calls,
            stop_reason=stop_reason,
            usage=self.usage,
        )
