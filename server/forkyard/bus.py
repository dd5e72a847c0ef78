"""The one event bus: how the domain reports what happened, without knowing who listens.

Events are the closed set of `forkyard_protocol.daemon.Event`, the same objects the daemon
sends its fronts. `publish` never blocks and never fails: each subscriber has its own
memory-object stream and one task that drains it, so a slow consumer delays nobody but
itself. A bounded subscriber that falls too far behind (a front that stopped reading) is
dropped: its stream ends, and it resynchronises when it attaches again.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from forkyard_protocol.daemon import Event

logger = logging.getLogger(__name__)


class EventBus:
    def __init__(self) -> None:
        self._subscribers: list[MemoryObjectSendStream[Event]] = []
        #: Every event published so far: tests wait on this count, never on a sleep.
        self.published = 0

    def publish(self, event: Event) -> None:
        """Hand `event` to every subscriber. Models are copied once, here, so that a
        consumer never sees a later change of the domain's object."""
        event = event.model_copy(deep=True)
        self.published += 1
        for stream in list(self._subscribers):
            try:
                stream.send_nowait(event)
            except anyio.WouldBlock:
                logger.warning("an event subscriber fell behind; it is dropped")
                self._drop(stream)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._drop(stream)

    def _drop(self, stream: MemoryObjectSendStream[Event]) -> None:
        if stream in self._subscribers:
            self._subscribers.remove(stream)
        stream.close()

    def open_subscription(
        self, max_buffer: float = math.inf
    ) -> tuple[MemoryObjectReceiveStream[Event], MemoryObjectSendStream[Event]]:
        """A new subscription: events published from now on arrive on the receive
        stream. Close it with `close_subscription` (or use `subscribe`)."""
        send, receive = anyio.create_memory_object_stream[Event](max_buffer)
        self._subscribers.append(send)
        return receive, send

    def close_subscription(self, send: MemoryObjectSendStream[Event]) -> None:
        self._drop(send)

    @contextmanager
    def subscribe(self, max_buffer: float = math.inf) -> Iterator[MemoryObjectReceiveStream[Event]]:
        receive, send = self.open_subscription(max_buffer)
        try:
            yield receive
        finally:
            self._drop(send)
            receive.close()

    def close(self) -> None:
        """Ends every subscription: each consumer's loop finishes."""
        for stream in list(self._subscribers):
            self._drop(stream)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)
