"""The usage ledger: every model call summed per UTC day and per thread, the sums kept
in the store across a restart, and the person's daily and thread budgets on them
stopping agents and the chat with "budget reached (today: ...)" / "(this thread: ...)".
An unpriced call's dollars are not guessed: they never make a budget reached."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from forkyard.agents.budget import Budget, budget_reached
from forkyard.app import ForkyardApp
from forkyard.orchestrator.ledger import UsageLedger
from forkyard.settings import BudgetSettings
from forkyard.store import Store
from forkyard.store.sqlite import UsageTotal
from forkyard_protocol.daemon import AgentChanged, ChatTurn
from forkyard_protocol.messages import AgentDispatchParams
from forkyard_protocol.models import FINAL_STATES, Agent, Usage
from tests.fakes.model_server import FakeModelServer, Reply

pytestmark = pytest.mark.timeout(60)

#: USD per million tokens: each call of the fake model costs well over $0.0001.
PRICE = {"inputPerMtok": 2.0, "outputPerMtok": 8.0, "cachedPerMtok": 0.5}


def used(cost: float | None, inputs: int = 100, outputs: int = 10) -> Usage:
    return Usage(input_tokens=inputs, output_tokens=outputs, cached_tokens=5, cost_usd=cost)


class Clock:
    """The UTC day the ledger counts in, moved by the test."""

    def __init__(self, day: str = "2026-12-01") -> None:
        self.day = day

    def __call__(self) -> str:
        return self.day


@asynccontextmanager
async def started(store: Store, clock: Clock) -> AsyncIterator[UsageLedger]:
    """A started ledger; leaving waits for the writes it scheduled (no flush called)."""
    ledger = UsageLedger(store, today=clock)
    async with anyio.create_task_group() as task_group:
        await ledger.start(task_group)
        yield ledger


async def test_calls_are_summed_per_day_and_per_thread(tmp_path: Path) -> None:
    clock = Clock()
    async with await Store.open(tmp_path) as store, started(store, clock) as ledger:
        ledger.add("thread-a", used(0.25))
        ledger.add("thread-a", used(0.5))
        ledger.add("thread-b", used(None))
        ledger.add(None, used(1.0))
        assert ledger.day_total() == UsageTotal(400, 40, 20, 1.75, 1)
        assert ledger.thread_total("thread-a") == UsageTotal(200, 20, 10, 0.75, 0)
        assert ledger.thread_total("thread-b").usage() == Usage(
            input_tokens=100, output_tokens=10, cached_tokens=5, cost_usd=None
        )
        assert ledger.thread_total("unknown") == UsageTotal()

        clock.day = "2026-12-02"
        assert ledger.day_total() == UsageTotal(), "a new UTC day starts from nothing"
        ledger.add("thread-a", used(0.125))
        assert ledger.day_total().cost_usd == 0.125
        assert ledger.thread_total("thread-a").cost_usd == 0.875, "a thread spans days"


async def test_the_sums_survive_a_reopened_store(tmp_path: Path) -> None:
    clock = Clock()
    async with await Store.open(tmp_path) as store, started(store, clock) as ledger:
        ledger.add("thread-a", used(0.25))
        ledger.add(None, used(None))
        clock.day = "2026-12-02"
        ledger.add("thread-a", used(0.5))
        ledger.add("thread-b", used(0.125))
    # The task group has ended: the writes it ran are committed. A new process:
    async with await Store.open(tmp_path) as store, started(store, clock) as reopened:
        assert reopened.day_total() == UsageTotal(200, 20, 10, 0.625, 0)
        assert reopened.thread_total("thread-a") == UsageTotal(200, 20, 10, 0.75, 0)
        assert reopened.thread_total("thread-b").cost_usd == 0.125
        reopened.add("thread-b", used(0.125))
    async with await Store.open(tmp_path) as store:
        yesterday, threads = await store.load_usage_totals("2026-12-01")
        assert yesterday == UsageTotal(200, 20, 10, 0.25, 1)
        assert threads["thread-b"].cost_usd == 0.25


@pytest.mark.parametrize(
    ("calls", "limits", "thread", "error"),
    [
        ([0.5], BudgetSettings(daily_usd=0.5), "t", "budget reached (today: $0.5000 of $0.5000)"),
        (
            [0.25, 0.5],
            BudgetSettings(daily_usd=0.5),
            None,
            "budget reached (today: $0.7500 of $0.5000)",
        ),
        ([0.49], BudgetSettings(daily_usd=0.5), "t", None),
        (
            [0.5],
            BudgetSettings(thread_usd=0.5),
            "t",
            "budget reached (this thread: $0.5000 of $0.5000)",
        ),
        ([0.5], BudgetSettings(thread_usd=0.5), "other", None),
        ([0.5], BudgetSettings(thread_usd=0.5), None, None),
        (
            [0.5],
            BudgetSettings(daily_usd=0.25, thread_usd=0.25),
            "t",
            "budget reached (today: $0.5000 of $0.2500)",
        ),
        ([None, None], BudgetSettings(daily_usd=0.01, thread_usd=0.01), "t", None),
        (
            [None, 0.01],
            BudgetSettings(daily_usd=0.01),
            "t",
            "budget reached (today: $0.0100 of $0.0100)",
        ),
        ([], BudgetSettings(daily_usd=0.0), "t", "budget reached (today: $0.0000 of $0.0000)"),
        ([5.0], BudgetSettings(), "t", None),
    ],
)
async def test_the_daily_and_thread_refusals(
    tmp_path: Path,
    calls: list[float | None],
    limits: BudgetSettings,
    thread: str | None,
    error: str | None,
) -> None:
    async with await Store.open(tmp_path) as store, started(store, Clock()) as ledger:
        for cost in calls:
            ledger.add("t", used(cost))
        assert ledger.refusal(thread, limits) == error
        assert budget_reached(None, Budget(shared=ledger.check(thread, lambda: limits))) == error


async def test_an_agents_own_budget_is_told_before_the_shared_ones(tmp_path: Path) -> None:
    async with await Store.open(tmp_path) as store, started(store, Clock()) as ledger:
        ledger.add("t", used(1.0))
        daily = ledger.check("t", lambda: BudgetSettings(daily_usd=0.5))
        own = Budget(budget_usd=1.0, shared=daily)
        assert budget_reached(used(1.0), own) == "budget reached ($1.0000 of $1.0000)"
        assert budget_reached(used(0.5), own) == "budget reached (today: $1.0000 of $0.5000)"


async def test_the_ledger_is_read_from_another_thread(tmp_path: Path) -> None:
    """The model gateway checks budgets on its own thread."""
    async with await Store.open(tmp_path) as store, started(store, Clock()) as ledger:
        ledger.add("t", used(0.5))
        check = ledger.check("t", lambda: BudgetSettings(thread_usd=0.5))
        assert await anyio.to_thread.run_sync(check) == (
            "budget reached (this thread: $0.5000 of $0.5000)"
        )


# --- through the app: an llm agent and a chat turn, the budget in the user's config --


def options(server: FakeModelServer) -> dict[str, Any]:
    config = server.model_config("openai").model_dump(exclude_none=True)
    config.update({"timeoutSeconds": 10, "maxRetries": 0, "price": PRICE})
    return {"models": {"default": config}}


@asynccontextmanager
async def app_in(
    repo: Path, tmp_path: Path, server: FakeModelServer, budget: str
) -> AsyncIterator[ForkyardApp]:
    """An app whose user config sets `[budget]`; closed (and its usage saved) after."""
    config = tmp_path / "home" / ".config" / "forkyard" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(f"[budget]\n{budget}\n")
    environ = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(tmp_path / "home"),
        "XDG_CONFIG_HOME": str(tmp_path / "home" / ".config"),
        "FORKYARD_STATE_DIR": str(tmp_path / "state"),
        "LANG": "C.UTF-8",
    }
    app = await ForkyardApp.open(repo, environ, options(server))
    try:
        async with anyio.create_task_group() as task_group:
            await app.start(task_group)
            try:
                yield app
            finally:
                task_group.cancel_scope.cancel()
    finally:
        await app.close()


async def run_agent(app: ForkyardApp, thread_id: str | None = None) -> Agent:
    """Dispatch an llm agent; the agent once it ended."""
    with app.bus.subscribe() as events:
        agent = await app.orchestrator.dispatch(
            AgentDispatchParams(task="say done", backend="llm", thread_id=thread_id)
        )
        with anyio.fail_after(30):
            async for event in events:
                if (
                    isinstance(event, AgentChanged)
                    and event.agent.id == agent.id
                    and event.agent.state in FINAL_STATES
                ):
                    return event.agent
    raise AssertionError("the bus closed")


async def chat(app: ForkyardApp, text: str) -> tuple[ChatTurn, str]:
    """A chat turn's end and the assistant's reply."""
    with app.bus.subscribe() as events:
        thread_id, turn_id, _ = await app.conversation.chat(text, None)
        with anyio.fail_after(30):
            async for event in events:
                if (
                    isinstance(event, ChatTurn)
                    and event.turn_id == turn_id
                    and event.state in ("completed", "failed", "interrupted")
                ):
                    _, messages = await app.conversation.read(thread_id)
                    return event, messages[-1].text
    raise AssertionError("the bus closed")


async def test_past_the_daily_budget_agents_and_the_chat_are_refused_even_after_a_restart(
    repo: Path, tmp_path: Path, fake_model_server: FakeModelServer
) -> None:
    fake_model_server.script(Reply(tool_calls=[("finish", {"summary": "done"})]))
    async with app_in(repo, tmp_path, fake_model_server, "daily_usd = 0.0001") as app:
        first = await run_agent(app)
        assert first.state == "done", first.error
        assert first.usage is not None and (first.usage.cost_usd or 0) > 0.0001
        assert len(fake_model_server.requests) == 1

        second = await run_agent(app)
        assert second.state == "failed"
        assert second.error is not None
        assert second.error.startswith("budget reached (today: $"), second.error
        assert second.error.endswith(" of $0.0001)"), second.error

        turn, reply = await chat(app, "hello?")
        assert turn.state == "failed"
        assert turn.error == second.error
        assert second.error in reply, "the thread says why it has no answer"
        assert len(fake_model_server.requests) == 1, "no call past the budget"

    # The daemon restarts: today's spending is still known.
    async with app_in(repo, tmp_path, fake_model_server, "daily_usd = 0.0001") as app:
        turn, _ = await chat(app, "and now?")
        assert turn.error is not None and turn.error.startswith("budget reached (today: $")
    async with app_in(repo, tmp_path, fake_model_server, "daily_usd = 1.0") as app:
        fake_model_server.script(Reply(text="Hello."))
        turn, reply = await chat(app, "with a higher budget?")
        assert turn.state == "completed", turn.error
        assert reply == "Hello."


async def test_a_thread_budget_stops_that_threads_chat_and_agents_only(
    repo: Path, tmp_path: Path, fake_model_server: FakeModelServer
) -> None:
    fake_model_server.script(Reply(text="Hi."), Reply(text="Hello again."))
    async with app_in(repo, tmp_path, fake_model_server, "thread_usd = 0.0001") as app:
        turn, _ = await chat(app, "hi")
        assert turn.state == "completed", turn.error
        spent_thread = turn.thread_id
        agent = await run_agent(app, thread_id=spent_thread)
        assert agent.state == "failed"
        assert agent.error is not None
        assert agent.error.startswith("budget reached (this thread: $"), agent.error

        other, reply = await chat(app, "a new thread")
        assert other.state == "completed", other.error
        assert reply == "Hello again."
        assert len(fake_model_server.requests) == 2
