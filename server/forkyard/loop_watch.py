"""How late the event loop wakes a sleeping task: the largest stall is the longest any
request could have waited behind blocking work (`forkyard/server/stats`)."""

from __future__ import annotations

import time

import anyio


class LoopWatch:
    """Measures how late the event loop wakes a sleeping task: the largest stall is the
    longest any request could have waited behind blocking work."""

    TICK_SECONDS = 0.01

    def __init__(self) -> None:
        self.max_stall = 0.0
        self.started = time.monotonic()

    async def run(self) -> None:
        while True:
            before = time.perf_counter()
            await anyio.sleep(self.TICK_SECONDS)
            stall = time.perf_counter() - before - self.TICK_SECONDS
            self.max_stall = max(self.max_stall, stall)
