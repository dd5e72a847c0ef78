"""A real HTTP server on 127.0.0.1 that speaks the Gemini API, for Gemini CLI and the
gateway's tests.

Tests script the main conversation's answers with `Reply` (text, function calls, an
error status, cached tokens), point a client at `server.url` (Gemini CLI:
`GOOGLE_GEMINI_BASE_URL`), and read back what was sent (`server.requests`).

    with FakeGeminiServer() as server:
        server.script(Reply(tool_calls=[("write_file", {...})]), Reply(text="Done."))

Routes: `POST /v1beta/models/M:generateContent` (one JSON answer) and
`M:streamGenerateContent?alt=sse` (server-sent events, the text word by word, the
usage as a running count in each chunk and complete in the last, with its
`finishReason`). Gemini CLI also makes side calls of its own with a JSON schema (the
model router, the next-speaker check): those are answered without using the script,
with one JSON object that satisfies both (`SIDE_ANSWER`), so a script holds only the
turns a test cares about.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
from collections import deque
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from tests.fakes.model_server import Reply

#: The side calls' answer: the router picks flash, the next speaker is the user.
SIDE_ANSWER = {"reasoning": "fake", "model_choice": "flash", "next_speaker": "user"}
#: Thinking tokens every answer reports (counted as output, as Gemini bills them).
THOUGHTS_TOKENS = 2

_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 429: "RESOURCE_EXHAUSTED"}


@dataclass(frozen=True)
class GeminiRequest:
    path: str
    query: str
    headers: dict[str, str]
    body: Any
    raw: bytes

    @property
    def model(self) -> str:
        return self.path.rsplit("/", 1)[-1].split(":", 1)[0]

    @property
    def side_call(self) -> bool:
        """A call of Gemini CLI's own that wants a JSON object (router, next speaker)."""
        config = self.body.get("generationConfig") if isinstance(self.body, dict) else None
        return isinstance(config, dict) and (
            config.get("responseMimeType") == "application/json"
            or "responseJsonSchema" in config
            or "responseSchema" in config
        )

    @property
    def text(self) -> str:
        return self.raw.decode(errors="replace")


@dataclass(frozen=True)
class GeminiUsage:
    """What one answer reported: prompt (cached included), candidates, thoughts, cached."""

    prompt: int
    candidates: int
    thoughts: int
    cached: int

    @property
    def metadata(self) -> dict[str, int]:
        return {
            "promptTokenCount": self.prompt,
            "candidatesTokenCount": self.candidates,
            "thoughtsTokenCount": self.thoughts,
            "cachedContentTokenCount": self.cached,
            "totalTokenCount": self.prompt + self.candidates + self.thoughts,
        }


class FakeGeminiServer:
    """The scripted Gemini server; an empty script answers "OK." (a model that is done)."""

    def __init__(self) -> None:
        self._replies: deque[Reply] = deque()
        self._requests: list[GeminiRequest] = []
        self._usage: list[GeminiUsage] = []
        self._lock = threading.Condition()
        self._httpd = _HTTPServer(("127.0.0.1", 0), _Handler, self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self._httpd.shutdown()
        self._thread.join()
        self._httpd.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def script(self, *replies: Reply | str) -> None:
        with self._lock:
            self._replies.extend(Reply(text=r) if isinstance(r, str) else r for r in replies)

    @property
    def requests(self) -> list[GeminiRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def reported_usage(self) -> list[GeminiUsage]:
        """Usage of every answer, recorded before the client could read it."""
        with self._lock:
            return list(self._usage)

    def _take(self, request: GeminiRequest) -> Reply:
        with self._lock:
            self._requests.append(request)
            if request.side_call:
                return Reply(text=json.dumps(SIDE_ANSWER))
            return self._replies.popleft() if self._replies else Reply(text="OK.")

    def _report(self, usage: GeminiUsage) -> None:
        with self._lock:
            self._usage.append(usage)


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], handler: type[_Handler], fake: FakeGeminiServer
    ) -> None:
        self.fake = fake
        super().__init__(address, handler)


def _parts(reply: Reply) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [{"text": reply.text}] if reply.text else []
    for index, (name, args) in enumerate(reply.tool_calls):
        arguments = json.loads(args) if isinstance(args, str) else dict(args)
        parts.append({"functionCall": {"id": f"call-{index}", "name": name, "args": arguments}})
    return parts


def _chunk(parts: list[dict[str, Any]], usage: dict[str, int], model: str, *, last: bool) -> bytes:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
    if last:
        candidate["finishReason"] = "STOP"
    event = {"candidates": [candidate], "usageMetadata": usage, "modelVersion": model}
    return json.dumps(event).encode()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path, _, query = self.path.partition("?")
        body: Any = None
        with contextlib.suppress(ValueError):
            body = json.loads(raw)
        request = GeminiRequest(
            path=path,
            query=query,
            headers={name.lower(): value for name, value in self.headers.items()},
            body=body,
            raw=raw,
        )
        if not path.endswith((":generateContent", ":streamGenerateContent")):
            self._json(404, _error(404, f"no route {path}"))
            return
        reply = self.server.fake._take(request)
        if reply.status != 200:
            self._json(reply.status, _error(reply.status, reply.error_message or "scripted"))
            return
        prompt = max(1, len(raw) // 4)
        parts = _parts(reply)
        usage = GeminiUsage(
            prompt=prompt,
            candidates=len(reply.text.split()) + 10 * len(reply.tool_calls) or 1,
            thoughts=THOUGHTS_TOKENS,
            cached=min(reply.cached_tokens, prompt),
        )
        self.server.fake._report(usage)
        if path.endswith(":generateContent"):
            self._send(
                200, "application/json", _chunk(parts, usage.metadata, request.model, last=True)
            )
            return
        if "alt=sse" not in query.split("&"):
            whole = b"[" + _chunk(parts, usage.metadata, request.model, last=True) + b"]"
            self._send(200, "application/json", whole)
            return
        self._stream(parts, usage, request.model)

    def _stream(self, parts: list[dict[str, Any]], usage: GeminiUsage, model: str) -> None:
        """Text word by word, then the function calls; the usage complete only last."""
        pieces: list[dict[str, Any]] = []
        for part in parts:
            if "text" in part:
                words = part["text"].split(" ")
                pieces.extend({"text": w + " "} for w in words[:-1])
                pieces.append({"text": words[-1]})
            else:
                pieces.append(part)
        running = {"promptTokenCount": usage.prompt, "totalTokenCount": usage.prompt}
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for index, piece in enumerate(pieces or [{"text": ""}]):
            last = index == max(len(pieces), 1) - 1
            data = _chunk([piece], usage.metadata if last else running, model, last=last)
            frame = b"data: " + data + b"\r\n\r\n"
            self.wfile.write(b"%x\r\n%s\r\n" % (len(frame), frame))
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _json(self, status: int, payload: object) -> None:
        self._send(status, "application/json", json.dumps(payload).encode())

    def _send(self, status: int, content_type: str, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()


def _error(status: int, message: str) -> dict[str, Any]:
    return {
        "error": {"code": status, "message": message, "status": _STATUS.get(status, "INTERNAL")}
    }
