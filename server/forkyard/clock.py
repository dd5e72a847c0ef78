"""Times and ids as PROTOCOL.md wants them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime


def now_iso() -> str:
    """ISO 8601 UTC with milliseconds, e.g. 2026-11-25T10:00:00.123Z."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:16]}"
