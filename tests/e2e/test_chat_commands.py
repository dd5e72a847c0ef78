"""The conversation with no model configured: chat commands run the orchestrator, and
other text is answered with how to configure a model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from forkyard.client import ForkyardClient
from tests.e2e.conftest import StartServer
from tests.helpers import kill_daemon

pytestmark = pytest.mark.timeout(90)


def turn_state(client: ForkyardClient, turn_id: str) -> str | None:
    states = [
        p["state"]
        for method, p in client.notifications
        if method == "forkyard/chat/turn" and p["turnId"] == turn_id
    ]
    return states[-1] if states else None


async def say(client: ForkyardClient, text: str, thread_id: str | None = None) -> dict[str, Any]:
    """Send a chat message and wait for the complete reply message."""
    params: dict[str, Any] = {"text": text}
    if thread_id:
        params["threadId"] = thread_id
    result = await client.request("forkyard/chat", params)

    def reply() -> dict[str, Any] | None:
        for method, p in client.notifications:
            if method == "forkyard/chat/message" and p["message"]["id"] == result["messageId"]:
                return dict(p["message"])
        return None

    message: dict[str, Any] = await client.wait_until(reply)
    await client.wait_until(lambda: turn_state(client, result["turnId"]) == "completed")
    return {**message, "threadId": result["threadId"]}


async def test_every_chat_command_works_without_a_model(
    start_server: StartServer, repo: Path
) -> None:
    client = await start_server(repo)
    helped = await say(client, "/help")
    thread = helped["threadId"]
    assert "/dispatch" in helped["text"]
    assert "/run" in helped["text"]

    no_model = await say(client, "please refactor the parser", thread)
    assert "No chat model is configured" in no_model["text"]
    assert "11434" in no_model["text"], "an Ollama example"
    assert "OPENAI_API_KEY" in no_model["text"], "an OpenAI example"
    assert "forkyard.models" in no_model["text"], "the VS Code setting, which it shows as a button"
    assert "| command |" not in no_model["text"], "one paragraph, not the whole /help table"
    assert "\n" not in no_model["text"].strip(), "one paragraph"

    assert "No agents yet" in (await say(client, "/agents", thread))["text"]
    started = await say(client, "/run printf 'from chat\\n' > chat.txt", thread)
    assert "Started agent #1" in started["text"]
    done = await client.wait_until(
        lambda: next((a for a in client.agents.values() if a["state"] == "done"), None)
    )
    assert done["threadId"] == thread

    listing = (await say(client, "/agents", thread))["text"]
    assert "#1" in listing
    assert "`done`" in listing
    status = (await say(client, "/status 1", thread))["text"]
    assert "printf" in status
    diff = (await say(client, "/diff 1", thread))["text"]
    assert "+from chat" in diff
    assert "```diff" in diff

    refused = (await say(client, "/dispatch write the docs", thread))["text"]
    assert "llm backend needs a model" in refused

    long_one = await say(client, "/run echo begun; sleep 299792", thread)
    assert "agent #2" in long_one["text"]
    await client.wait_until(
        lambda: any(a["number"] == 2 and a["state"] == "running" for a in client.agents.values())
    )
    assert "cancelled" in (await say(client, "/cancel 2", thread))["text"]
    discarded = (await say(client, "/discard #1", thread))["text"]
    assert "refs/forkyard/discarded/1" in discarded
    assert "no agent" in (await say(client, "/status 42", thread))["text"]
    assert "Unknown command" in (await say(client, "/frobnicate", thread))["text"]

    # Agent events landed in the thread the command came from.
    read = await client.request("forkyard/thread/read", {"threadId": thread})
    events = [m["text"] for m in read["messages"] if m["role"] == "event"]
    assert any("agent #1" in e and "is done" in e for e in events)
    assert any("agent #2" in e and "cancelled" in e for e in events)


async def test_threads_and_messages_survive_a_killed_daemon(
    start_server: StartServer, repo: Path, server_env: dict[str, str]
) -> None:
    client = await start_server(repo)
    first = await say(client, "/help")
    second = await say(client, "/agents")
    await kill_daemon(server_env)
    await client.stop()

    again = await start_server(repo)
    threads = (await again.request("forkyard/thread/list", {}))["threads"]
    assert [t["id"] for t in threads] == [second["threadId"], first["threadId"]]
    read = await again.request("forkyard/thread/read", {"threadId": first["threadId"]})
    assert [m["role"] for m in read["messages"]] == ["user", "assistant"]
    assert read["messages"][0]["text"] == "/help"
    assert "/dispatch" in read["messages"][1]["text"]


async def test_unknown_thread_is_invalid_params(start_server: StartServer, repo: Path) -> None:
    from pygls.exceptions import JsonRpcException

    client = await start_server(repo)
    for method, params in [
        ("forkyard/chat", {"text": "hi", "threadId": "thread-nope"}),
        ("forkyard/chat/interrupt", {"threadId": "thread-nope"}),
        ("forkyard/thread/read", {"threadId": "thread-nope"}),
    ]:
        with pytest.raises(JsonRpcException) as caught:
            await client.request(method, params)
        assert caught.value.code == -32602
        assert "threadId" in str(caught.value.message)
