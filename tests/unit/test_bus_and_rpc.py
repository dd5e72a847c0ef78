"""The two pipes every event and every request goes through.

The bus (`forkyard.bus.EventBus`): every editor sees every event, in order, and a front
that stops reading can neither hold up the domain (publish never waits) nor grow the
daemon's memory (it is dropped and resyncs on its next attach). Events are snapshots: an
editor must never see a later change of the domain's object.

The daemon's framing (`forkyard.daemon.rpc.Peer`), over a real Unix socket pair: errors
keep their class across the process boundary (an editor shows the domain's message and
code), a broken message is answered without ending the connection, an oversized one ends
it, and a caller waiting on a peer that goes away is told so instead of hanging.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from anyio.abc import UNIXSocketStream
from anyio.streams.buffered import BufferedByteReceiveStream
from anyio.streams.memory import MemoryObjectReceiveStream

from forkyard.bus import EventBus
from forkyard.daemon import rpc
from forkyard.daemon.rpc import ConnectionClosed, Peer
from forkyard.errors import InvalidRequest, WrongState
from forkyard_protocol.daemon import AgentChanged, Event, Notice
from forkyard_protocol.models import Agent

pytestmark = pytest.mark.timeout(30)


def notice(n: int) -> Notice:
    return Notice(level="info", text=f"event {n}")


def texts(events: list[Event]) -> list[str]:
    return [event.text for event in events if isinstance(event, Notice)]


async def drain(stream: MemoryObjectReceiveStream[Event]) -> list[Event]:
    """Everything until the stream ends (the bus closed or dropped it)."""
    received: list[Event] = []
    with anyio.fail_after(5):
        async with stream:
            async for event in stream:
                received.append(event)
    return received


# --- the bus -------------------------------------------------------------------------------


async def test_every_subscriber_gets_every_event_in_order() -> None:
    bus = EventBus()
    first, _ = bus.open_subscription()
    second, _ = bus.open_subscription(max_buffer=100)
    for n in range(20):
        bus.publish(notice(n))
    bus.close()
    expected = [f"event {n}" for n in range(20)]
    assert texts(await drain(first)) == expected
    assert texts(await drain(second)) == expected
    assert bus.published == 20


async def test_publish_never_waits_for_a_subscriber() -> None:
    """A thousand events published without the consumer running once: publish queued
    them and returned; the consumer then gets them all."""
    bus = EventBus()
    received: list[Event] = []
    ready = anyio.Event()
    done = anyio.Event()

    async def consume() -> None:
        with bus.subscribe() as events:
            ready.set()
            async for event in events:
                received.append(event)
                if len(received) == 1000:
                    done.set()

    async with anyio.create_task_group() as group:
        group.start_soon(consume)
        await ready.wait()
        stalled, _ = bus.open_subscription(max_buffer=0)  # nobody ever reads it
        for n in range(1000):
            bus.publish(notice(n))  # no checkpoint in between: nothing else ran
        assert received == [], "the consumer has not run yet: publish did not wait for it"
        with anyio.fail_after(5):
            await done.wait()
        group.cancel_scope.cancel()
    assert texts(received) == [f"event {n}" for n in range(1000)]
    stalled.close()


async def test_a_subscriber_that_falls_behind_is_dropped_and_the_others_go_on() -> None:
    bus = EventBus()
    slow, _ = bus.open_subscription(max_buffer=3)
    fast, _ = bus.open_subscription()
    assert bus.subscriber_count == 2
    for n in range(5):
        bus.publish(notice(n))
    assert bus.subscriber_count == 1, "the slow one was dropped when its buffer was full"
    # Its stream ends after what it had buffered: the front sees its connection's end.
    assert texts(await drain(slow)) == ["event 0", "event 1", "event 2"]
    bus.publish(notice(5))
    bus.close()
    assert texts(await drain(fast)) == [f"event {n}" for n in range(6)]


async def test_events_are_copies_of_what_was_published() -> None:
    bus = EventBus()
    agent = Agent(
        id="agent-1",
        number=1,
        title="original",
        task="t",
        role="worker",
        backend="fake",
        state="running",
        base_ref="0" * 40,
        created_at="2026-01-01T00:00:00Z",
        updated_at="2026-01-01T00:00:00Z",
    )
    event = AgentChanged(agent=agent, previous_state="starting")
    with bus.subscribe() as events:
        bus.publish(event)
        agent.state = "done"
        agent.title = "changed later"
        event.previous_state = "queued"
        with anyio.fail_after(5):
            received = await events.receive()
    assert isinstance(received, AgentChanged)
    assert received.agent.state == "running"
    assert received.agent.title == "original"
    assert received.previous_state == "starting"


# --- the JSON-RPC peer ---------------------------------------------------------------------


@asynccontextmanager
async def socket_pair() -> AsyncIterator[tuple[UNIXSocketStream, UNIXSocketStream]]:
    left_socket, right_socket = socket.socketpair()
    left = await UNIXSocketStream.from_socket(left_socket)
    right = await UNIXSocketStream.from_socket(right_socket)
    try:
        yield left, right
    finally:
        await left.aclose()
        await right.aclose()


async def serve(peer: Peer) -> None:
    """What the daemon does with each connection: run the peer, then close it."""
    try:
        async with anyio.create_task_group() as group:
            await peer.run(group)
            group.cancel_scope.cancel()
    finally:
        await peer.aclose()


def serve_in(group: anyio.abc.TaskGroup, peer: Peer) -> anyio.Event:
    """Serve `peer` in `group`; the event is set once its connection has ended."""
    served = anyio.Event()

    async def serve_then_tell() -> None:
        await serve(peer)
        served.set()

    group.start_soon(serve_then_tell)
    return served


class Handlers:
    """The daemon side's methods: `echo`, `wrong` (WrongState), `wait` (until released)."""

    def __init__(self) -> None:
        self.waiting = anyio.Event()
        self.release = anyio.Event()

    async def __call__(self, method: str, params: Any) -> Any:
        if method == "echo":
            return {"echo": params}
        if method == "wrong":
            raise WrongState("agent #3 is running, not done")
        if method == "invalid":
            raise InvalidRequest("agentId: no agent with id or number '99'")
        if method == "wait":
            self.waiting.set()
            await self.release.wait()
            return "released"
        raise AssertionError(f"unexpected method {method}")


async def read_message(reader: BufferedByteReceiveStream) -> dict[str, Any]:
    with anyio.fail_after(5):
        message: dict[str, Any] = json.loads(await reader.receive_until(b"\n", 1 << 20))
    return message


async def test_requests_get_their_results_side_by_side() -> None:
    handlers = Handlers()
    async with socket_pair() as (daemon_end, front_end), anyio.create_task_group() as group:
        group.start_soon(serve, Peer(daemon_end, handlers, name="front"))
        client = Peer(front_end, name="daemon")
        group.start_soon(client.run, group)
        with anyio.fail_after(5):
            assert await client.request("echo", {"x": [1, "é"]}) == {"echo": {"x": [1, "é"]}}
            async with anyio.create_task_group() as calls:
                slow: list[Any] = []

                async def wait() -> None:
                    slow.append(await client.request("wait"))

                calls.start_soon(wait)
                await handlers.waiting.wait()
                # A slow request does not hold up the next one.
                assert await client.request("echo", 2) == {"echo": 2}
                assert slow == []
                handlers.release.set()
            assert slow == ["released"]
        group.cancel_scope.cancel()


async def test_a_domain_error_crosses_the_connection_with_its_class_and_code() -> None:
    async with socket_pair() as (daemon_end, front_end), anyio.create_task_group() as group:
        group.start_soon(serve, Peer(daemon_end, Handlers(), name="front"))
        client = Peer(front_end, name="daemon")
        group.start_soon(client.run, group)
        with anyio.fail_after(5):
            with pytest.raises(WrongState, match="agent #3 is running, not done") as wrong:
                await client.request("wrong")
            assert wrong.value.code == -32803
            with pytest.raises(InvalidRequest, match="no agent with id") as invalid:
                await client.request("invalid")
            assert invalid.value.code == -32602
            assert await client.request("echo", 1) == {"echo": 1}, "the connection goes on"
        group.cancel_scope.cancel()


async def test_garbage_is_answered_and_the_connection_goes_on() -> None:
    async with socket_pair() as (daemon_end, front_end), anyio.create_task_group() as group:
        group.start_soon(serve, Peer(daemon_end, Handlers(), name="front"))
        reader = BufferedByteReceiveStream(front_end)
        await front_end.send(b"\x00\xffthis is not json{\n")
        answer = await read_message(reader)
        assert answer["id"] is None
        assert answer["error"]["code"] == -32700
        await front_end.send(b"[1, 2, 3]\n")
        assert (await read_message(reader))["error"]["code"] == -32600
        await front_end.send(b'{"jsonrpc": "2.0", "id": 7, "method": "wrong"}\n')
        wrong = await read_message(reader)
        assert wrong["id"] == 7
        assert wrong["error"] == {"code": -32803, "message": "agent #3 is running, not done"}
        await front_end.send(b'{"jsonrpc": "2.0", "id": 8, "method": "echo", "params": 5}\n')
        assert await read_message(reader) == {"jsonrpc": "2.0", "id": 8, "result": {"echo": 5}}
        group.cancel_scope.cancel()


async def test_a_line_over_the_limit_closes_the_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(rpc, "MAX_LINE_BYTES", 1024)
    async with socket_pair() as (daemon_end, front_end), anyio.create_task_group() as group:
        server = Peer(daemon_end, Handlers(), name="front")
        served = serve_in(group, server)
        client = Peer(front_end, name="daemon")
        group.start_soon(client.run, group)
        with anyio.fail_after(5):
            assert await client.request("echo", "short") == {"echo": "short"}
            with pytest.raises(ConnectionClosed):
                await client.request("echo", "x" * 1_000_000)
            await served.wait()
        assert server.closed.is_set()
        assert client.closed.is_set()
        group.cancel_scope.cancel()


async def test_a_line_over_the_limit_arriving_in_one_read_closes_the_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(rpc, "MAX_LINE_BYTES", 64)
    async with socket_pair() as (daemon_end, front_end), anyio.create_task_group() as group:
        server = Peer(daemon_end, Handlers(), name="front")
        group.start_soon(serve, server)
        reader = BufferedByteReceiveStream(front_end)
        line = {"jsonrpc": "2.0", "id": 1, "method": "echo", "params": "y" * 200}
        await front_end.send(json.dumps(line).encode() + b"\n")  # 250 bytes, one send
        with anyio.fail_after(5):
            with pytest.raises((anyio.EndOfStream, anyio.IncompleteRead)):
                await reader.receive_until(b"\n", 1 << 20)
        group.cancel_scope.cancel()


async def test_a_request_pending_when_the_peer_closes_raises_connection_closed() -> None:
    handlers = Handlers()
    async with socket_pair() as (daemon_end, front_end), anyio.create_task_group() as group:
        server = Peer(daemon_end, handlers, name="front")
        group.start_soon(serve, server)
        client = Peer(front_end, name="daemon")
        group.start_soon(client.run, group)
        outcome: list[BaseException] = []
        answered = anyio.Event()

        async def pending() -> None:
            try:
                await client.request("wait")
            except ConnectionClosed as exc:
                outcome.append(exc)
            answered.set()

        group.start_soon(pending)
        with anyio.fail_after(5):
            await handlers.waiting.wait()
            await server.aclose()  # the daemon goes away with the request unanswered
            await answered.wait()
        assert len(outcome) == 1
        assert "before answering wait" in str(outcome[0])
        with pytest.raises(ConnectionClosed, match="not connected"):
            await client.request("echo", 1)
        group.cancel_scope.cancel()


async def test_a_peer_that_stops_reading_is_disconnected_not_waited_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The daemon queues events for a front; a front that stops reading fills the queue,
    and then its connection ends (it resynchronises when it attaches again) instead of
    the daemon holding ever more memory for it."""
    monkeypatch.setattr(rpc, "MAX_QUEUED", 4)
    monkeypatch.setattr(rpc, "DRAIN_SECONDS", 0.2)
    async with socket_pair() as (daemon_end, front_end), anyio.create_task_group() as group:
        server = Peer(daemon_end, Handlers(), name="front")
        served = serve_in(group, server)
        with anyio.fail_after(5):
            # The front never reads: the socket buffer fills, then the queue.
            while not server.closed.is_set():
                server.notify("daemon/event", {"event": "x" * 65536})
                await anyio.lowlevel.checkpoint()
            await served.wait()
        # What was written reaches the front, then the end of the connection.
        received = b""
        with anyio.fail_after(5):
            async for chunk in front_end:
                received += chunk
        assert received.startswith(b'{"jsonrpc"')
