"""JSON-RPC 2.0 over a byte stream, one message per line: the daemon's protocol's framing.

Both ends use `Peer`: the daemon for each front that connects, a front for its daemon.
Lines are bounded (a longer one closes the connection: only a broken or hostile peer sends
one), every request is answered, and sending never blocks the sender: messages queue on a
memory stream that one writer task drains. A peer that stops reading until the queue is
full is disconnected rather than allowed to hold memory or the daemon.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from anyio.abc import ByteStream, TaskGroup
from anyio.streams.buffered import BufferedByteReceiveStream

from forkyard.errors import ForkyardError, from_code

logger = logging.getLogger(__name__)

#: One message may carry a review's both sides of every file; past this it is refused.
MAX_LINE_BYTES = 256 * 1024 * 1024
#: Messages waiting to be written before the peer counts as gone.
MAX_QUEUED = 100_000
MAX_ERROR_CHARS = 400
#: How long a closing peer keeps writing what it had queued.
DRAIN_SECONDS = 2.0

Handler = Callable[[str, Any], Awaitable[Any]]
NotificationHandler = Callable[[str, Any], None]


class ConnectionClosed(ForkyardError):
    """The other end went away (or broke the protocol) before answering."""

    code = -32002


class Peer:
    def __init__(
        self,
        stream: ByteStream,
        handle_request: Handler | None = None,
        handle_notification: NotificationHandler | None = None,
        name: str = "peer",
    ) -> None:
        self._stream = stream
        self._reader = BufferedByteReceiveStream(stream)
        self._handle_request = handle_request
        self._handle_notification = handle_notification
        self.name = name
        self._next_id = 0
        self._waiting: dict[int, tuple[anyio.Event, list[Any]]] = {}
        self._send, self._outbox = anyio.create_memory_object_stream[bytes](MAX_QUEUED)
        self.closed = anyio.Event()
        self._reading = anyio.CancelScope()
        #: Set once everything queued was written (or can no longer be).
        self.drained = anyio.Event()

    # --- sending --------------------------------------------------------------------------

    def _queue(self, message: dict[str, Any]) -> None:
        if self.closed.is_set():
            return
        data = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
        try:
            self._send.send_nowait(data)
        except anyio.WouldBlock:
            logger.warning("%s stopped reading; disconnecting it", self.name)
            self.close()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            self.close()

    def notify(self, method: str, params: Any) -> None:
        self._queue({"jsonrpc": "2.0", "method": method, "params": params})

    async def request(self, method: str, params: Any = None) -> Any:
        """The result; raises the domain error the other end answered with (by code), or
        ConnectionClosed."""
        if self.closed.is_set():
            raise ConnectionClosed(f"{self.name} is not connected")
        self._next_id += 1
        request_id = self._next_id
        done = anyio.Event()
        slot: list[Any] = []
        self._waiting[request_id] = (done, slot)
        try:
            self._queue(
                {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params or {}}
            )
            await done.wait()
        finally:
            self._waiting.pop(request_id, None)
        if not slot:
            raise ConnectionClosed(f"{self.name} closed the connection before answering {method}")
        response = slot[0]
        if "error" in response:
            error = response["error"] if isinstance(response["error"], dict) else {}
            code = error.get("code", -32603)
            raise from_code(code if isinstance(code, int) else -32603, str(error.get("message")))
        return response.get("result")

    # --- running --------------------------------------------------------------------------

    async def run(self, task_group: TaskGroup) -> None:
        """Read until the connection ends; requests are served in `task_group`, side by
        side, so a slow one never holds up the next message."""
        task_group.start_soon(self._write_forever, name=f"writing to {self.name}")
        try:
            with self._reading:
                await self._read_forever(task_group)
        finally:
            self.close()
            # What was queued still goes out (the last events before a daemon exits),
            # unless the other end has stopped reading.
            with anyio.move_on_after(DRAIN_SECONDS, shield=True):
                await self.drained.wait()

    async def _read_forever(self, task_group: TaskGroup) -> None:
        while True:
            try:
                line = await self._reader.receive_until(b"\n", MAX_LINE_BYTES)
            except (anyio.EndOfStream, anyio.IncompleteRead):
                return
            except anyio.DelimiterNotFound:
                logger.warning("%s sent a message over %d bytes", self.name, MAX_LINE_BYTES)
                return
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                return
            if len(line) > MAX_LINE_BYTES:
                # receive_until only bounds what it still has to read: a long line
                # already buffered whole comes back anyway.
                logger.warning("%s sent a message over %d bytes", self.name, MAX_LINE_BYTES)
                return
            self._receive(line, task_group)

    def _receive(self, line: bytes, task_group: TaskGroup) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            self._queue(_error(None, -32700, "the message is not JSON"))
            return
        if not isinstance(message, dict):
            self._queue(_error(None, -32600, "a message must be a JSON object"))
            return
        method = message.get("method")
        if isinstance(method, str):
            if "id" in message:
                task_group.start_soon(
                    self._serve, message["id"], method, message.get("params"), name=method
                )
            elif self._handle_notification is not None:
                try:
                    self._handle_notification(method, message.get("params"))
                except Exception:
                    logger.exception("%s: handling %s failed", self.name, method)
            return
        waiting = self._waiting.get(message.get("id"))  # type: ignore[arg-type]
        if waiting is not None:
            waiting[1].append(message)
            waiting[0].set()

    async def _serve(self, request_id: Any, method: str, params: Any) -> None:
        if self._handle_request is None:
            self._queue(_error(request_id, -32601, f"{method}: no such method here"))
            return
        try:
            result = await self._handle_request(method, params)
        except ForkyardError as exc:
            self._queue(_error(request_id, exc.code, str(exc)))
        except Exception as exc:
            logger.exception("%s: %s failed", self.name, method)
            self._queue(_error(request_id, -32603, f"{method} failed: {type(exc).__name__}: {exc}"))
        else:
            self._queue({"jsonrpc": "2.0", "id": request_id, "result": result})

    async def _write_forever(self) -> None:
        try:
            async with self._outbox:
                async for data in self._outbox:
                    await self._stream.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        finally:
            self.drained.set()
            self.close()

    def close(self) -> None:
        """Ends the connection: waiting requests raise ConnectionClosed."""
        if self.closed.is_set():
            return
        self.closed.set()
        self._send.close()
        # Reading stops too: the connection ends, and the other end notices.
        self._reading.cancel()
        for done, _slot in list(self._waiting.values()):
            done.set()

    async def aclose(self) -> None:
        self.close()
        with anyio.CancelScope(shield=True):
            await self._stream.aclose()


def _error(request_id: Any, code: int, message: str) -> dict[str, Any]:
    if len(message) > MAX_ERROR_CHARS:
        message = message[: MAX_ERROR_CHARS - 1] + "…"
    return {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}
