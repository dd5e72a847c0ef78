"""The gateway's forwarding: a request in (`http11`), the upstream's answer out (httpx).

Each request must carry a live grant's token, in whichever header its SDK uses. Before
a model call starts the grant is asked whether a budget refuses it; the call then goes
to the grant's upstream with the real key in place of the token, and its answer comes
back byte for byte (a stream as it streams) while its usage is read on the way. What the
upstream gets wrong reaches the agent as an error of the API it speaks: a hang as a
timeout, garbage as a bad gateway, an error body with the key scrubbed out of it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial

import anyio
import anyio.abc
import h11
import httpx2

from forkyard.gateway.apis import (
    GEMINI_KEY_HEADER,
    Api,
    Dialect,
    StreamMeter,
    api_of,
    dialect_of,
    error_body,
    guessed_dialect,
    looks_like_event_stream,
    presented_token,
    streams,
    upstream_auth,
    usage_of,
    with_usage_requested,
    without_key_parameter,
)
from forkyard.gateway.grants import Grant, GrantTable
from forkyard.gateway.http11 import Exchange, serve_connection
from forkyard.models.types import Usage

logger = logging.getLogger("forkyard.gateway")

#: Bounds on a whole (non-streamed) upstream answer.
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
#: How much of a prompt the log keeps when `log_prompts` is on.
LOGGED_PROMPT_CHARS = 4000
CONNECT_TIMEOUT_SECONDS = 15.0
#: Headers that belong to one hop, or that the gateway sets itself.
_REQUEST_DROPPED = frozenset(
    {
        "host",
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "upgrade",
        "content-length",
        "accept-encoding",
        "authorization",
        "x-api-key",
        GEMINI_KEY_HEADER,
        "proxy-authorization",
    }
)
_RESPONSE_DROPPED = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}
)
REDACTED = "[redacted]"


class GatewayProxy:
    """Serves connections; one `httpx2.AsyncClient` (its pool) for every upstream."""

    def __init__(self, grants: GrantTable, client: httpx2.AsyncClient) -> None:
        self.grants = grants
        self.client = client

    async def connection(self, stream: anyio.abc.ByteStream, owner: Grant) -> None:
        """Requests on one connection to `owner`'s socket; only `owner`'s token is
        valid here."""
        await serve_connection(stream, partial(self.handle, owner=owner))

    async def handle(self, exchange: Exchange, owner: Grant) -> None:
        headers = exchange.headers
        grant = self.grants.lookup(presented_token(headers))
        if grant is not owner:
            dialect = guessed_dialect(exchange.target, headers)
            why = "revoked, or unknown" if grant is None else "another agent's"
            message = f"the model gateway refuses this token ({why})"
            await _error(exchange, dialect, 401, message, "invalid_api_key")
            return
        api = api_of(exchange.target, anthropic_upstream=grant.anthropic_upstream)
        dialect = dialect_of(api, headers, anthropic_upstream=grant.anthropic_upstream)
        body, model, streamed = exchange.body, "", False
        if exchange.method == "POST" and api is not Api.OTHER:
            request = _json_object(body)
            if request is None:
                await _error(exchange, dialect, 400, "the request body is not a JSON object")
                return
            if (refusal := grant.check()) is not None:
                logger.info(
                    "%s: %s refused: %s", grant.label, exchange.target.split("?")[0], refusal
                )
                await _error(exchange, dialect, 402, refusal, "budget_reached")
                return
            model = str(request.get("model") or "") or _gemini_model(api, exchange.target)
            streamed = streams(api, exchange.target, request)
            asked = with_usage_requested(api, request)
            if asked is not request:
                body = json.dumps(asked).encode()
            if grant.log_prompts:
                logger.info(
                    "%s prompt: %s",
                    grant.label,
                    body[:LOGGED_PROMPT_CHARS].decode(errors="replace"),
                )
        await self.forward(exchange, grant, api, dialect, body=body, model=model, streamed=streamed)

    async def forward(
        self,
        exchange: Exchange,
        grant: Grant,
        api: Api,
        dialect: Dialect,
        *,
        body: bytes,
        model: str,
        streamed: bool,
    ) -> None:
        started = time.monotonic()
        key = grant.key()
        headers = {
            name: value for name, value in exchange.headers.items() if name not in _REQUEST_DROPPED
        }
        headers["accept-encoding"] = "identity"
        if key:
            bearer = dialect == "anthropic" and grant.bearer
            headers.update(upstream_auth(key, "openai" if bearer else dialect))
        scrub = _Scrubber(key)
        url = grant.upstream.rstrip("/") + without_key_parameter(exchange.target)
        timeout = httpx2.Timeout(grant.timeout, connect=min(CONNECT_TIMEOUT_SECONDS, grant.timeout))
        request = self.client.build_request(
            exchange.method, url, headers=headers, content=body, timeout=timeout
        )
        try:
            response = await self.client.send(request, stream=True)
        except httpx2.TimeoutException:
            await _error(
                exchange, dialect, 504, f"the model server did not answer in {grant.timeout:g} s"
            )
            return
        except httpx2.HTTPError as error:
            message = scrub(f"cannot reach the model server: {type(error).__name__}: {error}")
            await _error(exchange, dialect, 502, message)
            return
        answer = _Answer(exchange, response, api, dialect, scrub, streamed, _Recorder(grant, model))
        try:
            await answer.relay()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(CONNECT_TIMEOUT_SECONDS):
                await response.aclose()
            # Also when the program hung up first: every call it made is in the log.
            usage = answer.recorder.usage
            logger.info(
                "%s: %s %s -> %d in %.0f ms%s",
                grant.label,
                exchange.method,
                exchange.target.split("?", 1)[0],
                response.status_code,
                (time.monotonic() - started) * 1000,
                f", {usage.input_tokens} in / {usage.output_tokens} out" if usage else "",
            )


@dataclass
class _Answer:
    """The upstream's answer to one exchange, on its way to the agent."""

    exchange: Exchange
    response: httpx2.Response
    api: Api
    dialect: Dialect
    scrub: _Scrubber
    streamed: bool
    recorder: _Recorder

    async def relay(self) -> None:
        """Send it on, its usage recorded. A failure after the answer began leaves the
        connection to be closed: the client's SDK sees a stream cut short, an error of
        its own kind."""
        exchange, dialect = self.exchange, self.dialect
        try:
            await self._send()
        except httpx2.TimeoutException:
            if exchange.connection.our_state is h11.SEND_RESPONSE:
                await _error(exchange, dialect, 504, "the model server stopped answering")
        except httpx2.HTTPError as error:
            if exchange.connection.our_state is h11.SEND_RESPONSE:
                message = self.scrub(f"the model server broke off: {error}")
                await _error(exchange, dialect, 502, message)

    async def _send(self) -> None:
        """Its usage is recorded before the part of it that tells the client the call
        is over: a program that exits on it finds its usage counted."""
        response = self.response
        content_type = response.headers.get("content-type", "")
        chunks = response.aiter_raw()
        if response.status_code >= 400 or not (self.streamed or "event-stream" in content_type):
            await self._whole(await _read_bounded(chunks))
            return
        first = await anext(chunks, b"")
        if not looks_like_event_stream(first):
            sample = self.scrub(first[:200].decode(errors="replace"))
            message = f"the model server's stream is not server-sent events: {sample!r}"
            await _error(self.exchange, self.dialect, 502, message)
            return
        meter = StreamMeter(self.api)
        await self.exchange.send(
            h11.Response(status_code=response.status_code, headers=_passed(response))
        )
        try:
            async for chunk in _prepend(first, chunks):
                meter.feed(chunk)
                if meter.final and meter.usage is not None:
                    self.recorder.record(meter.usage)
                await self.exchange.send(h11.Data(data=chunk))
        finally:
            # A stream cut short still cost what it reported so far (Anthropic's input
            # tokens come first).
            if meter.usage is not None:
                self.recorder.record(meter.usage)
        await self.exchange.send(h11.EndOfMessage())

    async def _whole(self, whole: bytes | None) -> None:
        exchange, dialect = self.exchange, self.dialect
        if whole is None:
            await _error(exchange, dialect, 502, "the model server's answer is too large")
            return
        status = self.response.status_code
        if status < 400 and self.api is not Api.OTHER:
            try:
                payload = json.loads(whole)
            except ValueError:
                sample = self.scrub(whole[:200].decode(errors="replace"))
                message = f"the model server's answer is not JSON: {sample!r}"
                await _error(exchange, dialect, 502, message)
                return
            if (usage := usage_of(self.api, payload)) is not None:
                self.recorder.record(usage)
        if status >= 400:
            whole = self.scrub(whole.decode(errors="replace")).encode()
        headers = [*_passed(self.response), ("content-length", str(len(whole)))]
        await exchange.send(h11.Response(status_code=status, headers=headers))
        await exchange.send(h11.Data(data=whole))
        await exchange.send(h11.EndOfMessage())


async def _error(
    exchange: Exchange, dialect: Dialect, status: int, message: str, code: str | None = None
) -> None:
    """Answer with an error of the API the client speaks."""
    await exchange.answer(status, error_body(dialect, status, message, code), "application/json")


def _gemini_model(api: Api, target: str) -> str:
    """A Gemini call names its model in its path (`/v1beta/models/M:generateContent`)."""
    if api is not Api.GEMINI:
        return ""
    name = target.split("?", 1)[0].rsplit("/", 1)[-1]
    return name.split(":", 1)[0]


def _json_object(body: bytes) -> dict[str, object] | None:
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class _Recorder:
    """Meters one call, once, as soon as its final usage is known."""

    def __init__(self, grant: Grant, model: str) -> None:
        self.grant = grant
        self.model = model
        self.usage: Usage | None = None

    def record(self, usage: Usage) -> None:
        if self.usage is None:
            self.usage = usage
            self.grant.meter(self.model, usage)


class _Scrubber:
    """Takes the real key out of any text the upstream sends back (some quote it)."""

    def __init__(self, key: str | None) -> None:
        self.key = key if key and len(key) >= 4 else None

    def __call__(self, text: str) -> str:
        return text.replace(self.key, REDACTED) if self.key else text


def _passed(response: httpx2.Response) -> list[tuple[str, str]]:
    return [
        (name, value)
        for name, value in response.headers.items()
        if name.lower() not in _RESPONSE_DROPPED
    ]


async def _read_bounded(chunks: AsyncIterator[bytes]) -> bytes | None:
    parts, size = [], 0
    async for chunk in chunks:
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            return None
        parts.append(chunk)
    return b"".join(parts)


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if first:
        yield first
    async for chunk in rest:
        yield chunk
