"""What the model calls cost per UTC day and per thread, and the budgets on those sums.

A person's money is spent by many agents and the chat at once, across repositories when
the daemon serves several: an agent's own budget cannot stop a day that costs too much
in all. The ledger sums every metered call (one ledger per store) and keeps the sums in
the store, so a restarted daemon still knows today's spending.

Adding happens on the event loop and never waits: the sum in memory grows at once, the
store's row later, on its worker. Reading is a lock and a dict lookup, so the model
gateway asks it from its own thread before each call of an external agent program.

Dollars of calls whose price is unknown are not guessed: they add nothing to the sums a
budget compares. What is known to be spent is then at most what was spent, so a budget
reached on it is reached for certain.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime

import anyio
from anyio.abc import TaskGroup

from forkyard.agents.budget import BUDGET_REACHED
from forkyard.settings import BudgetSettings
from forkyard.store import Store, StoreError
from forkyard.store.sqlite import UsageTotal
from forkyard_protocol.models import Usage

logger = logging.getLogger(__name__)


def utc_today() -> str:
    """The UTC day a call is counted in, as `YYYY-MM-DD`."""
    return datetime.now(UTC).date().isoformat()


class UsageLedger:
    """Usage summed per UTC day and per thread; `start` before the first read counts."""

    def __init__(self, store: Store, today: Callable[[], str] = utc_today) -> None:
        self._store = store
        self._today = today
        #: Guards the sums and the pending rows: the gateway's thread reads the sums.
        self._lock = threading.Lock()
        self._day = today()
        self._day_total = UsageTotal()
        self._threads: dict[str, UsageTotal] = {}
        self._pending: list[tuple[str, str | None, Usage]] = []
        self._loading = anyio.Lock()
        self._writing = anyio.Lock()
        self._task_group: TaskGroup | None = None
        self._flush_scheduled = False

    async def start(self, task_group: TaskGroup) -> None:
        """Load today's and every thread's sums from the store, once however many
        sessions share the ledger; later writes run in `task_group`."""
        async with self._loading:
            if self._task_group is not None:
                return
            day = self._today()
            total, threads = await self._store.load_usage_totals(day)
            with self._lock:
                # Calls added before loading are not in the store yet: kept on top.
                if self._day == day:
                    total = _sum(total, self._day_total)
                self._day, self._day_total = day, total
                for thread_id, spent in threads.items():
                    self._threads[thread_id] = _sum(spent, self._threads.get(thread_id))
                pending = bool(self._pending)
            self._task_group = task_group
        if pending:
            self._schedule_flush()

    def add(self, thread_id: str | None, usage: Usage) -> None:
        """One metered call, of `thread_id` (None: of no thread, counted in the day's)."""
        day = self._today()
        with self._lock:
            if day != self._day:
                self._day, self._day_total = day, UsageTotal()
            self._day_total = self._day_total.plus(usage)
            if thread_id is not None:
                self._threads[thread_id] = self._threads.get(thread_id, UsageTotal()).plus(usage)
            self._pending.append((day, thread_id, usage))
        self._schedule_flush()

    def day_total(self) -> UsageTotal:
        """What today (UTC) used so far, in every repository of the store."""
        with self._lock:
            return self._day_total if self._day == self._today() else UsageTotal()

    def thread_total(self, thread_id: str) -> UsageTotal:
        """What the chat and the agents of the thread used, on every day."""
        with self._lock:
            return self._threads.get(thread_id, UsageTotal())

    def refusal(self, thread_id: str | None, limits: BudgetSettings) -> str | None:
        """Why no further model call may start: the error of a reached daily or thread
        budget, else None. Reached at the limit, as an agent's own budget is."""
        if limits.daily_usd is not None:
            spent = self.day_total().cost_usd
            if spent >= limits.daily_usd:
                return f"{BUDGET_REACHED} (today: ${spent:.4f} of ${limits.daily_usd:.4f})"
        if limits.thread_usd is not None and thread_id is not None:
            spent = self.thread_total(thread_id).cost_usd
            if spent >= limits.thread_usd:
                return f"{BUDGET_REACHED} (this thread: ${spent:.4f} of ${limits.thread_usd:.4f})"
        return None

    def check(
        self, thread_id: str | None, limits: Callable[[], BudgetSettings]
    ) -> Callable[[], str | None]:
        """`refusal` as a check to run before each call, reading the limits each time
        (a settings reload applies to the calls after it)."""
        return lambda: self.refusal(thread_id, limits())

    async def flush(self) -> None:
        """Write the calls added so far to the store; the shutdown's last word."""
        async with self._writing:
            # Shielded: the rows taken from memory reach the store, cancelled or not.
            with anyio.CancelScope(shield=True):
                self._flush_scheduled = False
                with self._lock:
                    batch, self._pending = self._pending, []
                if not batch:
                    return
                try:
                    await self._store.add_usage(batch)
                except StoreError:
                    # The sums in memory still hold them: budgets keep working until
                    # a restart, which would forget these calls.
                    logger.exception("could not save the usage of %d model call(s)", len(batch))

    def _schedule_flush(self) -> None:
        if self._task_group is not None and not self._flush_scheduled:
            self._flush_scheduled = True
            self._task_group.start_soon(self.flush, name="saving usage totals")


def _sum(total: UsageTotal, more: UsageTotal | None) -> UsageTotal:
    if more is None:
        return total
    return UsageTotal(
        total.input_tokens + more.input_tokens,
        total.output_tokens + more.output_tokens,
        total.cached_tokens + more.cached_tokens,
        total.cost_usd + more.cost_usd,
        total.unpriced_calls + more.unpriced_calls,
    )
