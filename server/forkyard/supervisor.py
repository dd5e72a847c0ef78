"""The supervisor task group, wrapped so that no background task can end it.

Every background task of the server (agent runs, progress reporters, the log flusher,
the worktree pool, gc, chat turns, review notices) is started through this one object.
A task that raises is logged and reported once to the user, and the group keeps running:
anyio would otherwise cancel every sibling (every other agent) and end the server.
Cancellation, and anything that is not an `Exception`, still propagates."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from contextvars import Context
from types import TracebackType
from typing import Any, Literal, TypeVar

from anyio import CancelScope, TaskHandle
from anyio.abc import TaskGroup

from forkyard.errors import ForkyardError
from forkyard.notices import MAX_NOTICE_CHARS

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: What the user is shown at most: one line that, with " (see the log)", fits beside the
#: prefix stock Neovim adds, as every notice does (`notices.py`).
MAX_REPORT_CHARS = MAX_NOTICE_CHARS - len(" (see the log)")
#: The same failure is told to the user at most once in this many seconds.
REPORT_QUIET_SECONDS = 60.0

Reporter = Callable[[str], None]

_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)


def secret_values(environ: Mapping[str, str]) -> list[str]:
    """Values of the environment that look like secrets (by their variable's name):
    they must never reach a log line or a message, whatever an exception says."""
    return sorted(
        {v for k, v in environ.items() if _SECRET_NAME.search(k) and len(v) >= 6},
        key=len,
        reverse=True,
    )


def redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def one_line(text: str, limit: int) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def describe_failure(exc: BaseException) -> str:
    """`Type: message` of the first real failure in `exc` (groups are opened)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc)
    if isinstance(exc, ForkyardError) and text:
        return text  # written for the user already
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def split_failure(
    exc: BaseException,
) -> tuple[Exception | None, BaseException | None]:
    """The part of `exc` that is a failure (`Exception`s), and the rest (cancellation,
    KeyboardInterrupt, SystemExit), which must propagate."""
    if isinstance(exc, BaseExceptionGroup):
        failures, rest = exc.split(Exception)
        return failures, rest
    if isinstance(exc, Exception):
        return exc, None
    return None, exc


class Supervisor(TaskGroup):
    """A `TaskGroup` (so the orchestrator and the conversation can take it as one) whose
    tasks' failures are contained: logged with their task's name, the user told."""

    def __init__(
        self,
        inner: TaskGroup,
        report: Reporter | None = None,
        secrets: Callable[[], Iterable[str]] = list,
    ) -> None:
        self._inner = inner
        self.cancel_scope: CancelScope = inner.cancel_scope
        #: Tells the user; replaced once the connection is up.
        self.report = report
        self._secrets = secrets
        self._last_reported: dict[str, float] = {}
        #: Failures contained so far (for tests and stats).
        self.failures = 0

    def create_task(
        self,
        coro: Coroutine[Any, Any, T],
        *,
        name: object = None,
        context: Context | None = None,
    ) -> TaskHandle[T]:
        label = str(name) if name is not None else getattr(coro, "__qualname__", "a task")
        return self._inner.create_task(self._guard(coro, label), name=name, context=context)

    async def _guard(self, coro: Coroutine[Any, Any, T], label: str) -> Any:
        try:
            return await coro
        except BaseException as exc:
            failure, rest = split_failure(exc)
            if failure is not None:
                self.contain(label, failure)
            if rest is not None:
                raise rest from None
            return None

    def contain(self, label: str, failure: BaseException) -> None:
        """Log `failure` of the task `label` and tell the user once, in one short line."""
        self.failures += 1
        secrets = list(self._secrets())
        cause = redact(describe_failure(failure), secrets)
        # The traceback names code, not values: safe to log; the message is redacted.
        logger.error(
            "background task %r failed: %s",
            label,
            one_line(cause, 2000),
            exc_info=(type(failure), failure, failure.__traceback__),
        )
        if self.report is None:
            return
        text = one_line(f"Forkyard: {label} failed: {cause}", MAX_REPORT_CHARS)
        now = time.monotonic()
        if now - self._last_reported.get(text, -REPORT_QUIET_SECONDS) < REPORT_QUIET_SECONDS:
            return
        self._last_reported[text] = now
        try:
            self.report(f"{text} (see the log)")
        except Exception:
            logger.exception("could not report a failed background task")

    async def start(
        self,
        func: Callable[..., Coroutine[Any, Any, Any]],
        *args: object,
        name: object = None,
        return_handle: Literal[False, True] = False,
    ) -> Any:
        label = str(name) if name is not None else getattr(func, "__qualname__", "a task")

        async def guarded(*inner_args: Any, **kwargs: Any) -> Any:
            return await self._guard(func(*inner_args, **kwargs), label)

        return await self._inner.start(guarded, *args, name=name, return_handle=return_handle)

    async def __aenter__(self) -> Supervisor:
        raise RuntimeError("the supervisor wraps a task group that is already open")

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> bool:
        return False
