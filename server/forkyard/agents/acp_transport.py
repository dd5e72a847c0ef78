"""ACP's newline-delimited JSON over an agent program's pipes, as a message transport
for the ACP SDK (`acp.connection.Connection` takes any object with `send`, `receive`
and `close`).

Ours rather than the SDK's stdio framing because an agent is hostile: a line is
bounded (`MAX_LINE_BYTES`; longer ones are dropped, never buffered whole), and what is
not a JSON object (a banner, a stray print, garbage) is reported and skipped instead of
ending the session.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from anyio.abc import ByteReceiveStream, ByteSendStream

MAX_LINE_BYTES = 16 * 1024 * 1024
#: How much of a skipped line is reported.
SHOWN_GARBAGE_CHARS = 200

GarbageCallback = Callable[[str], Awaitable[None]]


class PipeTransport:
    """Messages in and out of one agent program."""

    def __init__(
        self, stdin: ByteSendStream, stdout: ByteReceiveStream, on_garbage: GarbageCallback
    ) -> None:
        self._stdin = stdin
        self._stdout = stdout
        self._on_garbage = on_garbage
        self._buffer = b""
        #: How much of the buffer is known to hold no newline.
        self._scanned = 0
        self._skipping = False
        self._eof = False
        self._send_lock = anyio.Lock()

    async def send(self, message: dict[str, Any]) -> None:
        data = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
        try:
            async with self._send_lock:
                await self._stdin.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError) as error:
            raise ConnectionError("the agent program's input is closed") from error

    async def receive(self) -> dict[str, Any] | None:
        """The next message; None at the end of the program's output."""
        while True:
            line = await self._line()
            if line is None:
                return None
            text = line.strip()
            if not text:
                continue
            try:
                message = json.loads(text)
            except ValueError:
                message = None
            if isinstance(message, dict):
                return message
            await self._on_garbage(text[:SHOWN_GARBAGE_CHARS].decode(errors="replace"))

    async def close(self) -> None:
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            await self._stdin.aclose()

    async def _line(self) -> bytes | None:
        while True:
            newline = self._buffer.find(b"\n", self._scanned)
            if newline >= 0:
                line, self._buffer = self._buffer[:newline], self._buffer[newline + 1 :]
                self._scanned = 0
                if self._skipping:
                    self._skipping = False
                    continue
                return line
            if self._eof:
                rest, self._buffer = self._buffer, b""
                return None if self._skipping or not rest else rest
            if len(self._buffer) > MAX_LINE_BYTES:
                if not self._skipping:
                    await self._on_garbage(f"a line of over {MAX_LINE_BYTES} bytes, dropped")
                self._skipping = True
                self._buffer = b""
            self._scanned = len(self._buffer)
            try:
                self._buffer += await self._stdout.receive(65536)
            except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
                self._eof = True
