"""Failures the orchestrator must contain: an agent whose finishing raises (a diff that
fails inside diff's task group, a commit refused for a tampered worktree, a store that
cannot save) ends `failed` with the cause, its files kept, while the other agents run
on; a failing background loop starts again; the supervisor task group survives any task.

Real repositories, the real command backend in the real sandbox; failures are injected
at one monkeypatch point each, where git or the store would fail."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream

from forkyard.app import ForkyardApp
from forkyard.orchestrator import runner as runner_module
from forkyard.supervisor import MAX_REPORT_CHARS, Supervisor
from forkyard.workspace.diff import diff_worktree
from forkyard.workspace.git import GitError, Repository
from forkyard.workspace.hardened import WorktreeTampered
from forkyard_protocol.daemon import AgentChanged, Event, Notice
from forkyard_protocol.messages import AgentDispatchParams
from forkyard_protocol.models import FINAL_STATES, Agent

pytestmark = pytest.mark.timeout(90)

#: The agent that is still working when the broken one fails: it waits for `go`.
WAITER = "echo waiting > waiting.txt; while [ ! -e go ]; do sleep 0.02; done; echo ok > ok.txt"


class Watch:
    """A bus consumer: the latest state of each agent, and the notices."""

    def __init__(self) -> None:
        self.agents: dict[str, Agent] = {}
        self.notices: list[tuple[str, str]] = []
        self._changed = anyio.Event()

    def agent_changed(self, agent: Agent, previous_state: str | None) -> None:
        self.agents[agent.id] = agent
        self._poke()

    def notice(self, level: str, text: str, agent: Agent | None = None) -> None:
        self.notices.append((level, text))
        self._poke()

    def _poke(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def consume(self, events: MemoryObjectReceiveStream[Event]) -> None:
        async with events:
            async for event in events:
                if isinstance(event, AgentChanged):
                    self.agent_changed(event.agent, event.previous_state)
                elif isinstance(event, Notice):
                    self.notice(event.level, event.text, event.agent)

    async def until(self, predicate: Any, timeout: float = 30) -> Any:
        with anyio.fail_after(timeout):
            while not (result := predicate()):
                await self._changed.wait()
        return result

    async def final(self, agent_id: str) -> Agent:
        def reached() -> Agent | None:
            agent = self.agents.get(agent_id)
            return agent if agent and agent.state in FINAL_STATES else None

        result: Agent = await self.until(reached)
        return result


@asynccontextmanager
async def running(
    repo: Path, tmp_path: Path
) -> AsyncIterator[tuple[ForkyardApp, Watch, list[str]]]:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    environ = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "FORKYARD_STATE_DIR": str(tmp_path / "state"),
        "LANG": "C.UTF-8",
    }
    app = await ForkyardApp.open(repo, environ)
    watch = Watch()
    told: list[str] = []
    try:
        async with anyio.create_task_group() as task_group:
            supervisor = Supervisor(task_group, report=told.append)
            events, _ = app.bus.open_subscription()
            task_group.start_soon(watch.consume, events)
            await app.start(supervisor)
            try:
                yield app, watch, told
            finally:
                task_group.cancel_scope.cancel()
    finally:
        await app.close()


async def dispatch(app: ForkyardApp, task: str, title: str) -> Agent:
    return await app.orchestrator.dispatch(
        AgentDispatchParams(task=task, backend="command", title=title)
    )


async def test_a_diff_failing_in_an_exception_group_fails_only_that_agent(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def failing_diff(worktree: Path, *args: Any, **kwargs: Any) -> Any:
        if "broken" in worktree.name:
            # What diff's own task group raises when one of its git commands fails.
            raise ExceptionGroup("diff", [GitError("fatal: index file corrupt")])
        return await diff_worktree(worktree, *args, **kwargs)

    monkeypatch.setattr(runner_module, "diff_worktree", failing_diff)
    async with running(repo, tmp_path) as (app, watch, told):
        waiter = await dispatch(app, WAITER, "waiter")
        broken = await dispatch(app, "echo mine > mine.txt", "broken")
        failed = await watch.final(broken.id)
        assert failed.state == "failed"
        assert failed.error is not None
        assert "index file corrupt" in failed.error
        assert failed.worktree is not None and failed.worktree in failed.error
        assert (Path(failed.worktree) / "mine.txt").read_text() == "mine\n", "files kept"

        # The other agent was running all along and finishes normally.
        assert watch.agents[waiter.id].state == "running"
        assert waiter.worktree is None
        worktree = Path(watch.agents[waiter.id].worktree or "")
        (worktree / "go").touch()
        done = await watch.final(waiter.id)
        assert done.state == "done", done.error
        assert done.changes.files >= 1

        # ... and a new agent still runs to the end.
        after = await dispatch(app, "echo again > again.txt", "after")
        assert (await watch.final(after.id)).state == "done"
        assert told == [], "the orchestrator contained it; nothing reached the supervisor"
        assert any(level == "error" and "broken" in text for level, text in watch.notices)


async def test_a_commit_refused_for_a_tampered_worktree_fails_the_agent(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = Repository.commit_worktree

    async def refusing_commit(self: Repository, worktree: Path, *args: Any, **kwargs: Any) -> Any:
        if "tampered" in worktree.name:
            raise WorktreeTampered(
                f"{worktree}/.git is not the file Forkyard wrote", commit="0123456789abcdef"
            )
        return await original(self, worktree, *args, **kwargs)

    monkeypatch.setattr(Repository, "commit_worktree", refusing_commit)
    async with running(repo, tmp_path) as (app, watch, _told):
        tampered = await dispatch(app, "echo x > x.txt", "tampered")
        failed = await watch.final(tampered.id)
        assert failed.state == "failed"
        assert failed.error is not None and "is not the file Forkyard wrote" in failed.error
        assert "committed as 0123456789ab" in failed.error
        fine = await dispatch(app, "echo y > y.txt", "fine")
        assert (await watch.final(fine.id)).state == "done"


async def test_a_store_failing_at_the_end_of_a_run_still_ends_the_agent_failed(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(repo, tmp_path) as (app, watch, told):
        store = app.orchestrator.store
        original = store.save_agent

        async def failing_save(repo_key: str, agent: Agent) -> None:
            if agent.title == "unsaved" and agent.state in FINAL_STATES:
                raise OSError("database or disk is full")
            await original(repo_key, agent)

        monkeypatch.setattr(store, "save_agent", failing_save)
        unsaved = await dispatch(app, "true", "unsaved")
        failed = await watch.final(unsaved.id)
        assert failed.state == "failed"
        assert failed.error is not None and "database or disk is full" in failed.error
        listed = {a.id: a.state for a in app.orchestrator.agents()}
        assert listed[unsaved.id] == "failed"
        next_one = await dispatch(app, "true", "next")
        assert (await watch.final(next_one.id)).state == "done"
        assert told == []


async def test_a_failing_log_flush_loses_nothing_and_the_flusher_starts_again(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(repo, tmp_path) as (app, watch, _told):
        store = app.orchestrator.store
        original = store.append_log
        failed_once = anyio.Event()

        async def flaky_append(agent_id: str, entries: Any) -> None:
            if not failed_once.is_set():
                failed_once.set()
                raise OSError("disk I/O error")
            await original(agent_id, entries)

        monkeypatch.setattr(store, "append_log", flaky_append)
        agent = await dispatch(app, "echo from-the-agent; " + WAITER, "logged")
        # While the agent works, only the background flusher writes: it is the one failing.
        await failed_once.wait()
        [(level, text)] = await watch.until(
            lambda: [n for n in watch.notices if "log flusher" in n[1]]
        )
        assert level == "warning"
        assert len(text) <= 64
        assert text.endswith("(see the log)")
        worktree = Path(watch.agents[agent.id].worktree or "")
        (worktree / "go").touch()
        assert (await watch.final(agent.id)).state == "done"
        _, log = await app.orchestrator.read(agent.id)
        assert any("from-the-agent" in entry.text for entry in log), "nothing lost"


async def test_the_supervisor_contains_failures_and_lets_cancellation_through() -> None:
    told: list[str] = []
    both_told = anyio.Event()
    sibling_ran = anyio.Event()
    secret = "sk-very-secret-value-123"

    def report(line: str) -> None:
        told.append(line)
        if len(told) == 2:
            both_told.set()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as task_group:
            supervisor = Supervisor(task_group, report=report, secrets=lambda: [secret])

            async def boom() -> None:
                raise ValueError(f"bad thing with {secret} " + "x" * 500)

            async def group_boom() -> None:
                async with anyio.create_task_group() as inner:
                    inner.start_soon(boom)

            async def sibling() -> None:
                await both_told.wait()  # still running after both failures
                sibling_ran.set()
                await anyio.sleep_forever()

            supervisor.start_soon(sibling, name="sibling")
            supervisor.start_soon(boom, name="boom")
            supervisor.start_soon(group_boom, name="group boom")
            await sibling_ran.wait()
            assert supervisor.failures == 2
            task_group.cancel_scope.cancel()
    assert len(told) == 2, told
    for line in told:
        assert "\n" not in line
        assert len(line) <= MAX_REPORT_CHARS + len(" (see the log)")
        assert line.endswith("(see the log)")
        assert secret not in line
        assert "ValueError" in line
