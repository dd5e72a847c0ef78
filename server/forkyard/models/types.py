"""Provider-neutral chat types: what the conversation and the agent loop speak.

Both callers hold a `ChatModel` and never see an SDK type, so that switching a user from
Ollama to Anthropic is a settings change, and so that tests can drive either provider
through the same assertions.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["system", "user", "assistant", "tool"]

#: Why the model stopped, normalized across providers. Callers should decide whether to
#: run tools from `Completion.tool_calls`, not from this: several OpenAI-compatible
#: servers report "stop" even when they return tool calls.
StopReason = Literal["end", "tool_calls", "max_tokens", "other"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ToolSpec(_Frozen):
    """A tool offered to the model; `parameters` is a JSON Schema object."""

    name: str
    description: str
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})


class ToolCall(_Frozen):
    """A tool call as the model made it.

    `arguments` stays the raw JSON text the model sent, possibly invalid: the agent loop
    reports a parse error back to the model as the tool's result instead of crashing.
    """

    id: str
    name: str
    arguments: str = "{}"


class ChatMessage(_Frozen):
    """One message of a conversation, in the order the model should read them.

    Assistant messages may carry `tool_calls`; a `tool` message is the result of one call
    and names it by `tool_call_id` (and `name`).
    """

    role: Role
    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None
    #: A tool result that reports a failure (Anthropic tells the model so explicitly).
    is_error: bool = False

    @classmethod
    def system(cls, text: str) -> ChatMessage:
        return cls(role="system", text=text)

    @classmethod
    def user(cls, text: str) -> ChatMessage:
        return cls(role="user", text=text)

    @classmethod
    def assistant(cls, text: str = "", tool_calls: Sequence[ToolCall] = ()) -> ChatMessage:
        return cls(role="assistant", text=text, tool_calls=tuple(tool_calls))

    @classmethod
    def tool_result(cls, call: ToolCall, text: str, *, is_error: bool = False) -> ChatMessage:
        return cls(role="tool", text=text, tool_call_id=call.id, name=call.name, is_error=is_error)


class Usage(_Frozen):
    """Token counts of one call. `input_tokens` counts every prompt token, the cached ones
    included; `cached_tokens` is the part read from the provider's prompt cache (billed at
    a lower price: `forkyard.models.pricing`)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cached_tokens=self.cached_tokens + other.cached_tokens,
        )


class TextDelta(_Frozen):
    """A piece of the reply's text, passed on as soon as the endpoint sent it."""

    text: str


class Completion(_Frozen):
    """The last event of every stream: the whole reply, its tool calls assembled."""

    text: str
    tool_calls: tuple[ToolCall, ...] = ()
    stop_reason: StopReason = "end"
    #: None when the endpoint did not report token counts.
    usage: Usage | None = None


StreamEvent = TextDelta | Completion


class ChatModel(Protocol):
    """A chat model behind one small interface (after openai-agents' `Model`).

    `stream` yields `TextDelta`s as they arrive and ends with exactly one `Completion`;
    every failure is raised as `ModelError` with a message fit for the user. Iterate it
    inside `contextlib.aclosing(...)` so that leaving early closes the HTTP response at
    once; cancelling the consuming task closes it too. `aclose` releases the connection
    pool and must be called when the model is no longer used.
    """

    def stream(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[ToolSpec] = (),
        *,
        system: str | None = None,
    ) -> AsyncGenerator[StreamEvent, None]: ...

    async def aclose(self) -> None: ...


async def complete(
    model: ChatModel,
    messages: Sequence[ChatMessage],
    tools: Sequence[ToolSpec] = (),
    *,
    system: str | None = None,
) -> Completion:
    """Drain a stream and return its `Completion`, for callers that show no deltas."""
    async with aclosing(model.stream(messages, tools, system=system)) as stream:
        async for event in stream:
            if isinstance(event, Completion):
                return event
    raise AssertionError("a ChatModel stream ended without a Completion")


def estimate_tokens(text: str) -> int:
    """A cheap token count (about four characters a token) for context budgeting.

    Deliberately no tokenizer: nothing may be downloaded at run time, and trimming a
    thread only needs the right order of magnitude.
    """
    return (len(text) + 3) // 4


def estimate_message_tokens(message: ChatMessage) -> int:
    """`estimate_tokens` for a whole message, its tool calls and framing included."""
    total = 4 + estimate_tokens(message.text)
    for call in message.tool_calls:
        total += 4 + estimate_tokens(call.name) + estimate_tokens(call.arguments)
    return total
