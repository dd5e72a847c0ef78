"""The model gateway and the Gemini API, driven as Gemini CLI drives it: the token in
`x-goog-api-key`, `models/M:generateContent` and `:streamGenerateContent?alt=sse`, against
the fake Gemini server. What is checked is what someone would notice: the agent's
spending as the daemon sees it (thinking tokens included), the key the provider
receives (never the token), and refusals and failures Gemini CLI can read."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx2
import pytest

from forkyard.gateway.apis import without_key_parameter
from tests.fakes import gateway as fakes
from tests.fakes.gateway import REAL_KEY, WAIT, Agent, GatewayUnderTest
from tests.fakes.gemini_server import THOUGHTS_TOKENS, FakeGeminiServer
from tests.fakes.model_server import Reply

gateway = fakes.gateway

pytestmark = pytest.mark.timeout(30)

MODEL = "gemini-fake-pro"
CALL = f"/v1beta/models/{MODEL}:generateContent"
STREAM = f"/v1beta/models/{MODEL}:streamGenerateContent?alt=sse"
BODY = {"contents": [{"role": "user", "parts": [{"text": "Say hello"}]}]}


@dataclass(frozen=True)
class _At:
    """A grant's upstream at the fake Gemini server's URL."""

    url: str

    @property
    def openai_base_url(self) -> str:
        return self.url

    @property
    def anthropic_base_url(self) -> str:
        return self.url


@pytest.fixture
def gemini() -> Iterator[FakeGeminiServer]:
    with FakeGeminiServer() as server:
        yield server


def grant(gateway: GatewayUnderTest, gemini: FakeGeminiServer) -> Agent:
    return gateway.grant(_At(gemini.url))


def post(agent: Agent, target: str, *, token: str | None = None) -> httpx2.Response:
    """One call as Gemini CLI makes it, on the agent's socket; the body read whole."""
    headers = {"x-goog-api-key": token or agent.token, "content-type": "application/json"}
    transport = httpx2.HTTPTransport(uds=str(agent.socket))
    with httpx2.Client(transport=transport, timeout=WAIT) as client:
        return client.post(f"http://gateway{target}", headers=headers, content=json.dumps(BODY))


def sse_events(response: httpx2.Response) -> list[dict[str, Any]]:
    lines = response.text.splitlines()
    return [json.loads(line[5:]) for line in lines if line.startswith("data:")]


def text_of(events: list[dict[str, Any]]) -> str:
    return "".join(
        part.get("text", "")
        for event in events
        for part in event["candidates"][0]["content"]["parts"]
    )


@pytest.mark.parametrize("target", [CALL, STREAM], ids=["whole", "streamed"])
def test_a_gemini_call_is_metered_as_the_server_reported_it(
    gateway: GatewayUnderTest, gemini: FakeGeminiServer, target: str
) -> None:
    """Prompt, cached and output tokens are the provider's own; thinking tokens count as
    output (Gemini bills them so); the model is the one named in the path."""
    agent = grant(gateway, gemini)
    gemini.script(Reply(text="Hello there, friend.", cached_tokens=3))

    response = post(agent, target)

    assert response.status_code == 200, response.text
    events = sse_events(response) if target == STREAM else [response.json()]
    if target == STREAM:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert len(events) > 1
    assert text_of(events) == "Hello there, friend."
    (reported,) = gemini.reported_usage
    (usage,) = agent.metered.wait(1)
    assert (usage.input_tokens, usage.output_tokens, usage.cached_tokens) == (
        reported.prompt,
        reported.candidates + THOUGHTS_TOKENS,
        3,
    )


def test_the_real_key_goes_upstream_in_gemini_s_header_and_never_the_token(
    gateway: GatewayUnderTest, gemini: FakeGeminiServer
) -> None:
    agent = grant(gateway, gemini)

    response = post(agent, f"/v1beta/models/{MODEL}:generateContent?key={agent.token}&x=1")

    assert response.status_code == 200, response.text
    (request,) = gemini.requests
    assert request.headers["x-goog-api-key"] == REAL_KEY
    assert "authorization" not in request.headers
    assert agent.token not in json.dumps(request.headers)
    assert request.query == "x=1"


def test_a_key_in_the_query_is_no_token() -> None:
    """Only headers carry a token: `?key=` is dropped, whatever else the query says."""
    assert without_key_parameter("/m:generateContent?key=fy-gw-x") == "/m:generateContent"
    assert without_key_parameter("/m?alt=sse&key=k&b=2") == "/m?alt=sse&b=2"
    assert without_key_parameter("/m?keys=1") == "/m?keys=1"


@pytest.mark.parametrize("token", ["fy-gw-wrong", None], ids=["wrong", "in-query-only"])
def test_a_wrong_token_is_refused_in_gemini_s_shape(
    gateway: GatewayUnderTest, gemini: FakeGeminiServer, token: str | None
) -> None:
    agent = grant(gateway, gemini)
    transport = httpx2.HTTPTransport(uds=str(agent.socket))
    headers = {"x-goog-api-key": token} if token else {}
    with httpx2.Client(transport=transport, timeout=WAIT) as client:
        response = client.post(
            f"http://gateway{CALL}?key={agent.token}", headers=headers, content=json.dumps(BODY)
        )

    assert response.status_code == 401
    error = response.json()["error"]
    assert (error["code"], error["status"]) == (401, "UNAUTHENTICATED")
    assert "refuses this token" in error["message"]
    assert gemini.requests == []


def test_a_budget_refusal_and_an_unreachable_server_are_gemini_errors(
    gateway: GatewayUnderTest, gemini: FakeGeminiServer
) -> None:
    """Gemini CLI shows `error.message`: the person reads why the gateway said no."""
    broke = gateway.grant(_At(gemini.url), refusal=lambda _spent: "the budget is spent")
    gone = gateway.grant(_At("http://127.0.0.1:9"))

    refused = post(broke, STREAM)
    unreachable = post(gone, STREAM)

    assert refused.status_code == 402
    assert refused.json()["error"]["message"] == "the budget is spent"
    assert refused.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert unreachable.status_code == 502
    assert unreachable.json()["error"]["status"] == "UNAVAILABLE"
    assert "cannot reach the model server" in unreachable.json()["error"]["message"]
    assert gemini.requests == []


def test_an_upstream_error_reaches_the_client_with_the_key_scrubbed(
    gateway: GatewayUnderTest, gemini: FakeGeminiServer
) -> None:
    agent = grant(gateway, gemini)
    gemini.script(Reply(status=429, error_message=f"quota exhausted for {REAL_KEY}"))

    response = post(agent, STREAM)

    assert response.status_code == 429
    error = response.json()["error"]
    assert error["status"] == "RESOURCE_EXHAUSTED"
    assert REAL_KEY not in response.text and "[redacted]" in error["message"]
    assert agent.metered.usages == []
