"""The model gateway as its tests use it: a started `Gateway`, grants pointing at the fake
model server, and the real SDKs as an agent's program would use them, on a grant's socket.

    def test_x(gateway: GatewayUnderTest, upstream: ResponsesModelServer) -> None:
        agent = gateway.grant(upstream)
        with openai_client(agent) as client:
            client.chat.completions.create(...)
        agent.metered.wait(1)

`call` makes one call as codex (openai) or Claude Code (anthropic) would; `UnixHTTP` and
`raw_exchange` speak HTTP by hand, and `LingeringUpstream` holds an answer's end back.
The key the grants hand upstream is a made-up one (`REAL_KEY`), read from a fake
environment: no test sees or needs a real secret.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import re
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, Self

import anthropic
import httpx2
import openai
import pytest

from forkyard.gateway.grants import Grant
from forkyard.gateway.host import Gateway
from forkyard.models.config import ModelPrice
from forkyard_protocol import Usage
from tests.fakes.responses_server import ResponsesModelServer

#: The variable the grants read the key from, and the (fake) key in it.
KEY_ENV = "FAKE_UPSTREAM_KEY"
REAL_KEY = "sk-real-fake-0123456789abcdef"
#: How long a test waits for something the gateway does on its own thread.
WAIT = 10.0

Api = Literal["openai", "anthropic"]
APIS: list[Api] = ["openai", "anthropic"]
#: The model every call asks for, and a prompt the logs must not show.
MODEL = "fake-model"
PROMPT = "Refactor the parser; the secret word is marmalade-7f3a."


class Upstream(Protocol):
    """Where a grant's calls go: the fake model server, or `LingeringUpstream`."""

    @property
    def openai_base_url(self) -> str: ...

    @property
    def anthropic_base_url(self) -> str: ...


class Metered:
    """What the gateway reported to a grant (`on_usage`, `on_refused`), from its thread;
    tests wait on it because the gateway meters a call just after answering it."""

    def __init__(self) -> None:
        self.usages: list[Usage] = []
        self.refusals: list[str] = []
        self._changed = threading.Condition()

    def on_usage(self, usage: Usage) -> None:
        with self._changed:
            self.usages.append(usage)
            self._changed.notify_all()

    def on_refused(self, reason: str) -> None:
        with self._changed:
            self.refusals.append(reason)
            self._changed.notify_all()

    def wait(self, count: int, timeout: float = WAIT) -> list[Usage]:
        """The first `count` metered calls, once they were all metered."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.usages) >= count, timeout):
                raise TimeoutError(f"{len(self.usages)} calls metered, expected {count}")
            return list(self.usages)


@dataclass
class Agent:
    """One issued grant: what an agent's program is given (token, socket) and what the
    daemon's side sees of its calls."""

    grant: Grant
    token: str
    socket: Path
    metered: Metered


@dataclass
class GatewayUnderTest:
    gateway: Gateway
    agents: list[Agent] = field(default_factory=list)

    def grant(
        self,
        upstream: Upstream,
        *,
        anthropic_upstream: bool = False,
        price: Callable[[str], ModelPrice | None] = lambda _model: None,
        refusal: Callable[[Usage | None], str | None] = lambda _spent: None,
        **fields: Any,
    ) -> Agent:
        """Issue a grant whose calls go to `upstream` with `REAL_KEY`. Blocking (a bind)."""
        metered = Metered()
        grant = Grant(
            label=f"agent #{len(self.agents) + 1}",
            upstream=upstream.anthropic_base_url
            if anthropic_upstream
            else upstream.openai_base_url,
            anthropic_upstream=anthropic_upstream,
            key_env=KEY_ENV,
            environ=lambda: {KEY_ENV: REAL_KEY},
            price=price,
            refusal=refusal,
            on_usage=metered.on_usage,
            on_refused=metered.on_refused,
            **fields,
        )
        token, socket = self.gateway.issue(grant)
        agent = Agent(grant, token, socket, metered)
        self.agents.append(agent)
        return agent


@pytest.fixture
def gateway() -> Iterator[GatewayUnderTest]:
    """A started gateway with its sockets in a short private directory (a Unix socket's
    path is limited to 108 bytes, which pytest's tmp_path can exceed)."""
    directory = Path(tempfile.mkdtemp(prefix="fy-gw-"))
    started = GatewayUnderTest(Gateway(directory))
    started.gateway.start()
    try:
        yield started
    finally:
        started.gateway.close()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def upstream() -> Iterator[ResponsesModelServer]:
    """The fake model server, speaking chat completions, Responses and Anthropic."""
    with ResponsesModelServer() as server:
        yield server


@dataclass
class Sent:
    """The requests a client sent, as it sent them (to see that it sent the token)."""

    headers: list[dict[str, str]] = field(default_factory=list)

    def record(self, request: httpx2.Request) -> None:
        self.headers.append({name.lower(): value for name, value in request.headers.items()})


def _http(socket: Path, sent: Sent | None, timeout: float) -> httpx2.Client:
    hooks = {"request": [sent.record]} if sent is not None else {}
    return httpx2.Client(
        transport=httpx2.HTTPTransport(uds=str(socket)), event_hooks=hooks, timeout=timeout
    )


@contextmanager
def openai_client(
    agent: Agent,
    *,
    token: str | None = None,
    socket: Path | None = None,
    sent: Sent | None = None,
    timeout: float = WAIT,
) -> Iterator[openai.OpenAI]:
    """The openai SDK on `agent`'s socket with its token (or the ones given), as codex
    would be set up; no retries, so each call is one request."""
    with (
        _http(socket or agent.socket, sent, timeout) as http,
        openai.OpenAI(
            base_url="http://gateway", api_key=token or agent.token, http_client=http, max_retries=0
        ) as client,
    ):
        yield client


@contextmanager
def anthropic_client(
    agent: Agent,
    *,
    token: str | None = None,
    socket: Path | None = None,
    sent: Sent | None = None,
    timeout: float = WAIT,
) -> Iterator[anthropic.Anthropic]:
    """The anthropic SDK on `agent`'s socket, as Claude Code would be set up."""
    with (
        _http(socket or agent.socket, sent, timeout) as http,
        anthropic.Anthropic(
            base_url="http://gateway", api_key=token or agent.token, http_client=http, max_retries=0
        ) as client,
    ):
        yield client


class LogWatch(logging.Handler):
    """Records of the gateway's logger, with a wait for the line that ends a call (it is
    written after the answer went out)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._changed = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self._changed:
            self.records.append(record)
            self._changed.notify_all()

    def wait_for(self, needle: str, timeout: float = WAIT) -> None:
        with self._changed:
            if not self._changed.wait_for(
                lambda: any(needle in r.getMessage() for r in self.records), timeout
            ):
                raise TimeoutError(f"the gateway never logged {needle!r}")


@contextmanager
def watching_log() -> Iterator[LogWatch]:
    logger = logging.getLogger("forkyard.gateway")
    watch = LogWatch()
    logger.addHandler(watch)
    try:
        yield watch
    finally:
        logger.removeHandler(watch)


class LingeringUpstream:
    """An upstream whose one streamed chat completion is complete (text, usage, `[DONE]`)
    while its body stays open until the gateway hangs up: the moment at which a program
    that stops reading at `[DONE]` (the sync openai SDK) closes its connection."""

    #: The usage its answer reports: input, output, cached tokens.
    USAGE = (11, 7, 2)

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(WAIT)
        #: Set when the gateway closed its connection (it never got the body's end).
        self.hung_up = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="lingering-upstream")

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._thread.join(WAIT)
        self._listener.close()

    @property
    def openai_base_url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}/v1"

    anthropic_base_url = openai_base_url

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            connection, _ = self._listener.accept()
            with connection:
                connection.settimeout(WAIT)
                self._read_request(connection)
                connection.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n" + _chunk(self._events())
                )
                if connection.recv(1) == b"":  # no terminating chunk is ever sent
                    self.hung_up.set()

    def _read_request(self, connection: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += connection.recv(65536) or b"\r\n\r\n"
        head, _, body = data.partition(b"\r\n\r\n")
        found = re.search(rb"content-length: *(\d+)", head, re.IGNORECASE)
        while found and len(body) < int(found.group(1)):
            body += connection.recv(65536)

    def _events(self) -> bytes:
        tokens, out, cached = self.USAGE
        usage = {
            "prompt_tokens": tokens,
            "completion_tokens": out,
            "total_tokens": tokens + out,
            "prompt_tokens_details": {"cached_tokens": cached},
        }
        base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": "m"}
        delta = {"index": 0, "delta": {"content": "all done"}, "finish_reason": "stop"}
        chunks = [{**base, "choices": [delta]}, {**base, "choices": [], "usage": usage}]
        return b"".join(f"data: {json.dumps(c)}\n\n".encode() for c in chunks) + b"data: [DONE]\n\n"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


# -- calls, as programs make them ----------------------------------------------------------


def call(
    agent: Agent,
    api: Api,
    *,
    streamed: bool,
    token: str | None = None,
    socket_path: Path | None = None,
    sent: Sent | None = None,
) -> str:
    """One model call through the gateway, as codex (openai) or Claude Code (anthropic)
    makes it; returns the reply's text. Blocking."""
    if api == "anthropic":
        with anthropic_client(agent, token=token, socket=socket_path, sent=sent) as client:
            if streamed:
                with client.messages.stream(
                    model=MODEL,
                    max_tokens=100,
                    messages=[{"role": "user", "content": PROMPT}],
                ) as stream:
                    return "".join(stream.text_stream)
            message = client.messages.create(
                model=MODEL, max_tokens=100, messages=[{"role": "user", "content": PROMPT}]
            )
            return "".join(block.text for block in message.content if block.type == "text")
    with openai_client(agent, token=token, socket=socket_path, sent=sent) as client:
        if streamed:
            chunks = client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": PROMPT}], stream=True
            )
            return "".join(
                chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices
            )
        completion = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": PROMPT}]
        )
        return completion.choices[0].message.content or ""


StatusError = openai.APIStatusError | anthropic.APIStatusError


def failing_call(agent: Agent, api: Api, *, streamed: bool) -> StatusError:
    """The HTTP error a call raised, checked to be of the SDK of `api`."""
    with pytest.raises((openai.APIStatusError, anthropic.APIStatusError)) as raised:
        call(agent, api, streamed=streamed)
    error = raised.value
    expected = openai.APIStatusError if api == "openai" else anthropic.APIStatusError
    assert isinstance(error, expected), f"a program of {api} got {type(error).__name__}"
    assert isinstance(error, (openai.APIStatusError, anthropic.APIStatusError))  # for mypy
    return error


def wait_until_gone(path: Path) -> None:
    """A revoked grant's socket is closed and unlinked on the gateway's thread just after
    `revoke` returns; nothing there signals it, so this polls (every 10 ms, bounded)."""
    deadline = time.monotonic() + WAIT
    pause = threading.Event()
    while path.exists():
        assert time.monotonic() < deadline, f"{path} is still there after revoke"
        pause.wait(0.01)


class UnixHTTP(http.client.HTTPConnection):
    """One HTTP/1.1 connection on a Unix socket that never reconnects by itself, to see
    what a connection kept alive across a revoke gets."""

    auto_open = 0

    def __init__(self, path: Path) -> None:
        super().__init__("gateway", timeout=WAIT)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(WAIT)
            sock.connect(str(self.socket_path))
        except OSError:
            sock.close()
            raise
        self.sock = sock

    def chat(self, token: str) -> http.client.HTTPResponse:
        body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": PROMPT}]})
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self.request("POST", "/chat/completions", body=body, headers=headers)
        return self.getresponse()


def raw_exchange(path: Path, data: bytes) -> bytes:
    """Send `data` on the socket, close our side, and read until the gateway closes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(WAIT)
        sock.connect(str(path))
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the gateway refused before reading it all
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
        return received
