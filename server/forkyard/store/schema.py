"""The database schema and its migrations.

The schema version lives in `PRAGMA user_version`. Migration `n` (1-based) takes a
database at version `n - 1` to version `n`; a fresh file starts at 0 and runs them all.
To change the schema, append a migration; never edit one that has shipped, because
existing databases have already run it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from forkyard.store.errors import StoreError

Migration = Callable[[sqlite3.Connection], None]


def _create_initial_schema(connection: sqlite3.Connection) -> None:
    # Objects are stored whole as JSON in `data`, so a field added to a protocol model
    # needs no migration; the other columns exist only to filter and order rows.
    # `*_key` columns hold timestamps normalised to one UTC format so that they sort.
    # `seq` (the rowid) records insertion order, the tie-break the API promises.
    statements = [
        """CREATE TABLE agents (
            id TEXT PRIMARY KEY,
            repo TEXT NOT NULL,
            number INTEGER NOT NULL,
            state TEXT NOT NULL,
            created_key TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            data TEXT NOT NULL
        )""",
        "CREATE INDEX agents_by_repo_number ON agents (repo, number)",
        "CREATE INDEX agents_by_created ON agents (created_key)",
        """CREATE TABLE agent_numbers (
            repo TEXT PRIMARY KEY,
            last_number INTEGER NOT NULL
        )""",
        """CREATE TABLE agent_logs (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            agent_id TEXT NOT NULL,
            data TEXT NOT NULL
        )""",
        "CREATE INDEX agent_logs_by_agent ON agent_logs (agent_id, seq)",
        """CREATE TABLE agent_log_counts (
            agent_id TEXT PRIMARY KEY,
            entries INTEGER NOT NULL
        )""",
        """CREATE TABLE threads (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            updated_key TEXT NOT NULL,
            data TEXT NOT NULL
        )""",
        "CREATE INDEX threads_by_updated ON threads (updated_key)",
        """CREATE TABLE messages (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            thread_id TEXT NOT NULL,
            created_key TEXT NOT NULL,
            data TEXT NOT NULL
        )""",
        "CREATE INDEX messages_by_thread ON messages (thread_id, created_key, seq)",
    ]
    for statement in statements:
        connection.execute(statement)


def _add_usage_totals(connection: sqlite3.Connection) -> None:
    # What the model calls of a UTC day (`YYYY-MM-DD`) cost in one thread ('' for calls
    # of no thread), summed as they happen, so a daily or thread budget survives a
    # restart. `cost_usd` sums the calls whose price is known; `unpriced_calls` counts
    # the others, whose dollars nobody knows.
    connection.execute(
        """CREATE TABLE usage_totals (
            day TEXT NOT NULL,
            thread_id TEXT NOT NULL,
            input_tokens INTEGER NOT NULL,
            output_tokens INTEGER NOT NULL,
            cached_tokens INTEGER NOT NULL,
            cost_usd REAL NOT NULL,
            unpriced_calls INTEGER NOT NULL,
            PRIMARY KEY (day, thread_id)
        )"""
    )
    connection.execute("CREATE INDEX usage_totals_by_thread ON usage_totals (thread_id)")


#: Index i holds the migration from version i to version i + 1.
MIGRATIONS: tuple[Migration, ...] = (_create_initial_schema, _add_usage_totals)
SCHEMA_VERSION = len(MIGRATIONS)


def _refuse_newer_schema(version: int, path: Path) -> None:
    """Refuse rather than guess: an older server writing rows a newer schema expects
    could corrupt the user's data for the newer one."""
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path}: schema version {version} was written by a newer Forkyard "
            f"(this one understands up to {SCHEMA_VERSION})"
        )


def migrate(connection: sqlite3.Connection, path: Path) -> None:
    """Bring the database up to `SCHEMA_VERSION`, all in one transaction.

    The version is read inside an IMMEDIATE transaction, so two processes opening the
    same fresh file at once cannot both run a migration: the second waits, then finds
    the work done.
    """
    connection.execute("BEGIN IMMEDIATE")
    try:
        (version,) = connection.execute("PRAGMA user_version").fetchone()
        _refuse_newer_schema(version, path)
        for migration in MIGRATIONS[version:]:
            migration(connection)
        if version != SCHEMA_VERSION:
            # PRAGMA takes no parameters; SCHEMA_VERSION is our own integer.
            connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
