"""A real HTTP server on 127.0.0.1 that speaks the OpenAI and Anthropic wire formats.

Tests script what "the model" answers (`Reply`), point a real SDK at `server.url`, and
read back what the model was sent (`server.requests`). It runs in a background thread,
so it serves sync tests, async tests and other processes alike.

    with FakeModelServer() as server:
        server.script(Reply(text="Hello there"), Reply(tool_calls=[("finish", {"summary": "ok"})]))
        config = server.model_config("openai")   # a ModelConfig pointing at it

Streams follow the real formats: OpenAI `data: {chunk}` lines ending in `data: [DONE]`,
text split into several deltas, tool calls as a first fragment with id and name then
argument pieces; Anthropic `message_start`, `content_block_*`, `message_delta`,
`message_stop` events. `Reply(hold=True)` stops a stream partway until the test calls
`reply.release()`, for tests of interruption and queuing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.server
import itertools
import json
import select
import socket
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self

import anyio.to_thread

from forkyard.models.config import ModelConfig
from forkyard.orchestrator.titles import TITLE_SYSTEM
from tests.fakes import wire

#: How long the server waits for something a test must trigger before giving up.
WAIT_LIMIT = 30.0

ToolCallScript = tuple[str, Mapping[str, Any] | str]


@dataclass(eq=False)
class Reply:
    """One scripted answer of the fake model, served to the next request.

    text: the reply's text, streamed word by word.
    tool_calls: (name, arguments) pairs; arguments a dict, or raw text sent as is
        (which may be invalid JSON, to test how callers cope).
    delay_per_chunk: seconds between streamed chunks (a slow model).
    hang: accept the request and never answer (until the server closes).
    status: an HTTP error status answered with the provider's error body.
    garbage: answer 200 with a body that is not the wire format (True: a stock one).
    hold: stream `hold_after_chunks` content chunks, then wait for `release()`; a
        client that hangs up meanwhile is noticed (`disconnected`).
    error_message: the message in the error body of a `status` reply (default: what
        the real API says; a 401 quotes the key back, as OpenAI's does).
    stop_reason: override the provider's stop/finish reason (e.g. "length").
    cached_tokens: how many of the prompt's tokens the usage reports as read from the
        prompt cache (at most all of them).
    """

    text: str = ""
    tool_calls: Sequence[ToolCallScript] = ()
    delay_per_chunk: float = 0.0
    hang: bool = False
    status: int = 200
    garbage: bool | str = False
    hold: bool = False
    hold_after_chunks: int = 1
    error_message: str | None = None
    stop_reason: str | None = None
    cached_tokens: int = 0

    _started: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _released: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _finished: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _disconnected: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _ended: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    #: The request this reply answered, once served.
    request: RecordedRequest | None = field(default=None, init=False, repr=False)

    def release(self) -> None:
        """Let a held reply finish its stream."""
        self._released.set()

    @property
    def disconnected(self) -> bool:
        """Whether the client closed the connection before the reply was complete."""
        return self._disconnected.is_set()

    @property
    def finished(self) -> bool:
        """Whether the whole reply was sent."""
        return self._finished.is_set()

    def wait_started(self, timeout: float = WAIT_LIMIT) -> None:
        _wait(self._started, timeout, "the fake model never received the request")

    def wait_done(self, timeout: float = WAIT_LIMIT) -> None:
        """Wait until the reply was sent completely or the client went away."""
        _wait(self._ended, timeout, "the reply never ended")

    def wait_disconnected(self, timeout: float = WAIT_LIMIT) -> None:
        _wait(self._disconnected, timeout, "the client never closed the connection")

    async def started(self, timeout: float = WAIT_LIMIT) -> None:
        await anyio.to_thread.run_sync(self.wait_started, timeout, abandon_on_cancel=True)

    async def done(self, timeout: float = WAIT_LIMIT) -> None:
        await anyio.to_thread.run_sync(self.wait_done, timeout, abandon_on_cancel=True)

    async def client_disconnected(self, timeout: float = WAIT_LIMIT) -> None:
        await anyio.to_thread.run_sync(self.wait_disconnected, timeout, abandon_on_cancel=True)


@dataclass(frozen=True)
class RecordedRequest:
    """A request as the server received it; `body` is the parsed JSON (None if not)."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: Any
    raw: bytes

    @property
    def api(self) -> Literal["openai", "anthropic", "other"]:
        if self.path.endswith("/chat/completions"):
            return "openai"
        if self.path.endswith("/v1/messages"):
            return "anthropic"
        return "other"

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.body.get("messages", [])) if isinstance(self.body, dict) else []

    @property
    def tools(self) -> list[dict[str, Any]]:
        return list(self.body.get("tools", [])) if isinstance(self.body, dict) else []

    @property
    def text(self) -> str:
        """Everything the model was shown as text (system prompt, messages, tool results),
        to assert that something reached the model's context whatever the provider."""
        return json.dumps(self.body, ensure_ascii=False) if self.body is not None else ""


class FakeModelServer:
    """The scripted model server. Use as a context manager (or the `fake_model_server`
    fixture); `close()` releases every held or hanging reply and joins every thread."""

    def __init__(self, *, default: Reply | None = None) -> None:
        """`default`: a template served (as a fresh copy) when the script is empty;
        None answers an empty script with HTTP 500 saying so."""
        self.default = default
        #: The answer to Forkyard's agent-title requests (orchestrator/titles.py), which
        #: never take a scripted reply nor count in `requests`; None refuses them (400),
        #: so agents keep the title from their task.
        self.title: str | None = None
        self.title_requests: list[RecordedRequest] = []
        self._replies: deque[Reply] = deque()
        self._requests: list[RecordedRequest] = []
        self._usage: list[wire.ReportedUsage] = []
        self._lock = threading.Condition()
        self._closing = threading.Event()
        self._connections: set[socket.socket] = set()
        self._ids = itertools.count(1)
        self._httpd = _HTTPServer(("127.0.0.1", 0), _Handler, self)
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> Self:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever,
                kwargs={"poll_interval": 0.05},
                name="fake-model-server",
                daemon=True,
            )
            self._thread.start()
        return self

    def close(self) -> None:
        self._closing.set()
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            # Wake handler threads blocked reading an idle keep-alive connection.
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        self._httpd.server_close()  # joins the handler threads

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- addresses -------------------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """The Anthropic base URL (the SDK appends /v1/messages)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.url

    def model_config(
        self, provider: Literal["openai", "anthropic"] = "openai", **overrides: Any
    ) -> ModelConfig:
        """A ModelConfig for this server; fast-failing defaults suited to tests."""
        values: dict[str, Any] = {
            "provider": provider,
            "base_url": self.openai_base_url if provider == "openai" else self.anthropic_base_url,
            "model": "fake-model",
            "timeout_seconds": 10.0,
            "max_retries": 0,
        }
        values.update(overrides)
        return ModelConfig.model_validate(values)

    # -- scripting and inspection ----------------------------------------------------

    def script(self, *replies: Reply | str) -> list[Reply]:
        """Queue replies (a str is `Reply(text=...)`); returns them for waiting."""
        queued = [Reply(text=reply) if isinstance(reply, str) else reply for reply in replies]
        with self._lock:
            self._replies.extend(queued)
        return queued

    @property
    def pending_replies(self) -> int:
        with self._lock:
            return len(self._replies)

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def reported_usage(self) -> list[wire.ReportedUsage]:
        """The usage of every reply whose usage was sent, in order; recorded before the
        client can read it, so a test that saw a reply end sees its usage here."""
        with self._lock:
            return list(self._usage)

    def _report(self, usage: wire.ReportedUsage) -> None:
        with self._lock:
            self._usage.append(usage)

    @property
    def last_request(self) -> RecordedRequest:
        with self._lock:
            if not self._requests:
                raise AssertionError("the fake model server has received no request")
            return self._requests[-1]

    def wait_for_requests(self, count: int, timeout: float = WAIT_LIMIT) -> list[RecordedRequest]:
        """Block until at least `count` requests arrived; returns all of them."""
        with self._lock:
            if not self._lock.wait_for(lambda: len(self._requests) >= count, timeout):
                raise TimeoutError(
                    f"the fake model server got {len(self._requests)} requests, "
                    f"expected {count} within {timeout} s"
                )
            return list(self._requests)

    async def requests_received(
        self, count: int, timeout: float = WAIT_LIMIT
    ) -> list[RecordedRequest]:
        """`wait_for_requests` for async tests, without blocking the event loop."""
        return await anyio.to_thread.run_sync(
            self.wait_for_requests, count, timeout, abandon_on_cancel=True
        )

    # -- used by the handler threads ---------------------------------------------------

    def _record(self, request: RecordedRequest) -> Reply | None:
        if TITLE_SYSTEM in request.text:
            with self._lock:
                self.title_requests.append(request)
                self._lock.notify_all()
            if self.title is None:
                return Reply(status=400, error_message="fake model server: no title scripted")
            return Reply(text=self.title)
        with self._lock:
            self._requests.append(request)
            if self._replies:
                reply: Reply | None = self._replies.popleft()
            elif self.default is not None:
                reply = dataclasses.replace(self.default)  # fresh events, same script
            else:
                reply = None
            if reply is not None:
                reply.request = request
            self._lock.notify_all()
        if reply is not None:
            reply._started.set()
        return reply

    def _next_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):04d}"

    def _register(self, connection: socket.socket, *, add: bool) -> None:
        with self._lock:
            if not add:
                self._connections.discard(connection)
                return
            self._connections.add(connection)
        if self._closing.is_set():
            # Accepted just as close() began, after it woke the other connections.
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


def _wait(event: threading.Event, timeout: float, failure: str) -> None:
    if not event.wait(timeout):
        raise TimeoutError(f"{failure} within {timeout} s")


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = False  # joined by server_close, so nothing outlives close()
    block_on_close = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[http.server.BaseHTTPRequestHandler],
        fake: FakeModelServer,
    ) -> None:
        self.fake = fake
        super().__init__(address, handler)


class _ClientGone(Exception):
    """The client closed the connection while we were answering."""


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and chunked streaming, as the SDKs expect
    server: _HTTPServer
    timeout = WAIT_LIMIT

    def setup(self) -> None:
        super().setup()
        self.server.fake._register(self.connection, add=True)

    def finish(self) -> None:
        self.server.fake._register(self.connection, add=False)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: pytest shows the test's own output, not an access log."""

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _serve(self) -> None:
        fake = self.server.fake
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = None
        request = RecordedRequest(
            method=self.command,
            path=self.path.split("?", 1)[0],
            headers={key.lower(): value for key, value in self.headers.items()},
            body=body,
            raw=raw,
        )
        if request.api == "other":
            self._send_json(404, {"error": {"message": f"no route {request.path}"}})
            return
        reply = fake._record(request)
        if reply is None:
            self._send_json(
                500, wire.error_body(request.api, 500, "fake model server: no scripted reply left")
            )
            return
        try:
            self._answer(request, reply)
            reply._finished.set()
        except _ClientGone:
            reply._disconnected.set()
            self.close_connection = True
        finally:
            reply._ended.set()

    def _answer(self, request: RecordedRequest, reply: Reply) -> None:
        api: wire.Api = "anthropic" if request.api == "anthropic" else "openai"
        if reply.hang:
            self._wait_for(None)
            raise _ClientGone
        if reply.status != 200:
            message = reply.error_message or wire.default_error_message(reply.status, request)
            self._send_json(reply.status, wire.error_body(api, reply.status, message))
            return
        if reply.garbage:
            text = reply.garbage if isinstance(reply.garbage, str) else wire.GARBAGE
            self._send_raw(200, "text/html", text.encode())
            return
        input_tokens = max(1, len(request.raw) // 4)
        script = wire.ScriptedReply(
            text=reply.text,
            tool_calls=list(reply.tool_calls),
            stop_reason=reply.stop_reason,
            model=str((request.body or {}).get("model", "fake-model")),
            input_tokens=input_tokens,
            new_id=self.server.fake._next_id,
            cached_tokens=min(reply.cached_tokens, input_tokens),
        )
        streaming = bool(isinstance(request.body, dict) and request.body.get("stream"))
        if not streaming:
            self.server.fake._report(wire.reported_usage(script))
            self._send_json(200, wire.whole_reply(api, script))
            return
        include_usage = api == "anthropic" or bool(
            ((request.body or {}).get("stream_options") or {}).get("include_usage")
        )
        frames = wire.stream_frames(api, script, include_usage=include_usage)
        self._stream(frames, reply, wire.reported_usage(script) if include_usage else None)

    def _stream(self, frames: wire.Frames, reply: Reply, usage: wire.ReportedUsage | None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self._flush()
        for frame in frames.opening:
            self._write_chunk(frame)
        for index, frame in enumerate(frames.content):
            if reply.hold and index == reply.hold_after_chunks:
                self._wait_for(reply._released)
            self._pace(reply)
            self._write_chunk(frame)
        if reply.hold and len(frames.content) <= reply.hold_after_chunks:
            self._wait_for(reply._released)
        if usage is not None:
            self.server.fake._report(usage)
        for frame in frames.closing:
            self._pace(reply)
            self._write_chunk(frame)
        self._write(b"0\r\n\r\n")

    def _pace(self, reply: Reply) -> None:
        if reply.delay_per_chunk > 0 and self.server.fake._closing.wait(reply.delay_per_chunk):
            raise _ClientGone

    def _wait_for(self, event: threading.Event | None) -> None:
        """Wait for `event` (None: forever) while watching for the client to hang up
        and for the server to close."""
        closing = self.server.fake._closing
        while not (event is not None and event.is_set()):
            if closing.is_set() or self._client_hung_up(0.02):
                raise _ClientGone

    def _client_hung_up(self, timeout: float) -> bool:
        try:
            readable, _, _ = select.select([self.connection], [], [], timeout)
            if not readable:
                return False
            peeked: bytes = self.connection.recv(1, socket.MSG_PEEK)
        except OSError:
            return True
        return peeked == b""

    def _write_chunk(self, data: bytes) -> None:
        self._write(b"%x\r\n%s\r\n" % (len(data), data))

    def _write(self, data: bytes) -> None:
        try:
            self.wfile.write(data)
            self._flush()
        except OSError as error:
            raise _ClientGone from error

    def _flush(self) -> None:
        try:
            self.wfile.flush()
        except OSError as error:
            raise _ClientGone from error

    def _send_json(self, status: int, payload: object) -> None:
        self._send_raw(status, "application/json", json.dumps(payload).encode())

    def _send_raw(self, status: int, content_type: str, data: bytes) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
        except OSError:
            self.close_connection = True
