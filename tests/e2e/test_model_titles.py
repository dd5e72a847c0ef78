"""With a model configured, a new agent gets a short title made by it: asked in the
background once the dispatch has answered (the dispatch keeps the title from the task),
and shown through `forkyard/agent/changed`. A command's title stays its own words, and a
title the dispatch chose is kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from forkyard.orchestrator.titles import clean_title, title_from_task
from tests.e2e.conftest import StartServer
from tests.fakes.model_server import FakeModelServer, Reply
from tests.helpers import make_repo

pytestmark = pytest.mark.timeout(90)

TASK = (
    "Go through the parser module and make every error message say which line and "
    "column of the input it is about, with tests for the three worst offenders"
)


def model_options(server: FakeModelServer) -> dict[str, Any]:
    config = server.model_config("openai").model_dump(exclude_none=True)
    config.update({"timeoutSeconds": 10, "maxRetries": 0})
    return {"models": {"default": config}}


async def test_a_model_names_a_new_agent_after_its_dispatch(
    start_server: StartServer, tmp_path: Path, fake_model_server: FakeModelServer
) -> None:
    repo = make_repo(tmp_path / "repo", {"parser.py": "x = 1\n"})
    fake_model_server.title = '"Parser errors with line and column."'
    fake_model_server.script(Reply(tool_calls=[("finish", {"summary": "looked"})]))
    client = await start_server(repo, initialization_options=model_options(fake_model_server))

    agent = await client.dispatch(TASK, role="explorer")
    assert agent["title"] == title_from_task(TASK, "llm"), "the dispatch does not wait"
    titled = await client.wait_until(
        lambda: [
            u
            for u in client.agent_updates
            if u["id"] == agent["id"] and u["title"] != agent["title"]
        ]
    )
    assert titled[0]["title"] == "Parser errors with line and column"
    [asked] = fake_model_server.title_requests
    assert TASK in asked.text
    await client.wait_for_agent(agent["id"])
    listed = await client.request("forkyard/agent/list", {})
    [mine] = [a for a in listed["agents"] if a["id"] == agent["id"]]
    assert mine["title"] == "Parser errors with line and column", "kept in the store"

    named = await client.dispatch(TASK, role="explorer", title="my own name")
    command = await client.dispatch("echo " + "word " * 20, backend="command")
    await client.wait_for_agent(named["id"])
    await client.wait_for_agent(command["id"])
    assert len(fake_model_server.title_requests) == 1, "neither a chosen title nor a command"
    assert client.agents[named["id"]]["title"] == "my own name"


def test_a_model_answer_is_cleaned_into_a_title() -> None:
    assert clean_title("Title: **Fix the flaky test.**\nBecause ...") == "Fix the flaky test"
    assert clean_title("  \n") is None
    assert len(clean_title("word " * 40) or "") <= 60


async def test_a_reached_budget_means_no_title_request(
    start_server: StartServer, tmp_path: Path, fake_model_server: FakeModelServer
) -> None:
    repo = make_repo(tmp_path / "repo", {"parser.py": "x = 1\n"})
    fake_model_server.title = "Parser errors"
    options = model_options(fake_model_server)
    options["models"]["default"]["price"] = {"inputPerMtok": 1000.0, "outputPerMtok": 1000.0}
    options["budget"] = {"dailyUsd": 0.0}
    client = await start_server(repo, initialization_options=options)
    agent = await client.dispatch(TASK, role="explorer")
    ended = await client.wait_for_agent(agent["id"])
    assert ended["state"] == "failed" and ended["error"].startswith("budget reached"), ended
    assert fake_model_server.title_requests == [], "no call past the day's budget"
    assert ended["title"] == title_from_task(TASK, "llm")
