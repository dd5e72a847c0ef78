"""SQLite persistence of agents, agent logs, threads, messages and usage totals.

One database file, `forkyard.db`, in the state directory, in WAL mode. The server holds
one `Store`; its connection is used from worker threads one call at a time (a
`CapacityLimiter(1)`), so the event loop never waits on disk and calls never interleave.
Every write is committed before its call returns: a killed server loses nothing it was
told was saved, and the next process opens the file without any manual recovery.

Usage::

    async with await Store.open(state_dir) as store:
        await store.save_thread(thread)

(`Store.open` is a coroutine returning an open store; the store is an async context
manager that closes itself. Calling `await store.close()` directly works as well.)
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

import anyio
import anyio.to_thread
from pydantic import BaseModel, ValidationError

from forkyard.store.errors import StoreError
from forkyard.store.schema import migrate
from forkyard_protocol.models import Agent, LogEntry, Message, Thread, Usage

DATABASE_NAME = "forkyard.db"
DEFAULT_MAX_LOG_ENTRIES_PER_AGENT = 20_000
#: How long a write waits for another connection (a second Store on the same file, or
#: another process) to finish its transaction before giving up with an error.
BUSY_TIMEOUT_SECONDS = 10.0

_Result = TypeVar("_Result")
_Model = TypeVar("_Model", bound=BaseModel)
_Operation = Callable[[sqlite3.Connection], _Result]


@dataclass(frozen=True)
class UsageTotal:
    """Model calls summed. The dollars of the calls whose price is known are summed on
    their own, the others counted: a budget can then stop spending that is known to
    be past it, even when one unpriced call makes the whole bill unknown."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    #: The dollars of the calls whose price is known.
    cost_usd: float = 0.0
    #: Calls whose price is not known (their dollars are not in `cost_usd`).
    unpriced_calls: int = 0

    def plus(self, usage: Usage) -> UsageTotal:
        return UsageTotal(
            self.input_tokens + usage.input_tokens,
            self.output_tokens + usage.output_tokens,
            self.cached_tokens + usage.cached_tokens,
            self.cost_usd + (usage.cost_usd or 0.0),
            self.unpriced_calls + (usage.cost_usd is None),
        )

    def usage(self) -> Usage:
        """As the protocol tells it: the cost is None when a call's price is unknown."""
        return Usage(
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cached_tokens=self.cached_tokens,
            cost_usd=None if self.unpriced_calls else self.cost_usd,
        )


def sort_key(timestamp: str) -> str:
    """A timestamp rewritten so that string order is time order.

    The protocol only says "ISO 8601 UTC"; `...Z`, `...+00:00` and differing fractions
    of a second all occur in practice and do not sort as strings. Anything that does not
    parse is kept as it is, so odd input still orders consistently with itself.
    """
    try:
        moment = datetime.fromisoformat(timestamp)
    except ValueError:
        return timestamp
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Store:
    """The server's durable memory. Obtain one with `await Store.open(state_dir)`."""

    def __init__(
        self,
        connection: sqlite3.Connection,
        path: Path,
        *,
        max_log_entries_per_agent: int = DEFAULT_MAX_LOG_ENTRIES_PER_AGENT,
    ) -> None:
        """Wrap an already migrated connection; `open` is the way to make one."""
        _check_log_cap(max_log_entries_per_agent)
        self._connection: sqlite3.Connection | None = connection
        self._limiter = anyio.CapacityLimiter(1)
        self.path = path
        self.max_log_entries_per_agent = max_log_entries_per_agent

    @classmethod
    async def open(
        cls,
        state_dir: Path,
        *,
        max_log_entries_per_agent: int = DEFAULT_MAX_LOG_ENTRIES_PER_AGENT,
    ) -> Store:
        """Open (creating if needed) `state_dir/forkyard.db` and bring its schema up to date.

        Raises `StoreError` naming the file when it is not a database, cannot be opened,
        or was written by a newer schema.
        """
        _check_log_cap(max_log_entries_per_agent)
        path = Path(state_dir) / DATABASE_NAME
        connection = await anyio.to_thread.run_sync(_connect, path)
        return cls(connection, path, max_log_entries_per_agent=max_log_entries_per_agent)

    async def close(self) -> None:
        """Close the connection once the calls already waiting have run; idempotent.

        Shielded, so that a cancelled shutdown still releases the file.
        """
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._close_in_worker, limiter=self._limiter)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    # Agents

    async def save_agent(self, repo: str, agent: Agent) -> None:
        """Insert or replace `agent`, filed under `repo` (the checkout root's absolute path)."""
        row = (
            agent.id,
            repo,
            agent.number,
            agent.state,
            sort_key(agent.created_at),
            agent.updated_at,
            agent.model_dump_json(),
        )

        def write(connection: sqlite3.Connection) -> None:
            connection.execute(
                """INSERT INTO agents (id, repo, number, state, created_key, updated_at, data)
                VALUES (?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (id) DO UPDATE SET
                    repo = excluded.repo, number = excluded.number, state = excluded.state,
                    created_key = excluded.created_key, updated_at = excluded.updated_at,
                    data = excluded.data""",
                row,
            )

        await self._write(write)

    async def load_agents(self, repo: str | None = None) -> list[Agent]:
        """The agents of `repo` (every repository's when None), newest first."""
        if repo is None:
            query = "SELECT data FROM agents ORDER BY created_key DESC, repo, number DESC"
            params: tuple[str, ...] = ()
        else:
            query = "SELECT data FROM agents WHERE repo = ? ORDER BY number DESC"
            params = (repo,)
        return await self._read_models(Agent, query, params)

    async def get_agent(self, agent_id: str) -> Agent | None:
        found = await self._read_models(Agent, "SELECT data FROM agents WHERE id = ?", (agent_id,))
        return found[0] if found else None

    async def get_agent_by_number(self, repo: str, number: int) -> Agent | None:
        """The agent people call "#number" in `repo`, for requests that name it so."""
        found = await self._read_models(
            Agent, "SELECT data FROM agents WHERE repo = ? AND number = ?", (repo, number)
        )
        return found[0] if found else None

    async def next_agent_number(self, repo: str) -> int:
        """Reserve the next per-repository agent number: 1, 2, 3, ...

        One statement in an IMMEDIATE transaction, so concurrent callers (even other
        connections to the same file) never get the same number. Numbers of agents saved
        without a reservation are respected too: the result is always above them.
        """

        def reserve(connection: sqlite3.Connection) -> int:
            rows = connection.execute(
                """INSERT INTO agent_numbers (repo, last_number)
                VALUES (:repo, COALESCE((SELECT MAX(number) FROM agents WHERE repo = :repo), 0) + 1)
                ON CONFLICT (repo) DO UPDATE SET last_number = MAX(
                    last_number + 1,
                    COALESCE((SELECT MAX(number) FROM agents WHERE repo = :repo), 0) + 1)
                RETURNING last_number""",
                {"repo": repo},
            ).fetchall()
            return int(rows[0][0])

        return await self._write(reserve)

    # Agent logs

    async def append_log(self, agent_id: str, entries: Sequence[LogEntry]) -> None:
        """Append `entries` to the agent's log in one transaction, then drop the oldest
        entries beyond `max_log_entries_per_agent`."""
        cap = self.max_log_entries_per_agent
        rows = [(agent_id, entry.model_dump_json()) for entry in entries[-cap:]]
        if not rows:
            return

        def write(connection: sqlite3.Connection) -> None:
            connection.executemany("INSERT INTO agent_logs (agent_id, data) VALUES (?, ?)", rows)
            # A running count avoids scanning up to `cap` index entries on every append.
            counted = connection.execute(
                """INSERT INTO agent_log_counts (agent_id, entries) VALUES (?, ?)
                ON CONFLICT (agent_id) DO UPDATE SET entries = entries + excluded.entries
                RETURNING entries""",
                (agent_id, len(rows)),
            ).fetchall()
            excess = int(counted[0][0]) - cap
            if excess > 0:
                connection.execute(
                    """DELETE FROM agent_logs WHERE seq IN (
                        SELECT seq FROM agent_logs WHERE agent_id = ? ORDER BY seq LIMIT ?)""",
                    (agent_id, excess),
                )
                connection.execute(
                    "UPDATE agent_log_counts SET entries = ? WHERE agent_id = ?", (cap, agent_id)
                )

        await self._write(write)

    async def read_log(self, agent_id: str, limit: int = 1000) -> list[LogEntry]:
        """The last `limit` entries of the agent's log, oldest first."""
        if limit < 0:
            raise ValueError(f"limit must be >= 0, not {limit}")
        return await self._read_models(
            LogEntry,
            """SELECT data FROM (
                SELECT seq, data FROM agent_logs WHERE agent_id = ? ORDER BY seq DESC LIMIT ?)
            ORDER BY seq""",
            (agent_id, limit),
        )

    # Threads and messages

    async def save_thread(self, thread: Thread) -> None:
        """Insert or replace `thread`."""
        row = (thread.id, sort_key(thread.updated_at), thread.model_dump_json())

        def write(connection: sqlite3.Connection) -> None:
            connection.execute(
                """INSERT INTO threads (id, updated_key, data) VALUES (?, ?, ?)
                ON CONFLICT (id) DO UPDATE SET
                    updated_key = excluded.updated_key, data = excluded.data""",
                row,
            )

        await self._write(write)

    async def list_threads(self) -> list[Thread]:
        """Every thread, the most recently updated first."""
        return await self._read_models(
            Thread, "SELECT data FROM threads ORDER BY updated_key DESC, seq DESC", ()
        )

    async def get_thread(self, thread_id: str) -> Thread | None:
        found = await self._read_models(
            Thread, "SELECT data FROM threads WHERE id = ?", (thread_id,)
        )
        return found[0] if found else None

    async def add_message(self, message: Message) -> None:
        """Insert `message`, or replace the one with its id (a streamed reply saved again
        when complete); a replaced message keeps its place in the thread."""
        row = (
            message.id,
            message.thread_id,
            sort_key(message.created_at),
            message.model_dump_json(),
        )

        def write(connection: sqlite3.Connection) -> None:
            connection.execute(
                """INSERT INTO messages (id, thread_id, created_key, data) VALUES (?, ?, ?, ?)
                ON CONFLICT (id) DO UPDATE SET thread_id = excluded.thread_id,
                    created_key = excluded.created_key, data = excluded.data""",
                row,
            )

        await self._write(write)

    async def list_messages(self, thread_id: str) -> list[Message]:
        """The thread's messages in creation order; equal times keep insertion order."""
        return await self._read_models(
            Message,
            "SELECT data FROM messages WHERE thread_id = ? ORDER BY created_key, seq",
            (thread_id,),
        )

    # Usage totals

    async def add_usage(self, entries: Sequence[tuple[str, str | None, Usage]]) -> None:
        """Add each (UTC day `YYYY-MM-DD`, thread id or None, one call's usage) to the
        day's total for that thread, all in one transaction."""
        rows = [
            (
                day,
                thread_id or "",
                usage.input_tokens,
                usage.output_tokens,
                usage.cached_tokens,
                usage.cost_usd or 0.0,
                int(usage.cost_usd is None),
            )
            for day, thread_id, usage in entries
        ]
        if not rows:
            return

        def write(connection: sqlite3.Connection) -> None:
            connection.executemany(
                """INSERT INTO usage_totals (day, thread_id, input_tokens, output_tokens,
                    cached_tokens, cost_usd, unpriced_calls) VALUES (?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (day, thread_id) DO UPDATE SET
                    input_tokens = input_tokens + excluded.input_tokens,
                    output_tokens = output_tokens + excluded.output_tokens,
                    cached_tokens = cached_tokens + excluded.cached_tokens,
                    cost_usd = cost_usd + excluded.cost_usd,
                    unpriced_calls = unpriced_calls + excluded.unpriced_calls""",
                rows,
            )

        await self._write(write)

    async def load_usage_totals(self, day: str) -> tuple[UsageTotal, dict[str, UsageTotal]]:
        """What `day` used in all, and what each thread used in all its days."""
        columns = """SUM(input_tokens), SUM(output_tokens), SUM(cached_tokens),
            SUM(cost_usd), SUM(unpriced_calls)"""

        def read(connection: sqlite3.Connection) -> tuple[UsageTotal, dict[str, UsageTotal]]:
            (today,) = connection.execute(
                f"SELECT {columns} FROM usage_totals WHERE day = ?", (day,)
            ).fetchall()
            threads = connection.execute(
                f"""SELECT thread_id, {columns} FROM usage_totals
                WHERE thread_id != '' GROUP BY thread_id"""
            ).fetchall()
            return _total(today), {row[0]: _total(row[1:]) for row in threads}

        return await self._run(read)

    # Running work on the connection's thread

    async def _write(self, operation: _Operation[_Result]) -> _Result:
        """Run `operation` in its own IMMEDIATE transaction, committed before returning."""

        def transaction(connection: sqlite3.Connection) -> _Result:
            connection.execute("BEGIN IMMEDIATE")
            try:
                result = operation(connection)
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
            return result

        return await self._run(transaction)

    async def _read_models(
        self, model: type[_Model], query: str, params: Sequence[object]
    ) -> list[_Model]:
        """Rows whose first column is a model's JSON, parsed off the event loop too."""

        def read(connection: sqlite3.Connection) -> list[_Model]:
            rows = connection.execute(query, params).fetchall()
            try:
                return [model.model_validate_json(data) for (data,) in rows]
            except ValidationError as error:
                raise StoreError(
                    f"{self.path}: a stored {model.__name__} no longer validates: {error}"
                ) from error

        return await self._run(read)

    async def _run(self, operation: _Operation[_Result]) -> _Result:
        # Not abandoned on cancellation: a started call runs to its end, so a cancelled
        # caller never leaves a half-done transaction behind.
        return await anyio.to_thread.run_sync(self._run_in_worker, operation, limiter=self._limiter)

    def _run_in_worker(self, operation: _Operation[_Result]) -> _Result:
        connection = self._connection
        if connection is None:
            raise StoreError(f"{self.path}: the store is closed")
        try:
            return operation(connection)
        except sqlite3.Error as error:
            raise StoreError(f"{self.path}: {error}") from error

    def _close_in_worker(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()


def _total(row: Sequence[int | float | None]) -> UsageTotal:
    """A row of sums; SUM over no rows is NULL, which is nothing used."""
    inputs, outputs, cached, cost, unpriced = (value or 0 for value in row)
    return UsageTotal(int(inputs), int(outputs), int(cached), float(cost), int(unpriced))


def _check_log_cap(max_log_entries_per_agent: int) -> None:
    if max_log_entries_per_agent < 1:
        raise ValueError(f"max_log_entries_per_agent must be >= 1, not {max_log_entries_per_agent}")


def _connect(path: Path) -> sqlite3.Connection:
    """Open and migrate the database; blocking, so it runs in a worker thread."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StoreError(f"{path}: cannot create the state directory: {error}") from error
    try:
        # isolation_level=None: no implicit transactions; every write opens its own.
        connection = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False
        )
    except sqlite3.Error as error:
        raise StoreError(f"{path}: cannot open the database: {error}") from error
    try:
        connection.execute("PRAGMA journal_mode = WAL")
        # With WAL, NORMAL loses nothing when the process dies, only on power loss.
        connection.execute("PRAGMA synchronous = NORMAL")
        migrate(connection, path)
    except sqlite3.Error as error:
        connection.close()
        raise StoreError(f"{path}: not a usable Forkyard database: {error}") from error
    except BaseException:
        connection.close()
        raise
    return connection
