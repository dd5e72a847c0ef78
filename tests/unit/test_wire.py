"""The framed reader on its own: messages split at every byte, header lines too long to
hold, garbage before a header, refused bodies skipped without being held."""

from __future__ import annotations

import json

import pytest

from forkyard.lsp.wire import (
    MAX_HEADER_LINE_BYTES,
    PARSE_ERROR,
    Frame,
    FrameReader,
    check_envelope,
    quote,
)


class Trickle:
    """A source that hands out its bytes `step` at a time, as a slow pipe would."""

    def __init__(self, data: bytes, step: int = 1) -> None:
        self.data = data
        self.step = step

    async def read(self, size: int) -> bytes:
        chunk, self.data = self.data[: min(size, self.step)], self.data[min(size, self.step) :]
        return chunk


def framed(body: str, header: str = "Content-Length") -> bytes:
    return f"{header}: {len(body.encode())}\r\n\r\n{body}".encode()


async def frames(reader: FrameReader) -> list[Frame]:
    found = []
    while (frame := await reader.next_frame()) is not None:
        found.append(frame)
    return found


@pytest.mark.parametrize("step", [1, 7, 4096])
async def test_messages_split_anywhere_are_read_whole(step: int) -> None:
    one, two = '{"a": 1}', '{"b": "ü"}'
    reader = FrameReader(Trickle(framed(one) + framed(two, "content-length"), step))
    assert [f.body for f in await frames(reader)] == [one.encode(), two.encode()]


async def test_lf_only_headers_and_unknown_headers_are_accepted() -> None:
    data = b"X-Trace: 1\nContent-Length: 2\nContent-Type: whatever\n\n{}"
    [frame] = await frames(FrameReader(Trickle(data, 3)))
    assert frame.body == b"{}"


async def test_an_overlong_header_line_is_dropped_and_reading_goes_on() -> None:
    data = b"X-Junk: " + b"j" * (MAX_HEADER_LINE_BYTES * 5) + b"\r\n" + framed("{}")
    reader = FrameReader(Trickle(data, 4096))
    [frame] = await frames(reader)
    assert frame.body == b"{}"
    assert len(reader._buffer) == 0


async def test_garbage_then_a_header_resynchronises() -> None:
    data = b"Content-Type: x\r\n\r\n{unframed}" + framed('{"ok": 1}')
    first, second = await frames(FrameReader(Trickle(data, 5)))
    assert first.body is None and first.code == PARSE_ERROR
    assert "Content-Length" in (first.problem or "")
    assert second.body == b'{"ok": 1}'


async def test_a_refused_body_is_skipped_with_its_id_and_the_next_is_read() -> None:
    body = '{"jsonrpc": "2.0", "id": 42, "method": "m", "params": {"t": "' + "x" * 5000 + '"}}'
    reader = FrameReader(Trickle(framed(body) + framed("{}"), 1024), max_bytes=1000)
    refused, after = await frames(reader)
    assert refused.body is None and refused.msg_id == 42
    assert "limit" in (refused.problem or "")
    assert after.body == b"{}"


async def test_a_length_past_what_can_be_skipped_asks_to_close() -> None:
    reader = FrameReader(Trickle(b"Content-Length: 1099511627776\r\n\r\n{", 64))
    frame = await reader.next_frame()
    assert frame is not None and frame.close and frame.body is None


def test_envelope_problems_and_short_quotes() -> None:
    with pytest.raises(Exception, match="array"):
        check_envelope([1])
    with pytest.raises(Exception, match="id must be"):
        check_envelope({"jsonrpc": "2.0", "id": [1], "method": "m"})
    assert check_envelope({"jsonrpc": "2.0", "id": 1, "method": "m"})["params"] is None
    assert len(quote("x" * 10_000)) < 210
    assert len(quote(json.dumps({"k": "v" * 10_000}).encode())) < 210


async def test_a_message_that_fails_inside_the_server_is_answered_and_reading_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from forkyard.lsp.features import create_server
    from forkyard.lsp.wire import INTERNAL_ERROR, MessageLoop

    server = create_server()
    answers: list[tuple[object, int, str]] = []
    handled: list[object] = []

    def handle(message: object) -> None:
        handled.append(message)
        if len(handled) == 1:
            raise RuntimeError("a bug")

    monkeypatch.setattr(server.protocol, "handle_message", handle)
    requests = [{"jsonrpc": "2.0", "id": n, "method": "shutdown"} for n in (1, 2)]
    data = framed(json.dumps({"jsonrpc": "2.0", "id": 0, "method": "shutdown"}))

    def answer(msg_id: object, code: int, message: str) -> None:
        answers.append((msg_id, code, message))

    loop = MessageLoop(server.protocol, FrameReader(Trickle(data, 64)), answer)
    await loop.run()
    assert answers[0][:2] == (0, -32002), "before initialize"
    loop.initialized = True
    loop.reader = FrameReader(Trickle(b"".join(framed(json.dumps(r)) for r in requests), 64))
    await loop.run()
    assert answers[1] == (1, INTERNAL_ERROR, "internal error: RuntimeError: a bug")
    assert len(handled) == 2, "the next message was handed over"


def test_server_not_ready_answers_32002_with_a_message() -> None:
    from forkyard.lsp.server import ServerNotReady

    error = ServerNotReady().to_response_error()
    assert error.code == -32002
    assert "initialize" in error.message
