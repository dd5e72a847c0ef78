"""Metering end to end: a real front and daemon, the fake model server reporting usage
(cached tokens included). What an llm agent and a chat turn used is what the server
reported, priced by `[models.default.price]` or the default table, and shown by `/agents`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from forkyard.client import ForkyardClient
from tests.e2e.conftest import StartServer
from tests.fakes.model_server import FakeModelServer, Reply
from tests.fakes.wire import ReportedUsage

pytestmark = pytest.mark.timeout(90)

#: USD per million tokens, as an editor sends `[models.default.price]`.
PRICE = {"inputPerMtok": 2.0, "outputPerMtok": 8.0, "cachedPerMtok": 0.5}


def model_options(server: FakeModelServer, **overrides: Any) -> dict[str, Any]:
    config = server.model_config("openai").model_dump(exclude_none=True)
    config.update({"timeoutSeconds": 10, "maxRetries": 0, **overrides})
    return {"models": {"default": config}}


def expected_usage(reported: list[ReportedUsage], *, priced: bool) -> dict[str, Any]:
    """The wire `Usage` of these calls; cost at PRICE (cached tokens are part of input)."""
    inputs = sum(u.input_tokens for u in reported)
    outputs = sum(u.output_tokens for u in reported)
    cached = sum(u.cached_tokens for u in reported)
    cost = ((inputs - cached) * 2.0 + cached * 0.5 + outputs * 8.0) / 1e6
    return {
        "inputTokens": inputs,
        "outputTokens": outputs,
        "cachedTokens": cached,
        "costUsd": pytest.approx(cost) if priced else None,
    }


def call(name: str, cached_tokens: int = 0, **arguments: Any) -> Reply:
    return Reply(tool_calls=[(name, arguments)], cached_tokens=cached_tokens)


async def chat_turn_end(client: ForkyardClient, text: str) -> dict[str, Any]:
    """Send a chat message; the `forkyard/chat/turn` notification that ends its turn."""
    result = await client.request("forkyard/chat", {"text": text})

    def ended() -> dict[str, Any] | None:
        ends = [
            params
            for method, params in client.notifications
            if method == "forkyard/chat/turn"
            and params["turnId"] == result["turnId"]
            and params["state"] in ("completed", "failed", "interrupted")
        ]
        return ends[-1] if ends else None

    turn: dict[str, Any] = await client.wait_until(ended)
    return turn


async def test_an_llm_agent_sums_its_calls_follow_ups_included_and_prices_them(
    start_server: StartServer, repo: Path, fake_model_server: FakeModelServer
) -> None:
    fake_model_server.script(
        call("write_file", cached_tokens=30, path="a.txt", content="a\n"),
        call("finish", summary="wrote a.txt"),
        call("finish", cached_tokens=50, summary="nothing more to do"),
    )
    client = await start_server(
        repo, initialization_options=model_options(fake_model_server, price=PRICE)
    )
    agent = await client.dispatch("write a.txt")
    first = await client.wait_for_agent(agent["id"])
    assert first["state"] == "done", first
    assert first["usage"] == expected_usage(fake_model_server.reported_usage, priced=True)
    assert first["usage"]["cachedTokens"] == 30
    # Told while it ran, with its first step's progress: the first call's usage.
    running = [
        u["usage"]
        for u in client.agent_updates
        if u["id"] == agent["id"] and u["state"] == "running" and u.get("usage")
    ]
    assert running[0] == expected_usage(fake_model_server.reported_usage[:1], priced=True)

    updates_before = len(client.agent_updates)
    await client.request("forkyard/agent/message", {"agentId": agent["id"], "text": "go on"})
    await client.wait_until(
        lambda: any(
            u["id"] == agent["id"] and u["state"] == "running"
            for u in client.agent_updates[updates_before:]
        )
    )
    second = await client.wait_for_agent(agent["id"])
    assert second["state"] == "done", second
    reported = fake_model_server.reported_usage
    assert len(reported) == 3
    assert second["usage"] == expected_usage(reported, priced=True)
    assert second["usage"]["cachedTokens"] == 80

    # Kept by the daemon: a fresh read has it, and `/agents` shows it to the person.
    read = await client.request("forkyard/agent/read", {"agentId": agent["id"]})
    assert read["agent"]["usage"] == second["usage"]
    listed = await chat_turn_end(client, "/agents")
    assert listed["state"] == "completed"
    [reply] = [
        p["message"]["text"]
        for m, p in client.notifications
        if m == "forkyard/chat/message"
        and p["message"]["turnId"] == listed["turnId"]
        and p["message"]["role"] == "assistant"
    ]
    assert " tokens, $" in reply, reply


async def test_a_chat_turn_carries_its_calls_usage_and_an_unknown_model_no_cost(
    start_server: StartServer, repo: Path, fake_model_server: FakeModelServer
) -> None:
    """`fake-model` is in no price table and has no `price`: tokens, but no cost."""
    fake_model_server.script(
        Reply(tool_calls=[("list_agents", {})], cached_tokens=7),
        Reply(text="No agents are running."),
    )
    client = await start_server(repo, initialization_options=model_options(fake_model_server))
    turn = await chat_turn_end(client, "what is running?")
    assert turn["state"] == "completed", turn
    reported = fake_model_server.reported_usage
    assert len(reported) == 2, "one call for the tool, one for the answer"
    assert turn["usage"] == expected_usage(reported, priced=False)
    assert turn["usage"]["inputTokens"] > 0 and turn["usage"]["cachedTokens"] == 7
    running = [
        p
        for m, p in client.notifications
        if m == "forkyard/chat/turn" and p["turnId"] == turn["turnId"] and p["state"] == "running"
    ]
    assert running and all(p.get("usage") is None for p in running)


async def test_a_model_named_in_the_default_table_is_priced_without_configuration(
    start_server: StartServer, repo: Path, fake_model_server: FakeModelServer
) -> None:
    fake_model_server.script(Reply(text="Hello."))
    client = await start_server(
        repo, initialization_options=model_options(fake_model_server, model="gpt-4o-mini")
    )
    turn = await chat_turn_end(client, "hi")
    [reported] = fake_model_server.reported_usage
    # gpt-4o-mini's default: $0.15 in, $0.60 out per million tokens.
    cost = (reported.input_tokens * 0.15 + reported.output_tokens * 0.60) / 1e6
    assert turn["usage"]["costUsd"] == pytest.approx(cost)
