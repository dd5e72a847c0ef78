"""The daemon's API as its fronts use it, in-process: one `Hub` and `DaemonApi` over a
real repository, fake fronts (a `deliver` callable each) and fake agent backends that do
exactly what a test tells them.

What a person notices: two editors open on one repository see the same agents and the
same chat; an approval is asked in both and the first answer decides; nobody answering is
a deny after `approval_timeout_seconds`, the agent saying meanwhile what it waits for;
an agent that ended while every editor was closed is told once, on the next attach; and
a bad request is refused with the code the editor protocol gives it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest

from forkyard.agents.base import AgentContext, ApprovalAnswer, Availability, RunOutcome
from forkyard.daemon.api import DaemonApi
from forkyard.daemon.hub import Front, Hub, Session
from forkyard.errors import InvalidRequest, NotReady, WrongState
from forkyard.settings import Settings
from forkyard.supervisor import Supervisor
from forkyard_protocol.daemon import (
    AgentChanged,
    ApprovalRequested,
    ApprovalSettled,
    AttachParams,
    AttachResult,
    ChatMessage,
    ChatTurn,
    Event,
)
from forkyard_protocol.models import FINAL_STATES, Agent

pytestmark = pytest.mark.timeout(60)

E = TypeVar("E")
WAIT_SECONDS = 20


# --- fakes ---------------------------------------------------------------------------------


class GatedBackend:
    """Runs until the test opens its gate."""

    name = "gated"

    def __init__(self) -> None:
        self.gate = anyio.Event()

    async def availability(self, settings: Settings) -> Availability:
        return Availability(True)

    async def run(self, context: AgentContext, instruction: str) -> RunOutcome:
        await self.gate.wait()
        return RunOutcome(True, f"did {instruction}")


class AskingBackend:
    """Asks to run `shell` on its instruction and reports the answer it got."""

    name = "asking"

    def __init__(self) -> None:
        self.answers: list[ApprovalAnswer] = []

    async def availability(self, settings: Settings) -> Availability:
        return Availability(True)

    async def run(self, context: AgentContext, instruction: str) -> RunOutcome:
        answer = await context.request_approval("shell", instruction)
        self.answers.append(answer)
        return RunOutcome(True, f"answered {answer}")


class FakeFront:
    """An editor: what the daemon delivered to it, and a way to wait for more."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.events: list[Event] = []
        self.front: Front | None = None
        self._changed = anyio.Event()

    def deliver(self, event: Event) -> None:
        self.events.append(event)
        self._changed.set()
        self._changed = anyio.Event()

    def of(self, kind: type[E]) -> list[E]:
        return [event for event in self.events if isinstance(event, kind)]

    async def until_some(self, kind: type[E]) -> list[E]:
        """The events of `kind` once there is at least one."""
        found: list[E] = await self.until(lambda: self.of(kind))
        return found

    def ended_turns(self, turn_id: str) -> list[ChatTurn]:
        return [t for t in self.of(ChatTurn) if t.turn_id == turn_id and t.state != "running"]

    def agent_events(self, agent_id: str) -> list[AgentChanged]:
        return [event for event in self.of(AgentChanged) if event.agent.id == agent_id]

    def latest(self, agent_id: str) -> Agent | None:
        events = self.agent_events(agent_id)
        return events[-1].agent if events else None

    async def until(self, predicate: Callable[[], Any]) -> Any:
        with anyio.fail_after(WAIT_SECONDS):
            while not (result := predicate()):
                await self._changed.wait()
        return result

    async def until_state(self, agent_id: str, states: frozenset[str] | set[str]) -> Agent:
        def reached() -> Agent | None:
            agent = self.latest(agent_id)
            return agent if agent is not None and agent.state in states else None

        agent: Agent = await self.until(reached)
        return agent

    async def final(self, agent_id: str) -> Agent:
        return await self.until_state(agent_id, FINAL_STATES)


@dataclass
class Daemon:
    hub: Hub
    api: DaemonApi
    repo: Path
    gated: GatedBackend = field(default_factory=GatedBackend)
    asking: AskingBackend = field(default_factory=AskingBackend)

    async def attach(
        self, name: str, options: dict[str, Any] | None = None
    ) -> tuple[FakeFront, AttachResult]:
        fake = FakeFront(name)
        params = AttachParams(root=str(self.repo), name=name, initialization_options=options)
        fake.front, result = await self.hub.attach(params, fake.deliver)
        session = self.session(fake)
        session.app.orchestrator.backends.setdefault(self.gated.name, self.gated)
        session.app.orchestrator.backends.setdefault(self.asking.name, self.asking)
        return fake, result

    def session(self, fake: FakeFront) -> Session:
        assert fake.front is not None and fake.front.session is not None
        return fake.front.session

    async def call(self, fake: FakeFront, method: str, params: dict[str, Any]) -> Any:
        return await self.api.call(fake.front, method, params)

    async def dispatch(self, fake: FakeFront, backend: str, title: str, task: str = "t") -> str:
        result = await self.call(
            fake, "forkyard/agent/dispatch", {"task": task, "backend": backend, "title": title}
        )
        agent_id: str = result["agent"]["id"]
        return agent_id


@asynccontextmanager
async def running_daemon(repo: Path, tmp_path: Path) -> AsyncIterator[Daemon]:
    """A hub as `forkyard daemon` builds it; at the end every agent is let finish, then
    the hub is closed and its task group cancelled."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    state_dir = tmp_path / "state"
    environ = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "FORKYARD_STATE_DIR": str(state_dir),
        "LANG": "C.UTF-8",
    }
    told: list[str] = []
    async with anyio.create_task_group() as task_group:
        hub = Hub(state_dir, environ, Supervisor(task_group, report=told.append))
        daemon = Daemon(hub, DaemonApi(hub), repo)
        try:
            yield daemon
            assert told == [], "no background task of the daemon failed"
        finally:
            daemon.gated.gate.set()
            with anyio.fail_after(WAIT_SECONDS):
                await hub.wait_until_no_agent_works()
            await hub.close()
            task_group.cancel_scope.cancel()


# --- two fronts, one repository ------------------------------------------------------------


async def test_both_fronts_see_the_same_agent_changes(repo: Path, tmp_path: Path) -> None:
    async with running_daemon(repo, tmp_path) as daemon:
        first, _ = await daemon.attach("first")
        second, attached = await daemon.attach("second")
        assert attached.agents == []
        agent_id = await daemon.dispatch(first, "gated", "shared")
        await first.until_state(agent_id, {"running"})
        await second.until_state(agent_id, {"running"})
        daemon.gated.gate.set()
        done = await first.final(agent_id)
        assert done.state == "done", done.error
        assert done.summary == "did t"
        await second.final(agent_id)
        seen_by_first = [event.wire() for event in first.agent_events(agent_id)]
        seen_by_second = [event.wire() for event in second.agent_events(agent_id)]
        assert seen_by_first == seen_by_second
        moves = [
            (e.previous_state, e.agent.state)
            for e in first.agent_events(agent_id)
            if e.previous_state != e.agent.state
        ]
        assert moves == [
            (None, "queued"),
            ("queued", "starting"),
            ("starting", "running"),
            ("running", "done"),
        ]
        listed = await daemon.call(second, "forkyard/agent/list", {})
        assert [(a["id"], a["state"]) for a in listed["agents"]] == [(agent_id, "done")]


async def test_a_chat_message_from_one_front_is_seen_by_both(repo: Path, tmp_path: Path) -> None:
    async with running_daemon(repo, tmp_path) as daemon:
        first, _ = await daemon.attach("first")
        second, _ = await daemon.attach("second")
        agent_id = await daemon.dispatch(first, "gated", "chatty")
        await second.until_state(agent_id, {"running"})
        sent = await daemon.call(second, "daemon/chat", {"text": "/agents"})
        for front in (first, second):
            turn = await front.until(partial(front.ended_turns, sent["turnId"]))
            assert [t.state for t in turn] == ["completed"]
            messages = [m.message for m in front.of(ChatMessage)]
            assert [(m.role, m.thread_id) for m in messages] == [
                ("user", sent["threadId"]),
                ("assistant", sent["threadId"]),
            ]
            assert messages[0].text == "/agents"
            assert messages[1].id == sent["messageId"]
            assert "#1 **chatty** `running`" in messages[1].text
        assert first.of(ChatMessage) == second.of(ChatMessage)
        daemon.gated.gate.set()
        assert (await first.final(agent_id)).state == "done"


# --- approvals -----------------------------------------------------------------------------


async def test_the_first_answer_to_an_approval_wins(repo: Path, tmp_path: Path) -> None:
    async with running_daemon(repo, tmp_path) as daemon:
        first, _ = await daemon.attach("first")
        second, _ = await daemon.attach("second")
        agent_id = await daemon.dispatch(first, "asking", "asker", task="rm -rf build")
        [asked] = await first.until_some(ApprovalRequested)
        assert await second.until_some(ApprovalRequested) == [asked]
        assert (asked.tool, asked.detail, asked.agent.id) == ("shell", "rm -rf build", agent_id)
        # A front that opens now is asked too.
        late, attached = await daemon.attach("late")
        assert [a.approval_id for a in attached.approvals] == [asked.approval_id]

        answer = {"approvalId": asked.approval_id, "answer": "allow_once"}
        assert await daemon.call(second, "daemon/approval/answer", answer) == {"accepted": True}
        refused = {"approvalId": asked.approval_id, "answer": "deny"}
        assert await daemon.call(first, "daemon/approval/answer", refused) == {"accepted": False}

        for front in (first, second, late):
            settled = await front.until_some(ApprovalSettled)
            assert [(s.approval_id, s.answer) for s in settled] == [
                (asked.approval_id, "allow_once")
            ]
        done = await first.final(agent_id)
        assert done.state == "done", done.error
        assert done.summary == "answered allow_once"
        assert daemon.asking.answers == ["allow_once"]
        # Answered already: a late answer changes nothing.
        assert await daemon.call(late, "daemon/approval/answer", refused) == {"accepted": False}


async def test_an_approval_nobody_answers_is_a_deny_after_the_timeout(
    repo: Path, tmp_path: Path
) -> None:
    async with running_daemon(repo, tmp_path) as daemon:
        front, _ = await daemon.attach("only", options={"approvalTimeoutSeconds": 0.2})
        assert daemon.session(front).app.settings.approval_timeout_seconds == 0.2
        agent_id = await daemon.dispatch(front, "asking", "unanswered", task="curl example")
        [settled] = await front.until_some(ApprovalSettled)
        assert settled.answer == "deny"
        done = await front.final(agent_id)
        assert done.summary == "answered deny"
        assert daemon.asking.answers == ["deny"]

        asked_at = next(i for i, e in enumerate(front.events) if isinstance(e, ApprovalRequested))
        settled_at = front.events.index(settled)
        while_waiting = [
            e.agent
            for e in front.events[:settled_at]
            if isinstance(e, AgentChanged) and e.agent.id == agent_id
        ]
        waiting = [
            a
            for a in while_waiting
            if a.progress is not None and a.progress.message == "waiting for your approval: shell"
        ]
        assert waiting, [a.progress for a in while_waiting]
        assert all(a.state == "running" for a in waiting), "it waits running, not failed"
        assert asked_at < settled_at


# --- while you were away -------------------------------------------------------------------


async def test_an_agent_that_ended_with_no_front_is_told_once(repo: Path, tmp_path: Path) -> None:
    async with running_daemon(repo, tmp_path) as daemon:
        first, _ = await daemon.attach("first")
        second, _ = await daemon.attach("second")
        agent_id = await daemon.dispatch(first, "gated", "unwatched")
        await first.until_state(agent_id, {"running"})
        await second.until_state(agent_id, {"running"})
        session = daemon.session(first)
        for fake in (first, second):
            assert fake.front is not None
            daemon.hub.detach(fake.front)
        assert session.fronts == {}

        daemon.gated.gate.set()
        hub = daemon.hub
        with anyio.fail_after(WAIT_SECONDS):
            while True:  # the hub tells `changed` after recording each agent change
                changed = hub.changed
                if session.away:
                    break
                await changed.wait()

        _back, attached = await daemon.attach("back")
        assert attached.away == ["#1 done"]
        assert [(a.id, a.state) for a in attached.agents] == [(agent_id, "done")]
        _again, attached_again = await daemon.attach("again")
        assert attached_again.away == [], "told once"
        last_seen = first.latest(agent_id)
        assert last_seen is not None
        assert last_seen.state == "running", "a detached front gets nothing"


# --- refused requests ----------------------------------------------------------------------


async def test_bad_requests_are_refused_with_their_codes(repo: Path, tmp_path: Path) -> None:
    async with running_daemon(repo, tmp_path) as daemon:
        with pytest.raises(NotReady, match="send daemon/attach first") as not_ready:
            await daemon.api.call(None, "forkyard/agent/list", {})
        assert not_ready.value.code == -32002

        front, _ = await daemon.attach("first")
        with pytest.raises(InvalidRequest, match="no agent with id") as unknown:
            await daemon.call(front, "forkyard/agent/read", {"agentId": "agent-nope"})
        assert unknown.value.code == -32602
        with pytest.raises(InvalidRequest, match="not a method of the daemon"):
            await daemon.call(front, "forkyard/chat", {"text": "hi"})  # the front's own

        agent_id = await daemon.dispatch(front, "gated", "busy")
        await front.until_state(agent_id, {"running"})
        with pytest.raises(WrongState, match="is running, not done") as wrong:
            await daemon.call(front, "daemon/markApplied", {"agentId": agent_id})
        assert wrong.value.code == -32803
        assert front.agent_events(agent_id)[-1].agent.state == "running"

        daemon.gated.gate.set()
        await front.final(agent_id)
        assert await daemon.call(front, "daemon/markApplied", {"agentId": agent_id}) == {}
        assert (await front.until_state(agent_id, {"applied"})).state == "applied"
        unknown_approval = {"approvalId": "approval-nope", "answer": "deny"}
        result = await daemon.call(front, "daemon/approval/answer", unknown_approval)
        assert result == {"accepted": False}
