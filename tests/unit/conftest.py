"""The domain's tests run under a guard against blocking calls on the event loop.

Forkyard's promise is that the chat answers while agents churn, which holds only if no
domain code blocks the loop (file I/O, `time.sleep`, sockets, waiting on a process). The
guard (blockbuster, as anyio's own test suite uses) raises `BlockingError` when such a
call is made on the loop's thread while one of Forkyard's coroutines is on the stack:
async domain code that blocks, directly or through a helper. Worker threads are free to
block, and so is a test that calls a helper documented as blocking ("call it from a
worker thread") to check something: that is the test's own time.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from blockbuster import BlockBuster

import forkyard
import forkyard_protocol

_DOMAIN = tuple(str(Path(module.__file__).parent) for module in (forkyard, forkyard_protocol))
_TESTS = str(Path(__file__).resolve().parents[1])
_ASYNC = inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR | inspect.CO_ITERABLE_COROUTINE
#: Calls that read no file: `abspath` only asks for the working directory.
ALLOWED = ("os.path.abspath",)


def _test_made_the_call(*_args: Any, **_kwargs: Any) -> bool:
    """Whether the blocking call comes from a test (or a test's fake) rather than from a
    coroutine of the domain: the first coroutine or test frame up the stack decides."""
    frame: FrameType | None = inspect.currentframe()
    while frame is not None:
        filename = frame.f_code.co_filename
        if filename != __file__:  # the guard's own frames decide nothing
            if filename.startswith(_TESTS):
                return True
            if filename.startswith(_DOMAIN) and frame.f_code.co_flags & _ASYNC:
                return False
        frame = frame.f_back
    return True


def _either(own: Callable[..., bool]) -> Callable[..., bool]:
    """blockbuster's own exceptions for a function (a lock taken without waiting), or
    ours."""

    def can_block(*args: Any, **kwargs: Any) -> bool:
        return own(*args, **kwargs) or _test_made_the_call()

    return can_block


@pytest.fixture(autouse=True)
def blocking_guard(request: pytest.FixtureRequest) -> Iterator[BlockBuster | None]:
    if request.node.get_closest_marker("without_blocking_guard"):
        yield None
        return
    guard = BlockBuster(["forkyard", "forkyard_protocol"])
    for function in guard.functions.values():
        function.can_block_predicate = _either(function.can_block_predicate)
    guard.activate()
    for name in ALLOWED:
        guard.functions[name].deactivate()
    try:
        yield guard
    finally:
        guard.deactivate()


@pytest.fixture
async def working_bwrap() -> None:
    """Skip only where bwrap is not installed; an installed bwrap that cannot run is a
    failure, since the server would then refuse to run commands."""
    from forkyard.tools.sandbox import probe_sandbox, sandbox_available

    available, reason = sandbox_available()
    if not available and "not installed" in reason:
        pytest.skip(reason)
    status = await probe_sandbox()
    assert status.available, f"bwrap is installed but cannot run here: {status.reason}"
    assert sandbox_available() == (True, status.reason), "the probe's answer is remembered"
