"""The SQLite store, on real database files: what is saved comes back, in the promised
order, across restarts and a killed process, without ever stalling the event loop."""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from forkyard.store import DATABASE_NAME, Store, StoreError
from forkyard_protocol.models import (
    Agent,
    ChangeCounts,
    LogEntry,
    Message,
    Progress,
    Thread,
)

REPO = "/home/user/project"
OTHER_REPO = "/home/user/elsewhere"
EPOCH = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def stamp(seconds: float, *, suffix: str = "Z") -> str:
    """An ISO 8601 UTC time `seconds` after a fixed moment, as clients write them."""
    moment = (EPOCH + timedelta(seconds=seconds)).isoformat(timespec="milliseconds")
    return moment.replace("+00:00", suffix)


def full_agent(number: int, *, agent_id: str | None = None, at: float = 0) -> Agent:
    return Agent(
        id=agent_id or f"agent-{number}",
        number=number,
        title=f"Add type hints #{number}",
        task="add type hints to src/app.py",
        role="worker",
        backend="llm",
        state="running",
        thread_id="thread-1",
        base_ref="0123456789abcdef0123456789abcdef01234567",
        branch=f"forkyard/{number}-add-type-hints",
        worktree=f"/var/state/worktrees/{number}",
        created_at=stamp(at),
        updated_at=stamp(at + 1),
        progress=Progress(message="editing src/app.py", percentage=40),
        summary="half done",
        error="none yet",
        changes=ChangeCounts(files=2, additions=10, deletions=3),
    )


def bare_agent(number: int, *, at: float = 0) -> Agent:
    """An agent with every optional field left empty, as it is when just queued."""
    return Agent(
        id=f"bare-{number}",
        number=number,
        title="t",
        task="echo hi",
        role="explorer",
        backend="command",
        state="queued",
        base_ref="HEAD",
        created_at=stamp(at),
        updated_at=stamp(at),
    )


def log_entries(first: int, count: int) -> list[LogEntry]:
    return [
        LogEntry(time=stamp(n), kind="stdout", text=f"line {n}")
        for n in range(first, first + count)
    ]


def message(message_id: str, *, at: float, text: str = "hi", thread: str = "t1") -> Message:
    return Message(id=message_id, thread_id=thread, role="user", text=text, created_at=stamp(at))


def query_once(database: Path, statement: str) -> object:
    """Run one statement on a connection of our own, as another program would."""
    with closing(sqlite3.connect(database, isolation_level=None)) as connection:
        row = connection.execute(statement).fetchone()
    return row[0] if row else None


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state" / "nested"


@pytest.fixture
async def store(state_dir: Path) -> AsyncIterator[Store]:
    async with await Store.open(state_dir) as opened:
        yield opened


async def test_open_creates_the_state_dir_and_one_database_file(
    store: Store, state_dir: Path
) -> None:
    assert store.path == state_dir / DATABASE_NAME
    assert await anyio.Path(store.path).is_file()
    assert await anyio.to_thread.run_sync(query_once, store.path, "PRAGMA journal_mode") == "wal"


async def test_agents_round_trip_with_every_field_and_with_none_values(store: Store) -> None:
    full, bare = full_agent(1), bare_agent(2)
    await store.save_agent(REPO, full)
    await store.save_agent(REPO, bare)

    assert await store.get_agent(full.id) == full
    assert await store.get_agent(bare.id) == bare
    assert await store.get_agent_by_number(REPO, 1) == full
    assert await store.get_agent_by_number(OTHER_REPO, 1) is None
    assert await store.get_agent("no-such-agent") is None


async def test_saving_an_agent_again_updates_it_in_place(store: Store) -> None:
    agent = full_agent(1)
    await store.save_agent(REPO, agent)
    finished = agent.model_copy(
        update={"state": "done", "progress": None, "summary": "added hints", "error": None}
    )
    await store.save_agent(REPO, finished)

    assert await store.load_agents(REPO) == [finished]


async def test_agents_are_listed_newest_first_per_repo(store: Store) -> None:
    for number in (1, 3, 2):
        await store.save_agent(REPO, full_agent(number, at=number * 10))
    await store.save_agent(OTHER_REPO, bare_agent(1, at=15))

    assert [a.number for a in await store.load_agents(REPO)] == [3, 2, 1]
    assert [a.id for a in await store.load_agents(OTHER_REPO)] == ["bare-1"]
    everyone = await store.load_agents()
    assert [a.id for a in everyone] == ["agent-3", "agent-2", "bare-1", "agent-1"]


async def test_agent_numbers_count_per_repo_and_survive_a_restart(state_dir: Path) -> None:
    async with await Store.open(state_dir) as store:
        assert [await store.next_agent_number(REPO) for _ in range(3)] == [1, 2, 3]
        assert await store.next_agent_number(OTHER_REPO) == 1
    async with await Store.open(state_dir) as store:
        assert await store.next_agent_number(REPO) == 4
        # An agent saved under a number nobody reserved is never numbered over.
        await store.save_agent(OTHER_REPO, full_agent(7))
        assert await store.next_agent_number(OTHER_REPO) == 8


async def test_twenty_concurrent_number_reservations_are_all_distinct(store: Store) -> None:
    numbers: list[int] = []

    async def reserve() -> None:
        numbers.append(await store.next_agent_number(REPO))

    async with anyio.create_task_group() as group:
        for _ in range(20):
            group.start_soon(reserve)

    assert sorted(numbers) == list(range(1, 21))


async def test_two_stores_on_one_directory_share_numbers_and_data(state_dir: Path) -> None:
    numbers: list[int] = []
    async with await Store.open(state_dir) as first, await Store.open(state_dir) as second:

        async def reserve(store: Store) -> None:
            numbers.append(await store.next_agent_number(REPO))

        async with anyio.create_task_group() as group:
            for index in range(20):
                group.start_soon(reserve, (first, second)[index % 2])
        await first.save_thread(
            Thread(id="t1", title="x", created_at=stamp(0), updated_at=stamp(0))
        )
        assert [t.id for t in await second.list_threads()] == ["t1"]

    assert sorted(numbers) == list(range(1, 21))


async def test_read_log_returns_the_last_entries_oldest_first(store: Store) -> None:
    await store.append_log("a1", log_entries(0, 3))
    await store.append_log("a1", log_entries(3, 4))
    await store.append_log("a2", log_entries(100, 2))

    assert await store.read_log("a1") == log_entries(0, 7)
    assert await store.read_log("a1", limit=5) == log_entries(2, 5)
    assert await store.read_log("a1", limit=0) == []
    assert await store.read_log("a2") == log_entries(100, 2)
    assert await store.read_log("unknown") == []
    with pytest.raises(ValueError, match="limit"):
        await store.read_log("a1", limit=-1)


async def test_log_is_capped_per_agent_dropping_the_oldest(state_dir: Path) -> None:
    async with await Store.open(state_dir, max_log_entries_per_agent=10) as store:
        await store.append_log("a1", log_entries(0, 7))
        await store.append_log("a1", log_entries(7, 7))
        await store.append_log("a2", log_entries(0, 3))
        assert await store.read_log("a1", limit=100) == log_entries(4, 10)
        assert await store.read_log("a2", limit=100) == log_entries(0, 3)

        # One batch larger than the cap keeps only its own tail.
        await store.append_log("a2", log_entries(50, 25))
        assert await store.read_log("a2", limit=100) == log_entries(65, 10)
        await store.append_log("a1", [])
        assert await store.read_log("a1", limit=100) == log_entries(4, 10)


async def test_threads_round_trip_newest_first_and_move_up_when_updated(store: Store) -> None:
    old = Thread(id="t-old", title="first", created_at=stamp(0), updated_at=stamp(5))
    new = Thread(id="t-new", title="second", created_at=stamp(10), updated_at=stamp(10))
    await store.save_thread(old)
    await store.save_thread(new)
    assert await store.list_threads() == [new, old]
    assert await store.get_thread("t-old") == old
    assert await store.get_thread("missing") is None

    # `+00:00` and `Z` mean the same; ordering must follow time, not spelling.
    touched = old.model_copy(update={"title": "renamed", "updated_at": stamp(20, suffix="+00:00")})
    await store.save_thread(touched)
    assert await store.list_threads() == [touched, new]


async def test_messages_come_back_in_creation_order_and_upsert_in_place(store: Store) -> None:
    event = Message(
        id="m-event",
        thread_id="t1",
        turn_id=None,
        role="event",
        text="agent #1 is running",
        agent_id="agent-1",
        created_at=stamp(3),
    )
    streaming = Message(
        id="m-reply",
        thread_id="t1",
        turn_id="turn-1",
        role="assistant",
        text="Hel",
        created_at=stamp(2),
    )
    await store.add_message(message("m-late", at=5))
    await store.add_message(event)
    await store.add_message(streaming)
    await store.add_message(message("m-first", at=1))
    await store.add_message(message("m-same-a", at=4))
    await store.add_message(message("m-same-b", at=4))
    await store.add_message(message("m-other", at=0, thread="t2"))

    complete = streaming.model_copy(update={"text": "Hello, done."})
    await store.add_message(complete)

    listed = await store.list_messages("t1")
    assert [m.id for m in listed] == [
        "m-first",
        "m-reply",
        "m-event",
        "m-same-a",
        "m-same-b",
        "m-late",
    ]
    assert listed[1] == complete
    assert listed[2] == event
    assert [m.id for m in await store.list_messages("t2")] == ["m-other"]
    assert await store.list_messages("none") == []


async def test_everything_survives_close_and_reopen(state_dir: Path) -> None:
    agent = full_agent(1)
    thread = Thread(id="t1", title="chat", created_at=stamp(0), updated_at=stamp(1))
    reply = message("m1", at=1, text="hello")
    async with await Store.open(state_dir) as store:
        await store.save_agent(REPO, agent)
        await store.append_log(agent.id, log_entries(0, 5))
        await store.save_thread(thread)
        await store.add_message(reply)

    async with await Store.open(state_dir) as store:
        assert await store.load_agents(REPO) == [agent]
        assert await store.read_log(agent.id) == log_entries(0, 5)
        assert await store.list_threads() == [thread]
        assert await store.list_messages("t1") == [reply]


CHILD_WRITER = """
import json, sys
import anyio, anyio.to_thread
from pathlib import Path
from forkyard.store import Store
from forkyard_protocol.models import Agent, LogEntry, Message, Thread

async def main() -> None:
    data = json.loads(sys.argv[2])
    store = await Store.open(Path(sys.argv[1]))
    number = await store.next_agent_number(data["repo"])
    await store.save_agent(data["repo"], Agent.model_validate(data["agent"]))
    await store.append_log("agent-1", [LogEntry.model_validate(e) for e in data["log"]])
    await store.save_thread(Thread.model_validate(data["thread"]))
    await store.add_message(Message.model_validate(data["message"]))
    print("written", number, flush=True)
    # Hold the connection open, unclosed, until killed (or until the test goes away).
    await anyio.to_thread.run_sync(sys.stdin.readline)

anyio.run(main)
"""


async def test_data_written_before_sigkill_is_readable_by_a_fresh_store(state_dir: Path) -> None:
    agent = full_agent(1)
    thread = Thread(id="t1", title="chat", created_at=stamp(0), updated_at=stamp(1))
    reply = message("m1", at=1, text="hello")
    payload = {
        "repo": REPO,
        "agent": agent.wire(),
        "log": [entry.wire() for entry in log_entries(0, 50)],
        "thread": thread.wire(),
        "message": reply.wire(),
    }
    command = [sys.executable, "-c", CHILD_WRITER, str(state_dir), json.dumps(payload)]
    with anyio.fail_after(30):
        async with await anyio.open_process(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        ) as child:
            assert child.stdout is not None
            assert child.stderr is not None
            output = b""
            async for chunk in child.stdout:
                output += chunk
                if b"\n" in output:
                    break
            if output != b"written 1\n":
                errors = b"".join([chunk async for chunk in child.stderr])
                pytest.fail(f"child wrote {output!r}; stderr: {errors.decode()}")
            child.send_signal(signal.SIGKILL)
            assert await child.wait() == -signal.SIGKILL

    async with await Store.open(state_dir) as store:
        assert await store.load_agents(REPO) == [agent]
        assert await store.read_log("agent-1") == log_entries(0, 50)
        assert await store.list_threads() == [thread]
        assert await store.list_messages("t1") == [reply]
        assert await store.next_agent_number(REPO) == 2


async def test_a_corrupt_database_file_is_reported_with_its_path(state_dir: Path) -> None:
    database = state_dir / DATABASE_NAME
    await anyio.Path(state_dir).mkdir(parents=True)
    await anyio.Path(database).write_bytes(b"this is not a database, just some text. " * 200)

    with pytest.raises(StoreError, match=re.escape(str(database))):
        await Store.open(state_dir)


async def test_an_unopenable_database_path_is_reported_with_its_path(state_dir: Path) -> None:
    database = state_dir / DATABASE_NAME
    await anyio.Path(database).mkdir(parents=True)  # a directory where the file should be

    with pytest.raises(StoreError, match=re.escape(str(database))):
        await Store.open(state_dir)


async def test_a_database_from_a_newer_schema_is_refused(state_dir: Path) -> None:
    async with await Store.open(state_dir) as store:
        database = store.path
    await anyio.to_thread.run_sync(query_once, database, "PRAGMA user_version = 999")

    with pytest.raises(StoreError, match=r"newer Forkyard") as raised:
        await Store.open(state_dir)
    assert str(database) in str(raised.value)


async def test_a_closed_store_says_so_and_closing_twice_is_harmless(state_dir: Path) -> None:
    store = await Store.open(state_dir)
    await store.close()
    await store.close()
    with pytest.raises(StoreError, match="closed"):
        await store.list_threads()


async def test_store_calls_never_block_the_event_loop(store: Store) -> None:
    """A blocking store would hold the loop for a whole writer's run (>= 0.5 s here);
    through the worker thread, a ticker keeps running between and during writes."""
    gaps: list[float] = []
    writes = 0
    writers_done = anyio.Event()
    batch = [LogEntry(time=stamp(n), kind="stdout", text="x" * 200) for n in range(20)]

    async def tick() -> None:
        last = time.perf_counter()
        while not writers_done.is_set():
            await anyio.sleep(0.003)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    async def write_until_busy_long_enough(worker: int) -> None:
        nonlocal writes
        started = time.perf_counter()
        while writes < 200 or time.perf_counter() - started < 0.5:
            await store.append_log(f"agent-{worker}", batch)
            await store.save_agent(REPO, full_agent(worker, at=writes))
            writes += 1

    async with anyio.create_task_group() as group:
        group.start_soon(tick)
        async with anyio.create_task_group() as writers:
            for worker in range(4):
                writers.start_soon(write_until_busy_long_enough, worker)
        writers_done.set()

    assert writes >= 200
    assert max(gaps) < 0.2, f"the event loop stalled for {max(gaps):.3f} s"
    assert len(gaps) > 10
