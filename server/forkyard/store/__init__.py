"""SQLite persistence of threads, messages, agents and agent logs (see `sqlite.py`)."""

from forkyard.store.errors import StoreError
from forkyard.store.sqlite import (
    DATABASE_NAME,
    DEFAULT_MAX_LOG_ENTRIES_PER_AGENT,
    Store,
)

__all__ = ["DATABASE_NAME", "DEFAULT_MAX_LOG_ENTRIES_PER_AGENT", "Store", "StoreError"]
