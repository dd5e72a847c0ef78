"""The Messages API over the official `anthropic` SDK, streamed.

Anthropic's shape differs from chat completions in ways the caller must not see: the
system prompt is a parameter, tool results are `tool_result` blocks in a user message,
roles must alternate (consecutive same-role messages are merged), and tool inputs are
streamed as `input_json_delta` fragments of one JSON object.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import anthropic
from anthropic.types import MessageParam, RawMessageStreamEvent, ToolParam

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

ANTHROPIC_DEFAULT_BASE_URL = "https://api.anthropic.com"

#: The Messages API requires an output budget on every request; 8192 suits every
#: current model (`max_output_tokens` in the settings overrides it).
DEFAULT_MAX_OUTPUT_TOKENS = 8192

_STOP_REASONS: dict[str, StopReason] = {
    "end_turn": "end",
    "stop_sequence": "end",
    "tool_use": "tool_calls",
    "max_tokens": "max_tokens",
}


class AnthropicChatModel(SDKChatModel[anthropic.AsyncAnthropic]):
    """A `ChatModel` over `AsyncAnthropic.messages.create(stream=True)`."""

    provider = "anthropic"

    def _build_client(self) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(
            api_key=self._api_key,
            base_url=self.base_url,
            timeout=self.timeout_seconds,
            max_retries=self.max_retries,
            open_telemetry=False,
        )

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[ToolSpec] = (),
        *,
        system: str | None = None,
    ) -> AsyncGenerator[StreamEvent, None]:
        client = await self._client()
        system_prompt = join_system_prompt(system, messages)
        request_messages = to_anthropic_messages(messages)
        request_tools = [to_anthropic_tool(tool) for tool in tools]
        sdk_stream = await self._call(
            lambda: client.messages.create(
                model=self.model,
                max_tokens=self.max_output_tokens or DEFAULT_MAX_OUTPUT_TOKENS,
                messages=request_messages,
                system=system_prompt or anthropic.omit,
                tools=request_tools or anthropic.omit,
                stream=True,
            )
        )
        assembler = _EventAssembler()
        try:
            iterator = sdk_stream.__aiter__()
            while (event := await self._next(iterator)) is not None:
                for text in assembler.feed(event):
                    yield TextDelta(text=text)
        finally:
            await close_quietly(sdk_stream)
        if not assembler.started:
            raise invalid_response_error(self.base_url, "no message_start event in the stream")
        yield assembler.completion()


def join_system_prompt(system: str | None, messages: Sequence[ChatMessage]) -> str:
    """The `system` parameter: the given prompt, then every system-role message in
    order (the Messages API has no system role inside the conversation)."""
    parts = [system] if system else []
    parts.extend(message.text for message in messages if message.role == "system")
    return "\n\n".join(part for part in parts if part)


def to_anthropic_messages(messages: Sequence[ChatMessage]) -> list[MessageParam]:
    """Our conversation as alternating user/assistant messages of content blocks."""
    merged: list[dict[str, Any]] = []
    for message in messages:
        if message.role == "system":
            continue
        role = "assistant" if message.role == "assistant" else "user"
        blocks = _blocks(message)
        if not blocks:
            continue  # the API rejects empty text blocks and empty messages
        if merged and merged[-1]["role"] == role:
            merged[-1]["content"].extend(blocks)
        else:
            merged.append({"role": role, "content": blocks})
    for entry in merged:
        if entry["role"] == "user":
            # Tool results must lead the user message that follows the tool calls.
            entry["content"].sort(key=lambda block: block["type"] != "tool_result")
    return cast(list[MessageParam], merged)


def _blocks(message: ChatMessage) -> list[dict[str, Any]]:
    if message.role == "tool":
        block: dict[str, Any] = {
            "type": "tool_result",
            "tool_use_id": message.tool_call_id or "",
            "content": message.text or "(no output)",
        }
        if message.is_error:
            block["is_error"] = True
        return [block]
    blocks: list[dict[str, Any]] = []
    if message.text:
        blocks.append({"type": "text", "text": message.text})
    blocks.extend(
        {"type": "tool_use", "id": call.id, "name": call.name, "input": _input_object(call)}
        for call in message.tool_calls
    )
    return blocks


def _input_object(call: ToolCall) -> dict[str, Any]:
    """A tool call's input as the object the API insists on; invalid arguments (the
    tool's result already told the model) become an empty object."""
    try:
        value = json.loads(call.arguments)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def to_anthropic_tool(tool: ToolSpec) -> ToolParam:
    return {
        "name": tool.name,
        "description": tool.description,
        "input_schema": cast(Any, tool.parameters),
    }


@dataclass
class _PendingToolUse:
    id: str
    name: str
    partial_json: list[str] = field(default_factory=list)
    initial_input: object = None


@dataclass
class _EventAssembler:
    started: bool = False
    text: list[str] = field(default_factory=list)
    tool_uses: dict[int, _PendingToolUse] = field(default_factory=dict)
    stop_reason: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0

    def feed(self, event: RawMessageStreamEvent) -> Iterator[str]:
        if event.type == "message_start":
            self.started = True
            usage = event.message.usage
            self.input_tokens = (
                usage.input_tokens
                + (usage.cache_creation_input_tokens or 0)
                + (usage.cache_read_input_tokens or 0)
            )
            self.cached_tokens = usage.cache_read_input_tokens or 0
            self.output_tokens = usage.output_tokens
        elif event.type == "content_block_start":
            block = event.content_block
            if block.type == "text" and block.text:
                self.text.append(block.text)
                yield block.text
            elif block.type == "tool_use":
                self.tool_uses[event.index] = _PendingToolUse(
                    id=block.id, name=block.name, initial_input=block.input
                )
        elif event.type == "content_block_delta":
            delta = event.delta
            if delta.type == "text_delta" and delta.text:
                self.text.append(delta.text)
                yield delta.text
            elif delta.type == "input_json_delta" and event.index in self.tool_uses:
                self.tool_uses[event.index].partial_json.append(delta.partial_json)
        elif event.type == "message_delta":
            self.stop_reason = event.delta.stop_reason or self.stop_reason
            self.output_tokens = event.usage.output_tokens
        # content_block_stop and message_stop carry nothing we need.

    def completion(self) -> Completion:
        tool_calls = tuple(
            ToolCall(id=use.id, name=use.name, arguments=_arguments(use))
            for _, use in sorted(self.tool_uses.items())
        )
        if self.stop_reason is None:
            stop_reason: StopReason = "tool_calls" if tool_calls else "end"
        else:
            stop_reason = _STOP_REASONS.get(self.stop_reason, "other")
        return Completion(
            text="".join(self.text),
            tool_calls=tool_calls,
            stop_reason=stop_reason,
            usage=Usage(
                input_tokens=self.input_tokens,
                output_tokens=self.output_tokens,
                cached_tokens=self.cached_tokens,
            ),
        )


def _arguments(use: _PendingToolUse) -> str:
    if use.partial_json:
        return "".join(use.partial_json)
    # Some proxies send the whole input in content_block_start and no deltas.
    if isinstance(use.initial_input, dict) and use.initial_input:
        return json.dumps(use.initial_input)
    return "{}"
