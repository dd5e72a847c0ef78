"""The blocking-call guard of the unit tests (conftest.py) catches what it is for: a
coroutine of the domain that blocks the loop; and lets a test's own checks block."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from blockbuster import BlockingError

import forkyard

DOMAIN_FILE = str(Path(forkyard.__file__).parent / "a_module_that_blocks.py")
SOURCE = """
import time

async def sleeps_on_the_loop():
    time.sleep(0.001)

def sleeps_when_called():
    time.sleep(0.001)
"""


def domain_functions() -> dict[str, Any]:
    """Functions whose code says it lives in `forkyard/`, as the guard sees frames."""
    namespace: dict[str, Any] = {}
    exec(compile(SOURCE, DOMAIN_FILE, "exec"), namespace)
    return namespace


async def test_a_domain_coroutine_that_blocks_fails() -> None:
    with pytest.raises(BlockingError):
        await domain_functions()["sleeps_on_the_loop"]()


async def test_a_test_calling_a_blocking_helper_itself_may() -> None:
    domain_functions()["sleeps_when_called"]()
    time.sleep(0.001)  # noqa: ASYNC251  # the point: a test's own blocking is allowed
