"""Metering end to end: a real front and daemon, the fake model server reporting usage
(cached tokens included). What an llm agent and a chat turn used is what the server
reported, priced by `[models.default.price]` or the default table, and shown by `/agents`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from forkyard.client import ForkyardClient
from forkyard.models.pricing import usage_text
from forkyard_protocol import Usage
from tests.e2e.conftest import StartServer
from tests.fakes.model_server import FakeModelServer, Reply
from tests.fakes.wire import ReportedUsage
from tests.helpers import git

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
    # With the person's totals: every call so far today, and this thread's (the agent
    # was not dispatched from a thread, so only today's).
    assert reply.splitlines()[-1] == "Today: " + usage_text(Usage.model_validate(second["usage"]))


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


async def run_again(client: ForkyardClient, agent_id: str, **params: Any) -> dict[str, Any]:
    """A follow-up to a finished agent; the agent once that run has ended."""
    updates_before = len(client.agent_updates)
    await client.request("forkyard/agent/message", {"agentId": agent_id, "text": "go on", **params})
    await client.wait_until(
        lambda: any(
            u["id"] == agent_id and u["state"] == "running"
            for u in client.agent_updates[updates_before:]
        )
    )
    return await client.wait_for_agent(agent_id)


def branch_file(repo: Path, agent: dict[str, Any], path: str) -> str:
    return git(repo, "show", f"{agent['branch']}:{path}")


async def test_a_dispatch_budget_stops_the_agent_with_its_work_and_a_raised_one_finishes_it(
    start_server: StartServer, repo: Path, fake_model_server: FakeModelServer
) -> None:
    """Each call costs far more than $0.000001: the first crosses the budget, so the
    agent stops before its second although the model had more to do."""
    fake_model_server.script(
        call("write_file", path="a.txt", content="a\n"),
        call("write_file", path="b.txt", content="b\n"),
        call("finish", summary="wrote a and b"),
    )
    client = await start_server(
        repo, initialization_options=model_options(fake_model_server, price=PRICE)
    )
    agent = await client.dispatch("write a.txt and b.txt", budgetUsd=0.000001)
    assert agent["budgetUsd"] == 0.000001
    stopped = await client.wait_for_agent(agent["id"])
    assert stopped["state"] == "failed", stopped
    assert stopped["error"].startswith("budget reached ($"), stopped["error"]
    assert stopped["error"].endswith(" of $0.0000)"), stopped["error"]
    assert len(fake_model_server.reported_usage) == 1
    assert stopped["usage"] == expected_usage(fake_model_server.reported_usage, priced=True)
    assert branch_file(repo, stopped, "a.txt") == "a\n", "its work is committed on its branch"
    diff = await client.request("forkyard/agent/diff", {"agentId": agent["id"]})
    assert [f["path"] for f in diff["files"]] == ["a.txt"]

    # The same budget again: it stops at once, no call made.
    again = await run_again(client, agent["id"])
    assert again["state"] == "failed" and again["error"].startswith("budget reached")
    assert len(fake_model_server.reported_usage) == 1

    finished = await run_again(client, agent["id"], budgetUsd=5.0)
    assert finished["state"] == "done", finished["error"]
    assert finished["budgetUsd"] == 5.0 and finished["summary"] == "wrote a and b"
    assert branch_file(repo, finished, "b.txt") == "b\n"
    assert branch_file(repo, finished, "a.txt") == "a\n", "the same worktree, continued"


async def test_a_role_token_budget_stops_the_agent_and_a_dispatch_budget_overrides_it(
    start_server: StartServer, repo: Path, fake_model_server: FakeModelServer
) -> None:
    # One script for both agents: the first stops after its one call, the second
    # gets the other two.
    fake_model_server.script(
        call("write_file", path="a.txt", content="a\n"),
        call("write_file", path="c.txt", content="c\n"),
        call("finish", summary="wrote c"),
    )
    options = model_options(fake_model_server) | {"roles": {"worker": {"maxTokens": 10}}}
    client = await start_server(repo, initialization_options=options)
    agent = await client.dispatch("write a.txt")
    assert agent["maxTokens"] == 10
    stopped = await client.wait_for_agent(agent["id"])
    assert stopped["state"] == "failed", stopped
    assert stopped["error"].startswith("budget reached ("), stopped["error"]
    assert stopped["error"].endswith(" of 10 tokens)"), stopped["error"]
    assert branch_file(repo, stopped, "a.txt") == "a\n"

    assert fake_model_server.pending_replies == 2, "the model had more scripted"

    # The dispatch's budget wins over the role's: this one has room for its two calls.
    roomy = await client.dispatch("write c.txt", maxTokens=10_000_000)
    assert roomy["maxTokens"] == 10_000_000
    done = await client.wait_for_agent(roomy["id"])
    assert done["state"] == "done", done
    assert done["summary"] == "wrote c" and branch_file(repo, done, "c.txt") == "c\n"


async def test_budget_in_the_chat_raises_a_stopped_agents_budget_and_a_follow_up_finishes_it(
    start_server: StartServer, repo: Path, fake_model_server: FakeModelServer
) -> None:
    fake_model_server.script(
        call("write_file", path="a.txt", content="a\n"),
        call("finish", summary="wrote a"),
    )
    client = await start_server(
        repo, initialization_options=model_options(fake_model_server, price=PRICE)
    )
    agent = await client.dispatch("write a.txt", budgetUsd=0)
    stopped = await client.wait_for_agent(agent["id"])
    assert stopped["error"] == "budget reached ($0.0000 of $0.0000)", "no call made"
    assert fake_model_server.reported_usage == []

    turn = await chat_turn_end(client, f"/budget {agent['number']} 2.50")
    [reply] = [
        p["message"]["text"]
        for m, p in client.notifications
        if m == "forkyard/chat/message"
        and p["message"]["turnId"] == turn["turnId"]
        and p["message"]["role"] == "assistant"
    ]
    assert reply.startswith(f"Agent #{agent['number']}'s budget is now $2.50"), reply
    assert "\n" not in reply
    finished = await run_again(client, agent["id"])
    assert finished["state"] == "done", finished["error"]
    assert finished["budgetUsd"] == 2.5
    assert branch_file(repo, finished, "a.txt") == "a\n"
