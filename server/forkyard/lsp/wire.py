"""Our own reading of the JSON-RPC stream, in place of pygls's `run_async`.

pygls allocates whatever `Content-Length` says (1 TiB: MemoryError, the server dies),
matches the header case-sensitively (a lower-case `content-length` desynchronises the
stream for good), and never answers a message it cannot structure (no `params`, bad
JSON, a bad field of a standard request). Here every message is bounded, every
request gets an answer, errors quote little of the input, and the stream resynchronises
on the next header after garbage. Reading never blocks the event loop: stdin is read in
a worker thread (as pygls does), a socket through its asyncio stream."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol

import anyio
from cattrs.errors import BaseValidationError
from lsprotocol import types
from pygls.protocol import JsonRPCProtocol

logger = logging.getLogger(__name__)

#: The largest message read; larger ones are skipped and answered with an error.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
#: Past this, a message cannot be skipped in reasonable time: the connection is closed.
MAX_SKIP_BYTES = 1024 * 1024 * 1024
MAX_HEADER_LINE_BYTES = 8192
#: Errors quote at most this much of the input.
QUOTE_CHARS = 200
#: Bodies this large are parsed in a worker thread, so the loop keeps answering.
THREAD_PARSE_BYTES = 256 * 1024
CHUNK_BYTES = 64 * 1024

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
INVALID_PARAMS = -32602
SERVER_NOT_INITIALIZED = -32002
INTERNAL_ERROR = -32603

_CONTENT_LENGTH = re.compile(rb"content-length[ \t]*:", re.IGNORECASE)
#: A header's name (RFC 9110 token); anything else on a header line is garbage.
_TOKEN = re.compile(rb"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
_ID_PREFIX = re.compile(rb'"id"\s*:\s*(-?\d{1,15}|"[^"\\]{0,100}")')


class ByteSource(Protocol):
    async def read(self, size: int) -> bytes:
        """Up to `size` bytes, at least one; b"" at the end of the stream."""
        ...


class StdinSource:
    """A binary file read in a worker thread; `read1` returns what is there, so a short
    message is not held back waiting for a full chunk."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream

    async def read(self, size: int) -> bytes:
        read1 = getattr(self._stream, "read1", self._stream.read)
        data: bytes = await anyio.to_thread.run_sync(read1, size, abandon_on_cancel=True)
        return data


class StreamSource:
    def __init__(self, stream: asyncio.StreamReader) -> None:
        self._stream = stream

    async def read(self, size: int) -> bytes:
        return await self._stream.read(size)


def quote(data: bytes | str, limit: int = QUOTE_CHARS) -> str:
    """A short, printable excerpt of input for an error message."""
    if isinstance(data, bytes):
        data = data[: limit * 4].decode("utf-8", "replace")
    text = repr(data[:limit])
    return text + ("…" if len(data) > limit else "")


class ConnectionLost(Exception):
    """The stream cannot be read on (ended mid-message, or a message cannot be skipped)."""


@dataclass
class Frame:
    """One message's body, or why there is none (`problem`, `code`, maybe the `id` seen)."""

    body: bytes | None = None
    problem: str | None = None
    code: int = INVALID_REQUEST
    msg_id: int | str | None = None
    #: The stream cannot go on after this one: answer, then close the connection.
    close: bool = False


class FrameReader:
    """Header blocks and bodies, with bounded buffering."""

    def __init__(self, source: ByteSource, max_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self._source = source
        self._buffer = bytearray()
        self._eof = False
        self.max_bytes = max_bytes

    async def _fill(self) -> bool:
        if self._eof:
            return False
        data = await self._source.read(CHUNK_BYTES)
        if not data:
            self._eof = True
            return False
        self._buffer += data
        return True

    async def _line(self) -> bytes | None:
        """One header line without its end; None at the end of the stream. A line over
        the bound is dropped (in chunks, never held whole) and read as empty garbage."""
        dropped = False
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                return b"\0overlong" if dropped else line.rstrip(b"\r")
            if len(self._buffer) > MAX_HEADER_LINE_BYTES:
                # Keep the tail: a header may start in it.
                tail = self._buffer[-MAX_HEADER_LINE_BYTES:]
                if (found := _CONTENT_LENGTH.search(tail)) is not None:
                    del self._buffer[: len(self._buffer) - len(tail) + found.start()]
                    continue
                del self._buffer[:-64]
                dropped = True
            if not await self._fill():
                return None

    async def _take(self, size: int) -> bytes:
        while len(self._buffer) < size:
            if not await self._fill():
                raise ConnectionLost(f"the stream ended inside a {size}-byte message")
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    async def _skip(self, size: int) -> bytes:
        """Drop `size` bytes, keeping only the first few (to find the request's id)."""
        head = bytes(self._buffer[:4096])
        left = size
        while left > 0:
            if not self._buffer and not await self._fill():
                raise ConnectionLost(f"the stream ended inside a {size}-byte message")
            step = min(left, len(self._buffer))
            if len(head) < 4096:
                head += bytes(self._buffer[: min(step, 4096 - len(head))])
            del self._buffer[:step]
            left -= step
        return head

    async def next_frame(self) -> Frame | None:
        """The next message; None at the end of the stream."""
        length: int | None = None
        headers = 0
        while True:
            line = await self._line()
            if line is None:
                return None
            if not line.strip():
                if length is not None:
                    break
                if headers:
                    return Frame(
                        problem="a message without a Content-Length header was ignored",
                        code=PARSE_ERROR,
                    )
                continue  # a stray blank line between messages
            headers += 1
            name, sep, value = line.partition(b":")
            if not sep or not _TOKEN.fullmatch(name.strip()):
                if (found := _CONTENT_LENGTH.search(line)) is not None:
                    # Garbage, then a header: an earlier message had no (true) length.
                    logger.warning("unframed input skipped: %s", quote(line[: found.start()]))
                    name, _, value = line[found.start() :].partition(b":")
                else:
                    logger.warning("not a header, skipped: %s", quote(line))
                    continue
            if name.strip().lower() == b"content-length":
                text = value.strip()
                if not text.isdigit() or len(text) > 20:
                    return Frame(problem=f"bad Content-Length {quote(text)}", code=PARSE_ERROR)
                length = int(text)
        if length > self.max_bytes:
            problem = f"message of {length} bytes refused: the limit is {self.max_bytes} bytes"
            if length > MAX_SKIP_BYTES:
                return Frame(problem=problem + "; too large to skip: closing", close=True)
            head = await self._skip(length)
            return Frame(problem=problem, msg_id=_id_in(head))
        return Frame(body=await self._take(length))


def _id_in(head: bytes) -> int | str | None:
    """The request id near the start of a refused body, so its sender gets an answer."""
    params_at = head.find(b'"params"')
    found = _ID_PREFIX.search(head, 0, params_at if params_at >= 0 else len(head))
    if found is None:
        return None
    raw = found.group(1)
    return int(raw) if raw[:1] != b'"' else raw[1:-1].decode("utf-8", "replace")


class MessageError(Exception):
    def __init__(self, code: int, message: str, msg_id: int | str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.msg_id = msg_id


def valid_id(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or isinstance(value, str)


def check_envelope(data: Any) -> dict[str, Any]:
    """-32600 for what is not a JSON-RPC 2.0 message LSP knows (batches included)."""
    if not isinstance(data, dict):
        kind = (
            "an array (batches are not part of LSP)" if isinstance(data, list) else "not an object"
        )
        raise MessageError(INVALID_REQUEST, f"invalid request: the message is {kind}")
    msg_id = data.get("id")
    if "id" in data and not valid_id(msg_id):
        raise MessageError(
            INVALID_REQUEST,
            "invalid request: id must be an integer or a string, not "
            + quote(json.dumps(msg_id), 40),
        )
    answer_to = msg_id if "id" in data else None
    if data.get("jsonrpc") != "2.0":
        raise MessageError(INVALID_REQUEST, 'invalid request: jsonrpc must be "2.0"', answer_to)
    if "method" in data and not isinstance(data["method"], str):
        raise MessageError(INVALID_REQUEST, "invalid request: method must be a string", answer_to)
    if "method" not in data and "id" not in data:
        raise MessageError(INVALID_REQUEST, "invalid request: no method and no id")
    if "method" in data and "params" not in data:
        data["params"] = None
    return data


def describe_structure_error(method: str, exc: BaseException) -> str:
    """Which field of a standard request's params is bad, as cattrs tells it."""
    cause: BaseException = exc.__cause__ or exc
    details: list[str] = []
    if isinstance(cause, BaseValidationError):
        from cattrs import transform_error

        # Paths are from the message's root: "… @ params.range.start".
        for line in transform_error(cause, path=""):
            details.append(line.replace("@ .", "@ ", 1))
    text = "; ".join(details) if details else describe(cause)
    if len(text) > QUOTE_CHARS:
        text = text[: QUOTE_CHARS - 1] + "…"
    return f"invalid params for {method}: {text}"


def describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


_BEFORE_INITIALIZE = (types.INITIALIZE, types.EXIT)

Answer = Callable[[int | str | None, int, str], None]


class MessageLoop:
    """Reads frames, turns them into pygls messages, answers what it cannot deliver."""

    def __init__(self, protocol: JsonRPCProtocol, reader: FrameReader, answer: Answer) -> None:
        self.protocol = protocol
        self.reader = reader
        self.answer = answer
        self.initialized = False

    async def run(self) -> None:
        while True:
            frame = await self.reader.next_frame()
            if frame is None:
                return
            if frame.body is None:
                logger.warning("%s", frame.problem)
                self.answer(frame.msg_id, frame.code, frame.problem or "unreadable message")
                if frame.close:
                    raise ConnectionLost(frame.problem or "unreadable stream")
                continue
            data: dict[str, Any] | None = None
            try:
                data = await self.parse(frame.body)
                self.deliver(data)
            except MessageError as error:
                logger.warning("message refused: %s", error.message)
                self.answer(error.msg_id, error.code, error.message)
            except Exception as exc:
                # A bug in handing one message over must not end the connection.
                logger.exception("message not handled")
                if data is not None and "method" in data and "id" in data:
                    self.answer(data["id"], INTERNAL_ERROR, f"internal error: {describe(exc)}")

    async def parse(self, body: bytes) -> dict[str, Any]:
        try:
            if len(body) >= THREAD_PARSE_BYTES:
                data = await anyio.to_thread.run_sync(json.loads, body)
            else:
                data = json.loads(body)
        except (ValueError, RecursionError) as exc:
            where = f" at byte {exc.pos}" if isinstance(exc, json.JSONDecodeError) else ""
            raise MessageError(
                PARSE_ERROR, f"parse error{where}: {type(exc).__name__} in {quote(body)}"
            ) from exc
        return check_envelope(data)

    def deliver(self, data: dict[str, Any]) -> None:
        method = data.get("method")
        is_request = "id" in data and method is not None
        msg_id = data.get("id")
        if method is not None and not self.initialized and method not in _BEFORE_INITIALIZE:
            if is_request:
                raise MessageError(
                    SERVER_NOT_INITIALIZED,
                    "Forkyard is not initialized yet: send initialize before " + quote(method, 80),
                    msg_id,
                )
            logger.warning("notification %s before initialize dropped", quote(method, 80))
            return
        try:
            message = self.protocol.structure_message(data)
        except Exception as exc:
            if is_request:
                raise MessageError(
                    INVALID_PARAMS, describe_structure_error(str(method), exc), msg_id
                ) from exc
            logger.warning("message dropped: %s", describe_structure_error(str(method), exc))
            return
        if method == types.INITIALIZE:
            self.initialized = True
        self.protocol.handle_message(message)
