"""The gateway's HTTP/1.1 server side (h11): requests read whole and bounded, answers
sent as they come, and a client that hangs up noticed at once.

Nothing here knows of grants or models: `serve_connection` hands each request to a
handler, which answers it through its `Exchange`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
import anyio.abc
import h11

from forkyard.gateway.apis import error_body

#: Bounds on what a client may send.
MAX_REQUEST_BYTES = 32 * 1024 * 1024
MAX_HEADER_BYTES = 64 * 1024


class ClientGone(Exception):
    """The agent's side of the connection closed."""


@dataclass
class Exchange:
    """One request on a connection, and how to answer it."""

    connection: h11.Connection
    stream: anyio.abc.ByteStream
    method: str
    target: str
    headers: dict[str, str]
    body: bytes

    async def send(self, event: h11.Event) -> None:
        data = self.connection.send(event)
        if data:
            try:
                await self.stream.send(data)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as error:
                raise ClientGone from error

    async def answer(self, status: int, body: bytes, content_type: str) -> None:
        headers = [("content-type", content_type), ("content-length", str(len(body)))]
        await self.send(h11.Response(status_code=status, headers=headers))
        if self.method != "HEAD":  # a HEAD answer has the headers of a body, not the body
            await self.send(h11.Data(data=body))
        await self.send(h11.EndOfMessage())

    async def error(
        self, anthropic: bool, status: int, message: str, code: str | None = None
    ) -> None:
        await self.answer(status, error_body(anthropic, status, message, code), "application/json")


Handler = Callable[[Exchange], Awaitable[None]]


async def serve_connection(stream: anyio.abc.ByteStream, handle: Handler) -> None:
    """Requests on one connection, kept alive between them as HTTP/1.1 allows.

    One task reads the socket for the connection's whole life and hands the bytes over:
    it notices at once when the client hangs up (a cancelled agent's program), even
    mid-exchange, and the exchange (its upstream call with it) is dropped."""
    connection = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
    incoming = _Incoming()
    async with stream, anyio.create_task_group() as group:
        group.start_soon(incoming.pump, stream)
        try:
            await _exchanges(connection, stream, incoming, handle)
        finally:
            group.cancel_scope.cancel()
            incoming.close()


async def _exchanges(
    connection: h11.Connection,
    stream: anyio.abc.ByteStream,
    incoming: _Incoming,
    handle: Handler,
) -> None:
    while True:
        try:
            exchange = await _read_request(connection, stream, incoming)
        except h11.RemoteProtocolError as problem:
            await _refuse_malformed(connection, stream, problem)
            return
        if exchange is None:
            return
        with anyio.CancelScope() as scope:
            incoming.on_hang_up = scope.cancel
            try:
                await handle(exchange)
            except ClientGone:
                return
            finally:
                incoming.on_hang_up = None
        if scope.cancelled_caught or incoming.closed:
            return
        if connection.our_state is not h11.DONE or connection.their_state is not h11.DONE:
            return
        connection.start_next_cycle()


class _Incoming:
    """The bytes a client sends, read by one task for the connection's whole life."""

    def __init__(self) -> None:
        self.sender, self.receiver = anyio.create_memory_object_stream[bytes](16)
        self.closed = False
        #: Called when the client hangs up: cancels the exchange under way.
        self.on_hang_up: Callable[[], None] | None = None

    async def pump(self, stream: anyio.abc.ByteStream) -> None:
        try:
            while True:
                await self.sender.send(await stream.receive(65536))
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        self.closed = True
        self.sender.close()
        if self.on_hang_up is not None:
            self.on_hang_up()

    def close(self) -> None:
        self.sender.close()
        self.receiver.close()

    async def receive(self) -> bytes:
        """The next bytes; b"" once the client closed its side."""
        try:
            return await self.receiver.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            return b""


async def _read_request(
    connection: h11.Connection, stream: anyio.abc.ByteStream, incoming: _Incoming
) -> Exchange | None:
    """The next whole request on the connection, None when the client closed it."""
    request: h11.Request | None = None
    body: list[bytes] = []
    size = 0
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            connection.receive_data(await incoming.receive())
            continue
        if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
            return None
        if isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            size += len(event.data)
            if size > MAX_REQUEST_BYTES:
                raise h11.RemoteProtocolError("request body too large", 413)
            body.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage) and request is not None:
            headers = {
                name.decode("latin-1").lower(): value.decode("latin-1")
                for name, value in request.headers
            }
            return Exchange(
                connection=connection,
                stream=stream,
                method=request.method.decode("ascii", "replace"),
                target=request.target.decode("ascii", "replace"),
                headers=headers,
                body=b"".join(body),
            )


async def _refuse_malformed(
    connection: h11.Connection, stream: anyio.abc.ByteStream, problem: h11.RemoteProtocolError
) -> None:
    """Answer a request h11 could not parse with its status, then close."""
    if connection.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    status = problem.error_status_hint
    body = error_body(False, status, f"malformed request: {problem}")
    try:
        data = connection.send(
            h11.Response(
                status_code=status,
                headers=[("content-type", "application/json"), ("content-length", str(len(body)))],
            )
        )
        await stream.send((data or b"") + (connection.send(h11.Data(data=body)) or b""))
    except (h11.LocalProtocolError, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        pass
