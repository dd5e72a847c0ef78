"""Retry, as the person meets it: an agent that failed (or was interrupted, or cancelled)
runs its task again as a new agent from `forkyard/agent/retry` and from `/retry N` in the
chat, on the same base commit; a done or running agent is refused with the state's code,
since there is nothing to run again."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from forkyard.agents.base import AgentContext, Availability, RunOutcome
from forkyard.errors import WrongState
from forkyard.settings import Settings
from forkyard_protocol.daemon import ChatMessage
from tests.unit.test_daemon_api import running_daemon

pytestmark = pytest.mark.timeout(60)


class FlakyBackend:
    """Fails its first run and succeeds on the next: a retry is what makes it work."""

    name = "flaky"

    def __init__(self) -> None:
        self.runs: list[str] = []

    async def availability(self, settings: Settings) -> Availability:
        return Availability(True)

    async def run(self, context: AgentContext, instruction: str) -> RunOutcome:
        self.runs.append(instruction)
        if len(self.runs) == 1:
            return RunOutcome(False, "", error="the network went away")
        return RunOutcome(True, f"did {instruction}")


async def test_a_failed_agent_is_retried_as_a_new_agent_on_the_same_base(
    repo: Path, tmp_path: Path
) -> None:
    async with running_daemon(repo, tmp_path) as daemon:
        front, _ = await daemon.attach("editor")
        flaky = FlakyBackend()
        daemon.session(front).app.orchestrator.backends["flaky"] = flaky
        first_id = await daemon.dispatch(front, "flaky", "fix the tests", task="fix the tests")
        failed = await front.final(first_id)
        assert failed.state == "failed"
        # Something new in the checkout must not change what the retry starts from.
        (repo / "new.txt").write_text("typed since\n")

        result = await daemon.call(front, "forkyard/agent/retry", {"agentId": str(failed.number)})
        retried = result["agent"]
        assert retried["id"] != first_id
        assert retried["number"] == failed.number + 1
        assert (retried["task"], retried["title"], retried["backend"]) == (
            "fix the tests",
            "fix the tests",
            "flaky",
        )
        assert retried["baseRef"] == failed.base_ref
        done = await front.final(retried["id"])
        assert done.state == "done", done.error
        assert flaky.runs == ["fix the tests", "fix the tests"]
        # The old run stays as it was, for its log and error.
        old = (await daemon.call(front, "forkyard/agent/read", {"agentId": first_id}))["agent"]
        assert (old["state"], old["error"]) == ("failed", "the network went away")


async def test_retry_in_the_chat_and_a_done_agent_refused(repo: Path, tmp_path: Path) -> None:
    async with running_daemon(repo, tmp_path) as daemon:
        front, _ = await daemon.attach("editor")
        daemon.gated.gate.set()
        done_id = await daemon.dispatch(front, "gated", "finished")
        assert (await front.final(done_id)).state == "done"
        with pytest.raises(WrongState, match="only a failed, interrupted or cancelled"):
            await daemon.call(front, "forkyard/agent/retry", {"agentId": done_id})

        flaky = FlakyBackend()
        daemon.session(front).app.orchestrator.backends["flaky"] = flaky
        failed_id = await daemon.dispatch(front, "flaky", "again")
        failed = await front.final(failed_id)
        sent = await daemon.call(front, "daemon/chat", {"text": f"/retry {failed.number}"})

        def reply() -> str | None:
            for event in front.of(ChatMessage):
                if event.message.role == "assistant" and event.message.turn_id == sent["turnId"]:
                    return event.message.text
            return None

        text = await front.until(reply)
        assert text == f"Retrying agent #{failed.number} as agent #{failed.number + 1}: again."
        with anyio.fail_after(20):
            while len(flaky.runs) < 2:
                await front.until(lambda: len(flaky.runs) >= 2 or None)
        refused = await daemon.call(front, "daemon/chat", {"text": f"/retry {done_id}"})

        def refusal() -> str | None:
            for event in front.of(ChatMessage):
                if event.message.turn_id == refused["turnId"] and event.message.role == "assistant":
                    return event.message.text
            return None

        assert "only a failed, interrupted or cancelled agent" in await front.until(refusal)
