"""The conversation with a model: the real server streams replies from a fake model server
on 127.0.0.1, reached through the real SDKs over real HTTP."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from forkyard.client import ForkyardClient
from tests.e2e.conftest import StartServer
from tests.fakes.model_server import FakeModelServer, Reply

pytestmark = pytest.mark.timeout(120)


def model_options(
    server: FakeModelServer, provider: str = "openai", **extra: Any
) -> dict[str, Any]:
    config = server.model_config(provider).model_dump(exclude_none=True)  # type: ignore[arg-type]
    config.update({"timeoutSeconds": 5, "maxRetries": 0})
    return {"models": {"default": config}, **extra}


def chat_events(client: ForkyardClient, method: str, turn_id: str) -> list[dict[str, Any]]:
    return [
        p
        for m, p in client.notifications
        if m == method and p.get("turnId", p.get("message", {}).get("turnId")) == turn_id
    ]


def turn_states(client: ForkyardClient, turn_id: str) -> list[str]:
    return [p["state"] for p in chat_events(client, "forkyard/chat/turn", turn_id)]


async def wait_turn(client: ForkyardClient, turn_id: str, *states: str) -> str:
    wanted = set(states or ("completed", "failed", "interrupted"))

    def ended() -> str | None:
        seen = turn_states(client, turn_id)
        return seen[-1] if seen and seen[-1] in wanted else None

    result: str = await client.wait_until(ended)
    return result


def reply_text(client: ForkyardClient, turn_id: str) -> str:
    [message] = [
        p["message"]
        for m, p in client.notifications
        if m == "forkyard/chat/message"
        and p["message"]["turnId"] == turn_id
        and p["message"]["role"] == "assistant"
    ]
    text: str = message["text"]
    return text


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_a_reply_streams_in_deltas_and_completes(
    start_server: StartServer, repo: Path, fake_model_server: FakeModelServer, provider: str
) -> None:
    fake_model_server.script(Reply(text="Hello from the fake model, streamed in pieces."))
    client = await start_server(
        repo, initialization_options=model_options(fake_model_server, provider)
    )
    client.lsp.progress_reports["chat-1"] = []  # type: ignore[attr-defined]  # the client's token
    result = await client.request("forkyard/chat", {"text": "hi", "workDoneToken": "chat-1"})
    assert await wait_turn(client, result["turnId"]) == "completed"
    deltas = [p["delta"] for p in chat_events(client, "forkyard/chat/delta", result["turnId"])]
    assert len(deltas) > 3
    assert "".join(deltas) == "Hello from the fake model, streamed in pieces."
    assert all(
        p["messageId"] == result["messageId"]
        for p in chat_events(client, "forkyard/chat/delta", result["turnId"])
    )
    assert reply_text(client, result["turnId"]) == "".join(deltas)
    assert turn_states(client, result["turnId"]) == ["running", "completed"]
    reports = client.lsp.progress_reports["chat-1"]  # type: ignore[attr-defined]
    await client.wait_until(lambda: reports and reports[-1].kind == "end")
    kinds = [v.kind for v in reports]
    assert kinds[0] == "begin"
    assert kinds[-1] == "end"
    assert fake_model_server.last_request.messages[-1]["content"] in (
        "hi",
        [{"type": "text", "text": "hi"}],
    )


async def test_a_message_sent_while_a_reply_streams_is_queued(
    start_server: StartServer, repo: Path, fake_model_server: FakeModelServer
) -> None:
    first, _second = fake_model_server.script(
        Reply(text="one two three four", hold=True), Reply(text="second answer")
    )
    client = await start_server(repo, initialization_options=model_options(fake_model_server))
    a = await client.request("forkyard/chat", {"text": "first"})
    await first.started()
    b = await client.request("forkyard/chat", {"text": "second", "threadId": a["threadId"]})
    await client.wait_until(lambda: turn_states(client, b["turnId"]) == ["queued"])
    assert len(fake_model_server.requests) == 1, "the second turn waits for the first"
    first.release()
    assert await wait_turn(client, b["turnId"]) == "completed"
    assert reply_text(client, b["turnId"]) == "second answer"
    second_request = fake_model_server.requests[1].text
    assert "first" in second_request
    assert "one two three four" in second_request, "the second turn sees the first reply"


async def test_two_threads_stream_at_the_same_time(
    start_server: StartServer, repo: Path, fake_model_server: FakeModelServer
) -> None:
    one, two = fake_model_server.script(
        Reply(text="alpha beta gamma", hold=True), Reply(text="delta epsilon", hold=True)
    )
    client = await start_server(repo, initialization_options=model_options(fake_model_server))
    a = await client.request("forkyard/chat", {"text": "thread one"})
    b = await client.request("forkyard/chat", {"text": "thread two"})
    await one.started()
    await two.started()
    assert turn_states(client, a["turnId"])[-1] == "running"
    assert turn_states(client, b["turnId"])[-1] == "running"
    two.release()
    one.release()
    assert await wait_turn(client, a["turnId"]) == "completed"
    assert await wait_turn(client, b["turnId"]) == "completed"


async def test_interrupt_ends_the_turn_and_keeps_what_streamed(
    start_server: StartServer, repo: Path, fake_model_server: FakeModelServer
) -> None:
    [held] = fake_model_server.script(
        Reply(text="partial answer that never ends", hold=True, hold_after_chunks=2)
    )
    client = await start_server(repo, initialization_options=model_options(fake_model_server))
    result = await client.request("forkyard/chat", {"text": "go"})
    await client.wait_until(lambda: chat_events(client, "forkyard/chat/delta", result["turnId"]))
    assert await client.request("forkyard/chat/interrupt", {"threadId": result["threadId"]}) == {}
    assert await wait_turn(client, result["turnId"]) == "interrupted"
    await held.client_disconnected()
    streamed = "".join(
        p["delta"] for p in chat_events(client, "forkyard/chat/delta", result["turnId"])
    )
    assert streamed
    assert reply_text(client, result["turnId"]) == streamed
    read = await client.request("forkyard/thread/read", {"threadId": result["threadId"]})
    assert read["messages"][-1]["text"] == streamed


async def test_the_model_dispatches_an_agent_and_sees_its_event_next_turn(
    start_server: StartServer, repo: Path, fake_model_server: FakeModelServer
) -> None:
    fake_model_server.script(
        Reply(
            text="Starting an agent.",
            tool_calls=[
                (
                    "dispatch_agent",
                    {
                        "task": "printf 'x\\n' > made.txt",
                        "backend": "command",
                        "title": "make a file",
                    },
                )
            ],
        ),
        Reply(text="It is running in the background."),
        Reply(text="Agent 1 created made.txt."),
    )
    client = await start_server(repo, initialization_options=model_options(fake_model_server))
    first = await client.request("forkyard/chat", {"text": "make a file please"})
    assert await wait_turn(client, first["turnId"]) == "completed"
    tool_result = fake_model_server.requests[1].text
    assert "dispatched" in tool_result
    agent = await client.wait_until(
        lambda: next((a for a in client.agents.values() if a["state"] == "done"), None)
    )
    assert agent["threadId"] == first["threadId"]
    await client.wait_until(
        lambda: any(
            m == "forkyard/chat/message"
            and p["message"]["role"] == "event"
            and "is done" in p["message"]["text"]
            for m, p in client.notifications
        )
    )
    second = await client.request(
        "forkyard/chat", {"text": "what did agent 1 change?", "threadId": first["threadId"]}
    )
    assert await wait_turn(client, second["turnId"]) == "completed"
    seen = fake_model_server.requests[2].text
    assert "[agent event] agent #1 (make a file) is done" in seen
    assert "dispatch_agent" in str(fake_model_server.requests[0].tools)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (Reply(garbage=True), "invalid response"),
        (Reply(hang=True), "did not answer"),
        (Reply(status=404), "not found"),
    ],
)
async def test_a_broken_model_fails_the_turn_clearly_and_the_server_stays_healthy(
    start_server: StartServer,
    repo: Path,
    fake_model_server: FakeModelServer,
    reply: Reply,
    expected: str,
) -> None:
    fake_model_server.script(reply, Reply(text="fine again"))
    options = model_options(fake_model_server)
    options["models"]["default"]["timeoutSeconds"] = 1.5
    client = await start_server(repo, initialization_options=options)
    result = await client.request("forkyard/chat", {"text": "hello"})
    assert await wait_turn(client, result["turnId"]) == "failed"
    [turn] = [
        p
        for p in chat_events(client, "forkyard/chat/turn", result["turnId"])
        if p["state"] == "failed"
    ]
    assert expected in turn["error"]
    assert expected in reply_text(client, result["turnId"])
    again = await client.request("forkyard/chat", {"text": "again", "threadId": result["threadId"]})
    assert await wait_turn(client, again["turnId"]) == "completed"
    assert reply_text(client, again["turnId"]) == "fine again"


async def test_an_endpoint_that_is_down_fails_the_turn(
    start_server: StartServer, repo: Path
) -> None:
    options = {
        "models": {"default": {"baseUrl": "http://127.0.0.1:9/v1", "model": "m", "maxRetries": 0}}
    }
    client = await start_server(repo, initialization_options=options)
    result = await client.request("forkyard/chat", {"text": "hello"})
    assert await wait_turn(client, result["turnId"]) == "failed"
    assert "cannot reach the model endpoint" in reply_text(client, result["turnId"])
    assert (await client.request("forkyard/agent/list", {})) == {"agents": []}


async def test_chat_and_agent_list_answer_while_agents_churn(
    start_server: StartServer, repo: Path, fake_model_server: FakeModelServer
) -> None:
    fake_model_server.script(Reply(text=" ".join(f"w{i}" for i in range(60)), delay_per_chunk=0.05))
    client = await start_server(
        repo, initialization_options=model_options(fake_model_server, maxParallelAgents=16)
    )
    slow = await client.request("forkyard/chat", {"text": "talk slowly"})
    ids = [
        (
            await client.dispatch(
                f"for i in $(seq 50); do echo $i > f$i.txt; done; echo {n}", backend="command"
            )
        )["id"]
        for n in range(16)
    ]
    worst = 0.0
    for _ in range(20):
        for method, params in [("forkyard/agent/list", {}), ("forkyard/thread/list", {})]:
            started = time.perf_counter()
            await client.request(method, params)
            worst = max(worst, time.perf_counter() - started)
        started = time.perf_counter()
        await client.request("forkyard/chat", {"text": "/agents"})
        worst = max(worst, time.perf_counter() - started)
    assert worst < 1.0, f"a request took {worst:.2f} s while agents ran"
    for agent_id in ids:
        assert (await client.wait_for_agent(agent_id))["state"] == "done"
    assert await wait_turn(client, slow["turnId"]) == "completed"


async def test_editor_context_reaches_the_model(
    start_server: StartServer, repo: Path, fake_model_server: FakeModelServer
) -> None:
    fake_model_server.script(Reply(text="It adds two numbers."))
    client = await start_server(repo, initialization_options=model_options(fake_model_server))
    uri = (repo / "src/app.py").as_uri()
    selection = {"start": {"line": 1, "character": 0}, "end": {"line": 1, "character": 16}}
    result = await client.request(
        "forkyard/chat",
        {"text": "what does this do?", "context": {"uri": uri, "range": selection}},
    )
    assert await wait_turn(client, result["turnId"]) == "completed"
    seen = fake_model_server.last_request.text
    assert "app.py lines 2-2" in seen
    assert "return a + b" in seen
    assert "def add" not in seen, "only the selected range"
