"""How the orchestrator contains failures: an agent whose run or finishing raises ends
`failed` with the cause, and the orchestrator's own loops (the log flusher, the worktree
pool, gc) come back after a failure instead of silently stopping. Cancellation always
propagates: it is how the server stops."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio

logger = logging.getLogger(__name__)

#: A loop that failed starts again after this long, doubling up to the maximum.
RESTART_SECONDS = 1.0
MAX_RESTART_SECONDS = 300.0
#: What an agent's error quotes of an exception's text at most.
MAX_CAUSE_CHARS = 300


def leaf(exc: BaseException) -> BaseException:
    """The first real exception inside task-group wrapping (ExceptionGroup)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def cause_of(exc: BaseException) -> str:
    """One line naming what went wrong: `Type: message` of the innermost failure."""
    inner = leaf(exc)
    text = " ".join(str(inner).split())
    if len(text) > MAX_CAUSE_CHARS:
        text = text[: MAX_CAUSE_CHARS - 1] + "…"
    return f"{type(inner).__name__}: {text}" if text else type(inner).__name__


Notify = Callable[[str], None]


async def keep_running(
    func: Callable[[], Awaitable[object]], what: str, notify: Notify | None = None
) -> None:
    """Run `func` (a loop that should run until cancelled) and start it again after a
    failure, later each time; the user is told the first time only."""
    delay = RESTART_SECONDS
    told = False
    while True:
        try:
            await func()
        except Exception:
            logger.exception("%s failed; starting it again in %.0f s", what, delay)
            if notify is not None and not told:
                told = True
                # Short: editors show a notice wider than a line as a prompt.
                notify(f"Forkyard: {what} failed; restarting (see the log)")
        else:
            return
        await anyio.sleep(delay)
        delay = min(delay * 2, MAX_RESTART_SECONDS)
