"""What an ACP agent prints on stdout reaches the SDK as messages, bounded: a line too
long is dropped without being held whole, what is not a JSON object is reported and
skipped, and the end of the output is the end of the messages."""

from __future__ import annotations

import json
from collections.abc import Iterable

import anyio
import pytest
from anyio.abc import ByteReceiveStream, ByteSendStream

from forkyard.agents import acp_transport
from forkyard.agents.acp_transport import PipeTransport


class Chunks(ByteReceiveStream):
    """The program's stdout, as the chunks it arrives in."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self.chunks = list(chunks)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if not self.chunks:
            raise anyio.EndOfStream
        return self.chunks.pop(0)

    async def aclose(self) -> None:
        self.chunks = []


class Sink(ByteSendStream):
    def __init__(self) -> None:
        self.sent = b""
        self.closed = False

    async def send(self, item: bytes) -> None:
        if self.closed:
            raise anyio.ClosedResourceError
        self.sent += item

    async def aclose(self) -> None:
        self.closed = True


async def messages_of(transport: PipeTransport) -> list[dict[str, object]]:
    received = []
    while (message := await transport.receive()) is not None:
        received.append(message)
    return received


async def test_garbage_and_overlong_lines_are_skipped_and_reported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(acp_transport, "MAX_LINE_BYTES", 1000)
    reported: list[str] = []

    async def report(text: str) -> None:
        reported.append(text)

    good = json.dumps({"jsonrpc": "2.0", "method": "session/update", "params": {}}).encode()
    overlong = [b"x" * 600, b"y" * 600, b"z" * 600 + b"\n"]
    stdout = Chunks(
        [b"Welcome!\n", *overlong, good[:10], good[10:] + b"\n", b"[1, 2]\n", b"\n", good]
    )
    transport = PipeTransport(Sink(), stdout, report)

    assert await messages_of(transport) == [json.loads(good), json.loads(good)]
    assert reported == ["Welcome!", "a line of over 1000 bytes, dropped", "[1, 2]"]


async def test_a_message_is_one_line_and_a_closed_input_is_a_connection_error() -> None:
    sink = Sink()

    async def report(_text: str) -> None:
        raise AssertionError("nothing to report")

    transport = PipeTransport(sink, Chunks([]), report)
    await transport.send({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"a": "é"}})
    assert sink.sent.count(b"\n") == 1 and sink.sent.endswith(b"\n")
    assert json.loads(sink.sent)["params"] == {"a": "é"}
    await transport.close()
    with pytest.raises(ConnectionError, match="input is closed"):
        await transport.send({"jsonrpc": "2.0", "method": "x"})
    assert await transport.receive() is None
