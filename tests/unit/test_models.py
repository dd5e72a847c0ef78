"""The chat-model providers, through the real SDKs over real HTTP to the fake server."""

from __future__ import annotations

import json
import socket
import time
import traceback
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing, asynccontextmanager
from typing import Any, Literal

import anyio
import openai
import pytest

from forkyard.models import (
    AnthropicChatModel,
    ChatMessage,
    ChatModel,
    Completion,
    ModelConfig,
    ModelError,
    OpenAIChatModel,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolSpec,
    complete,
    create_chat_model,
    estimate_tokens,
)
from tests.fakes import fixtures
from tests.fakes.model_server import FakeModelServer, RecordedRequest, Reply

fake_model_server = fixtures.fake_model_server

Provider = Literal["openai", "anthropic"]
PROVIDERS: list[Provider] = ["openai", "anthropic"]

SECRET_KEY = "sk-test-5ecret-0123456789abcdef"

READ_FILE = ToolSpec(
    name="read_file",
    description="Read a file of the worktree.",
    parameters={
        "type": "object",
        "properties": {"path": {"type": "string"}, "start_line": {"type": "integer"}},
        "required": ["path"],
    },
)
FINISH = ToolSpec(
    name="finish",
    description="End the run with a summary.",
    parameters={"type": "object", "properties": {"summary": {"type": "string"}}},
)


@asynccontextmanager
async def chat_model(
    server: FakeModelServer,
    provider: Provider,
    environ: dict[str, str] | None = None,
    **overrides: Any,
) -> AsyncIterator[ChatModel]:
    model = create_chat_model(server.model_config(provider, **overrides), environ or {})
    try:
        yield model
    finally:
        await model.aclose()


async def collect(
    model: ChatModel,
    messages: Sequence[ChatMessage],
    tools: Sequence[ToolSpec] = (),
    *,
    system: str | None = None,
) -> tuple[list[str], Completion]:
    deltas: list[str] = []
    events: list[StreamEvent] = []
    async with aclosing(model.stream(messages, tools, system=system)) as stream:
        async for event in stream:
            events.append(event)
            if isinstance(event, TextDelta):
                deltas.append(event.text)
    assert events, "the stream yielded nothing"
    assert all(isinstance(event, TextDelta) for event in events[:-1])
    final = events[-1]
    assert isinstance(final, Completion), "a stream must end with its Completion"
    return deltas, final


def sent_key(request: RecordedRequest) -> str:
    """The API key a request carried, in whichever header its SDK puts it."""
    headers = request.headers
    return headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ")


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


# -- OpenAI-compatible ------------------------------------------------------------------


async def test_openai_streams_text_in_several_deltas_then_a_completion(
    fake_model_server: FakeModelServer,
) -> None:
    fake_model_server.script(Reply(text="Three agents are running right now."))
    async with chat_model(fake_model_server, "openai") as model:
        deltas, completion = await collect(model, [ChatMessage.user("what is running?")])

    assert len(deltas) > 3
    assert "".join(deltas) == "Three agents are running right now."
    assert completion.text == "Three agents are running right now."
    assert completion.tool_calls == ()
    assert completion.stop_reason == "end"
    assert completion.usage is not None
    assert completion.usage.input_tokens > 0
    assert completion.usage.output_tokens > 0
    body = fake_model_server.last_request.body
    assert body["stream"] is True
    assert body["model"] == "fake-model"


async def test_openai_assembles_two_streamed_tool_calls(
    fake_model_server: FakeModelServer,
) -> None:
    fake_model_server.script(
        Reply(
            text="Let me look.",
            tool_calls=[
                ("read_file", {"path": "src/forkyard/very/long/module_name.py", "start_line": 10}),
                ("finish", '{"summary": "broken json'),
            ],
        )
    )
    async with chat_model(fake_model_server, "openai") as model:
        _, completion = await collect(model, [ChatMessage.user("read it")], [READ_FILE, FINISH])

    assert completion.text == "Let me look."
    assert completion.stop_reason == "tool_calls"
    first, second = completion.tool_calls
    assert first.name == "read_file"
    assert json.loads(first.arguments) == {
        "path": "src/forkyard/very/long/module_name.py",
        "start_line": 10,
    }
    assert second.name == "finish"
    assert second.arguments == '{"summary": "broken json'  # raw, as the model sent it
    assert first.id and second.id and first.id != second.id


async def test_openai_request_carries_system_prompt_tool_schemas_and_tool_results(
    fake_model_server: FakeModelServer,
) -> None:
    fake_model_server.script(Reply(text="Done."))
    call = ToolCall(id="call_abc", name="read_file", arguments='{"path": "README.md"}')
    history = [
        ChatMessage.user("read the readme"),
        ChatMessage.assistant("Reading.", [call]),
        ChatMessage.tool_result(call, "# sample"),
        ChatMessage.user("[event] agent #2 finished"),
    ]
    async with chat_model(fake_model_server, "openai") as model:
        await collect(model, history, [READ_FILE], system="You are Forkyard.")

    body = fake_model_server.last_request.body
    assert body["messages"] == [
        {"role": "system", "content": "You are Forkyard."},
        {"role": "user", "content": "read the readme"},
        {
            "role": "assistant",
            "content": "Reading.",
            "tool_calls": [
                {
                    "id": "call_abc",
                    "type": "function",
                    "function": {"name": "read_file", "arguments": '{"path": "README.md"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_abc", "content": "# sample"},
        {"role": "user", "content": "[event] agent #2 finished"},
    ]
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "read_file",
                "description": READ_FILE.description,
                "parameters": READ_FILE.parameters,
            },
        }
    ]


async def test_openai_without_a_configured_key_sends_a_placeholder(
    fake_model_server: FakeModelServer,
) -> None:
    """Local servers (Ollama, llama.cpp) need no key; the process environment's
    OPENAI_API_KEY must not be picked up behind the settings' back either."""
    fake_model_server.script(Reply(text="hi"))
    async with chat_model(fake_model_server, "openai", {"OPENAI_API_KEY": "sk-ambient"}) as model:
        await complete(model, [ChatMessage.user("hello")])
    assert fake_model_server.last_request.headers["authorization"] == "Bearer not-needed"


async def test_openai_retries_a_server_error_as_configured(
    fake_model_server: FakeModelServer,
) -> None:
    fake_model_server.script(Reply(status=503), Reply(text="Back again."))
    async with chat_model(fake_model_server, "openai", max_retries=1) as model:
        completion = await complete(model, [ChatMessage.user("hello")])
    assert completion.text == "Back again."
    assert len(fake_model_server.requests) == 2


# -- Anthropic --------------------------------------------------------------------------


async def test_anthropic_streams_text_and_tool_use(fake_model_server: FakeModelServer) -> None:
    fake_model_server.script(
        Reply(
            text="I will read two files.",
            tool_calls=[
                ("read_file", {"path": "src/app.py"}),
                ("read_file", {"path": "tests/test_app.py", "start_line": 1}),
            ],
        )
    )
    environ = {"FAKE_ANTHROPIC_KEY": SECRET_KEY}
    async with chat_model(
        fake_model_server, "anthropic", environ, api_key_env="FAKE_ANTHROPIC_KEY"
    ) as model:
        deltas, completion = await collect(model, [ChatMessage.user("look")], [READ_FILE])

    assert len(deltas) > 3
    assert "".join(deltas) == completion.text == "I will read two files."
    assert completion.stop_reason == "tool_calls"
    assert [call.name for call in completion.tool_calls] == ["read_file", "read_file"]
    assert [json.loads(call.arguments) for call in completion.tool_calls] == [
        {"path": "src/app.py"},
        {"path": "tests/test_app.py", "start_line": 1},
    ]
    assert all(call.id.startswith("toolu_") for call in completion.tool_calls)
    assert completion.usage is not None
    assert completion.usage.output_tokens > 0
    assert sent_key(fake_model_server.last_request) == SECRET_KEY


async def test_anthropic_request_shape(fake_model_server: FakeModelServer) -> None:
    """System prompt as `system`, schemas as `input_schema`, tool results as
    `tool_result` blocks of a user message, same-role messages merged."""
    fake_model_server.script(Reply(text="ok"))
    calls = [
        ToolCall(id="toolu_1", name="read_file", arguments='{"path": "a.py"}'),
        ToolCall(id="toolu_2", name="read_file", arguments="not json"),
    ]
    history = [
        ChatMessage.user("fix a.py"),
        ChatMessage.user("and hurry"),
        ChatMessage.assistant("Reading both.", calls),
        ChatMessage.tool_result(calls[0], "print(1)"),
        ChatMessage.tool_result(calls[1], "arguments are not valid JSON", is_error=True),
        ChatMessage.user("[event] agent #1 is running"),
    ]
    async with chat_model(fake_model_server, "anthropic") as model:
        await collect(model, history, [READ_FILE, FINISH], system="You are Forkyard.")

    body = fake_model_server.last_request.body
    assert body["system"] == "You are Forkyard."
    assert body["max_tokens"] > 0
    assert body["tools"] == [
        {
            "name": "read_file",
            "description": READ_FILE.description,
            "input_schema": READ_FILE.parameters,
        },
        {"name": "finish", "description": FINISH.description, "input_schema": FINISH.parameters},
    ]
    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "fix a.py"},
                {"type": "text", "text": "and hurry"},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Reading both."},
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "read_file",
                    "input": {"path": "a.py"},
                },
                {"type": "tool_use", "id": "toolu_2", "name": "read_file", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "print(1)"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_2",
                    "content": "arguments are not valid JSON",
                    "is_error": True,
                },
                {"type": "text", "text": "[event] agent #1 is running"},
            ],
        },
    ]


async def test_anthropic_missing_key_names_the_variable(
    fake_model_server: FakeModelServer,
) -> None:
    config = fake_model_server.model_config("anthropic", api_key_env="FORKYARD_TEST_CLAUDE_KEY")
    with pytest.raises(ModelError, match="FORKYARD_TEST_CLAUDE_KEY") as caught:
        create_chat_model(config, {"ANTHROPIC_API_KEY": "sk-ambient"})
    assert caught.value.kind == "missing_key"
    assert fake_model_server.requests == []


# -- failures, both providers -------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_endpoint_down_names_the_url(provider: Provider) -> None:
    base_url = f"http://127.0.0.1:{free_port()}/v1"
    config = ModelConfig(provider=provider, base_url=base_url, model="m", max_retries=0)
    model = create_chat_model(config, {})
    try:
        with pytest.raises(ModelError) as caught:
            await complete(model, [ChatMessage.user("hello")])
    finally:
        await model.aclose()
    assert str(caught.value).startswith(f"cannot reach the model endpoint {base_url}: ")
    assert caught.value.kind == "unreachable"


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_unknown_model_names_the_model(
    fake_model_server: FakeModelServer, provider: Provider
) -> None:
    fake_model_server.script(Reply(status=404))
    async with chat_model(fake_model_server, provider, model="qwen9-imaginary") as model:
        with pytest.raises(ModelError) as caught:
            await complete(model, [ChatMessage.user("hello")])
    assert "model 'qwen9-imaginary' not found at http://127.0.0.1:" in str(caught.value)
    assert caught.value.kind == "not_found"


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("garbage", [True, "<html><body>502 Bad Gateway</body></html>"])
async def test_garbage_response_is_an_invalid_response(
    fake_model_server: FakeModelServer, provider: Provider, garbage: bool | str
) -> None:
    fake_model_server.script(Reply(garbage=garbage))
    async with chat_model(fake_model_server, provider) as model:
        with pytest.raises(ModelError, match="the model endpoint returned an invalid response"):
            await complete(model, [ChatMessage.user("hello")])


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_hanging_model_times_out_quickly(
    fake_model_server: FakeModelServer, provider: Provider
) -> None:
    [reply] = fake_model_server.script(Reply(hang=True))
    started = time.monotonic()
    async with chat_model(fake_model_server, provider, timeout_seconds=0.5) as model:
        with pytest.raises(ModelError, match=r"did not answer within 0\.5 s") as caught:
            await complete(model, [ChatMessage.user("hello")])
    assert time.monotonic() - started < 5
    assert caught.value.kind == "timeout"
    await reply.client_disconnected()


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_model_that_stalls_mid_reply_times_out(
    fake_model_server: FakeModelServer, provider: Provider
) -> None:
    fake_model_server.script(Reply(text="I started but then", hold=True))
    async with chat_model(fake_model_server, provider, timeout_seconds=0.5) as model:
        with pytest.raises(ModelError, match=r"did not answer within 0\.5 s"):
            await complete(model, [ChatMessage.user("hello")])


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_the_key_never_appears_in_errors_or_reprs(
    fake_model_server: FakeModelServer, provider: Provider
) -> None:
    """The fake answers 401 quoting the key back, as OpenAI does."""
    fake_model_server.script(Reply(status=401))
    environ = {"FAKE_KEY": SECRET_KEY}
    async with chat_model(fake_model_server, provider, environ, api_key_env="FAKE_KEY") as model:
        with pytest.raises(ModelError) as caught:
            await complete(model, [ChatMessage.user("hello")])
        model_repr = repr(model)

    assert sent_key(fake_model_server.last_request) == SECRET_KEY
    error = caught.value
    assert error.kind == "auth"
    assert "FAKE_KEY" in str(error)
    rendered = "".join(traceback.format_exception(error))
    for text in (str(error), repr(error), rendered, model_repr):
        assert SECRET_KEY not in text
    assert "FAKE_KEY" in model_repr


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_connection_lost_mid_reply_says_so(provider: Provider) -> None:
    server = FakeModelServer().start()
    try:
        [reply] = server.script(Reply(text="half of an answer", hold=True))
        async with (
            chat_model(server, provider) as model,
            aclosing(model.stream([ChatMessage.user("go")])) as stream,
        ):
            assert await anext(stream) == TextDelta(text="half ")
            await anyio.to_thread.run_sync(server.close)  # the endpoint goes away
            with pytest.raises(ModelError, match="broke off mid-reply") as caught:
                await anext(stream)
    finally:
        server.close()
    assert caught.value.kind == "unreachable"
    assert reply.disconnected


# -- cancellation and holding ----------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_cancelling_a_stream_closes_the_http_response(
    fake_model_server: FakeModelServer, provider: Provider
) -> None:
    [reply] = fake_model_server.script(Reply(text="a long answer that never ends", hold=True))
    received: list[str] = []
    async with chat_model(fake_model_server, provider) as model:
        with anyio.CancelScope() as scope:
            async with aclosing(model.stream([ChatMessage.user("go")])) as stream:
                async for event in stream:
                    assert isinstance(event, TextDelta)
                    received.append(event.text)
                    scope.cancel()  # as an interrupt would, while the model is mid-reply
        await reply.client_disconnected()
    assert received == ["a "]
    assert not reply.finished


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_held_reply_continues_when_released(
    fake_model_server: FakeModelServer, provider: Provider
) -> None:
    [reply] = fake_model_server.script(Reply(text="first then the rest", hold=True))
    async with (
        chat_model(fake_model_server, provider) as model,
        aclosing(model.stream([ChatMessage.user("go")])) as stream,
    ):
        first = await anext(stream)
        assert first == TextDelta(text="first ")
        reply.release()
        rest = [event async for event in stream]
    final = rest[-1]
    assert isinstance(final, Completion)
    assert final.text == "first then the rest"
    await reply.done()
    assert reply.finished


# -- the fake server itself, from sync code ------------------------------------------------


def test_fake_server_answers_sync_clients_without_streaming() -> None:
    with FakeModelServer(default=Reply(text="default answer")) as server:
        server.script(Reply(tool_calls=[("finish", {"summary": "done"})]))
        with openai.OpenAI(api_key="x", base_url=server.openai_base_url, max_retries=0) as client:
            scripted = client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}]
            )
            fallback = client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "again"}]
            )
        assert len(server.wait_for_requests(2)) == 2
    tool_calls = scripted.choices[0].message.tool_calls
    assert tool_calls is not None
    assert tool_calls[0].type == "function"
    assert tool_calls[0].function.name == "finish"
    assert json.loads(tool_calls[0].function.arguments) == {"summary": "done"}
    assert fallback.choices[0].message.content == "default answer"


def test_estimate_tokens_is_about_four_characters_a_token() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("abcd") == 1
    assert estimate_tokens("x" * 4000) == 1000


def test_factory_picks_the_provider(fake_model_server: FakeModelServer) -> None:
    openai_model = create_chat_model(fake_model_server.model_config("openai"), {})
    anthropic_model = create_chat_model(fake_model_server.model_config("anthropic"), {})
    assert isinstance(openai_model, OpenAIChatModel)
    assert isinstance(anthropic_model, AnthropicChatModel)
    assert openai_model.base_url == fake_model_server.openai_base_url
