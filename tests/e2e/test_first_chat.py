"""The first chat with a model configured never waits for the model SDKs to load: they
are imported in a worker thread, so the event loop keeps answering the person's requests
(and the server's largest loop stall stays small) while a fresh server makes its model."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.e2e.conftest import StartServer
from tests.e2e.test_chat_model import model_options, reply_text, wait_turn
from tests.fakes.model_server import FakeModelServer, Reply

pytestmark = pytest.mark.timeout(120)

#: Importing the SDKs on the loop stalls it for seconds on this kind of machine; a
#: server that loads them off the loop stays far below this.
MAX_STALL_MS = 250


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_the_first_chat_of_a_fresh_server_does_not_stall_the_loop(
    start_server: StartServer, repo: Path, fake_model_server: FakeModelServer, provider: str
) -> None:
    fake_model_server.script(Reply(text="First answer."))
    client = await start_server(
        repo, initialization_options=model_options(fake_model_server, provider)
    )
    result = await client.request("forkyard/chat", {"text": "hello"})
    # While the turn makes its model (loading the SDK), other requests are answered.
    answered: list[float] = []
    for _ in range(5):
        started = time.perf_counter()
        await client.request("forkyard/agent/list", {})
        answered.append(time.perf_counter() - started)
    assert await wait_turn(client, result["turnId"]) == "completed"
    assert reply_text(client, result["turnId"]) == "First answer."
    stats = await client.request("forkyard/server/stats", {})
    assert stats["maxLoopStallMs"] < MAX_STALL_MS, stats
    assert max(answered) < MAX_STALL_MS / 1000, answered
