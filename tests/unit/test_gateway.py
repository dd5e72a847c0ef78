"""The model gateway, driven as an agent's program drives it: the real openai and
anthropic SDKs on a grant's Unix socket, the fake model server as the upstream.

What is checked is what someone would notice: an agent's spending as the daemon sees it,
the key the provider receives (never the token, which is all the agent ever holds),
refusals an agent's program understands (revoked, foreign or over-budget tokens), the
upstream's failures as errors of the API the program speaks, logs a user may share
without leaking anything, and a gateway that survives hostile bytes and hung-up clients.
"""

from __future__ import annotations

import http.client
import json
import logging
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import anthropic
import openai
import pytest

from forkyard.agents.budget import Budget, budget_reached
from forkyard.gateway.host import Gateway
from forkyard.models.config import ModelPrice
from tests.fakes import gateway as fakes
from tests.fakes.gateway import (
    APIS,
    MODEL,
    PROMPT,
    REAL_KEY,
    WAIT,
    Api,
    GatewayUnderTest,
    LingeringUpstream,
    Sent,
    UnixHTTP,
    anthropic_client,
    call,
    failing_call,
    openai_client,
    raw_exchange,
    wait_until_gone,
    watching_log,
)
from tests.fakes.model_server import Reply
from tests.fakes.responses_server import ResponsesModelServer

gateway = fakes.gateway
upstream = fakes.upstream

PRICE = ModelPrice(input_per_mtok=3.0, output_per_mtok=15.0, cached_per_mtok=0.3)

pytestmark = pytest.mark.timeout(30)


def priced(model: str) -> ModelPrice | None:
    return PRICE if model == MODEL else None


# -- metering -----------------------------------------------------------------------------


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("api", APIS)
def test_the_usage_metered_is_what_the_model_server_reported(
    gateway: GatewayUnderTest, upstream: ResponsesModelServer, api: Api, streamed: bool
) -> None:
    """The daemon's figure for an agent's spending is the provider's own, cached tokens
    and cost included, call by call."""
    agent = gateway.grant(upstream, anthropic_upstream=api == "anthropic", price=priced)
    upstream.script(
        Reply(text="First answer, four words.", cached_tokens=3),
        Reply(text="Second answer here.", cached_tokens=0),
    )

    assert call(agent, api, streamed=streamed) == "First answer, four words."
    assert call(agent, api, streamed=streamed) == "Second answer here."

    usages = agent.metered.wait(2)
    reported = upstream.reported_usage
    assert len(reported) == 2
    assert [(u.input_tokens, u.output_tokens, u.cached_tokens) for u in usages] == [
        (r.input_tokens, r.output_tokens, r.cached_tokens) for r in reported
    ]
    assert usages[0].cached_tokens == 3
    for usage in usages:
        expected = (
            (usage.input_tokens - usage.cached_tokens) * PRICE.input_per_mtok
            + usage.cached_tokens * (PRICE.cached_per_mtok or 0.0)
            + usage.output_tokens * PRICE.output_per_mtok
        ) / 1_000_000
        assert usage.cost_usd == pytest.approx(expected)


def test_a_streamed_chat_completion_is_asked_for_its_usage(
    gateway: GatewayUnderTest, upstream: ResponsesModelServer
) -> None:
    """A program that streams without `stream_options` would leave its calls unmetered:
    the gateway asks for the usage on its behalf, and the text is unchanged."""
    agent = gateway.grant(upstream)
    upstream.script(Reply(text="streamed words here"))

    assert call(agent, "openai", streamed=True) == "streamed words here"

    body = upstream.last_request.body
    assert body["stream_options"] == {"include_usage": True}
    assert body["messages"] == [{"role": "user", "content": PROMPT}]
    assert agent.metered.wait(1)[0].output_tokens == upstream.reported_usage[0].output_tokens


def test_a_streamed_responses_call_is_metered_from_its_completed_event(
    gateway: GatewayUnderTest, upstream: ResponsesModelServer
) -> None:
    """Codex speaks only the Responses API; its calls count as the model reported them
    in `response.completed`."""
    agent = gateway.grant(upstream, price=priced)
    upstream.script(Reply(text="Done with the parser."))

    with openai_client(agent) as client:
        events = list(client.responses.create(model=MODEL, input=PROMPT, stream=True))
    completed = [event for event in events if event.type == "response.completed"]
    assert len(completed) == 1
    seen = completed[0].response.usage
    assert seen is not None

    (usage,) = agent.metered.wait(1)
    assert (usage.input_tokens, usage.output_tokens) == (seen.input_tokens, seen.output_tokens)
    assert usage.input_tokens > 0 and usage.output_tokens > 0
    assert usage.cost_usd is not None and usage.cost_usd > 0


def test_the_cost_of_a_model_without_a_price_is_unknown(
    gateway: GatewayUnderTest, upstream: ResponsesModelServer
) -> None:
    """An unpriced model's calls are counted in tokens, their cost left unknown (None),
    never guessed as free."""
    agent = gateway.grant(upstream)
    upstream.script(Reply(text="hello"))

    call(agent, "openai", streamed=False)

    (usage,) = agent.metered.wait(1)
    assert usage.cost_usd is None
    assert usage.input_tokens == upstream.reported_usage[0].input_tokens


# -- the key and the token ------------------------------------------------------------------


@pytest.mark.parametrize("api", APIS)
def test_the_provider_gets_the_real_key_and_never_the_token(
    gateway: GatewayUnderTest, upstream: ResponsesModelServer, api: Api
) -> None:
    """The agent holds only its token; the provider sees the key in its API's header."""
    agent = gateway.grant(upstream, anthropic_upstream=api == "anthropic")
    upstream.script(Reply(text="ok"))
    sent = Sent()

    call(agent, api, streamed=False, sent=sent)

    (client_headers,) = sent.headers
    (received,) = upstream.requests
    if api == "openai":
        assert client_headers["authorization"] == f"Bearer {agent.token}"
        assert received.headers["authorization"] == f"Bearer {REAL_KEY}"
        assert "x-api-key" not in received.headers
    else:
        # This SDK sends its key as a bearer token, Claude Code in `x-api-key`.
        presented = client_headers.get("x-api-key") or client_headers["authorization"]
        assert presented.removeprefix("Bearer ") == agent.token
        assert received.headers["x-api-key"] == REAL_KEY
        assert "authorization" not in received.headers
    assert agent.token not in json.dumps(dict(received.headers))
    assert agent.token.encode() not in received.raw


# -- refused tokens -----------------------------------------------------------------------------


def test_a_revoked_token_reaches_nothing(
    gateway: GatewayUnderTest, upstream: ResponsesModelServer
) -> None:
    """Once a run ends its program can reach no model: its socket is gone, the
    connection it kept alive is dropped, and its token is refused on any other agent's
    socket."""
    agent, other = gateway.grant(upstream), gateway.grant(upstream)
    upstream.script(Reply(text="before"))
    kept = UnixHTTP(agent.socket)
    kept.connect()
    try:
        first = kept.chat(agent.token)
        assert first.status == 200 and b"before" in first.read()

        gateway.gateway.revoke(agent.token)
        wait_until_gone(agent.socket)
        try:
            again = kept.chat(agent.token)
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            pass  # dropped: what the gateway does on revoke
        else:
            assert again.status == 401, "a kept-alive connection outlived its grant"
    finally:
        kept.close()

    with pytest.raises((FileNotFoundError, ConnectionRefusedError)):
        UnixHTTP(agent.socket).connect()
    with pytest.raises(openai.AuthenticationError, match="revoked"):
        call(agent, "openai", streamed=False, socket_path=other.socket)
    with pytest.raises(anthropic.AuthenticationError, match="revoked"):
        call(agent, "anthropic", streamed=False, socket_path=other.socket)
    assert len(upstream.requests) == 1
    assert gateway.gateway.live_sockets() == 1


@pytest.mark.parametrize("api", APIS)
def test_another_agents_token_is_refused_on_this_agents_socket(
    gateway: GatewayUnderTest, upstream: ResponsesModelServer, api: Api
) -> None:
    """A program that learnt another agent's token cannot spend that agent's budget
    through its own socket."""
    anthropic_upstream = api == "anthropic"
    mine = gateway.grant(upstream, anthropic_upstream=anthropic_upstream)
    theirs = gateway.grant(upstream, anthropic_upstream=anthropic_upstream)

    refused = openai.AuthenticationError if api == "openai" else anthropic.AuthenticationError
    with pytest.raises(refused, match="another agent's"):
        call(mine, api, streamed=False, token=theirs.token)
    assert upstream.requests == []
    assert mine.metered.usages == [] and theirs.metered.usages == []


# -- budgets --------------------------------------------------------------------------------


@pytest.mark.parametrize("api", APIS)
def test_a_refused_budget_answers_402_and_never_calls_the_model(
    gateway: GatewayUnderTest, upstream: ResponsesModelServer, api: Api
) -> None:
    """An agent over its budget gets the reason as its API's error, every time; the
    daemon hears of the refusal once."""
    reason = "budget reached ($1.0000 of $1.0000)"
    agent = gateway.grant(upstream, anthropic_upstream=api == "anthropic", refusal=lambda _: reason)

    for streamed in (False, True):
        error = failing_call(agent, api, streamed=streamed)
        assert error.status_code == 402
        assert reason in error.message
        body = error.body
        assert isinstance(body, dict)
        shaped = body if api == "openai" else body["error"]
        assert shaped["message"] == reason
        if api == "anthropic":
            assert body["type"] == "error"

    assert agent.metered.refusals == [reason]
    assert upstream.requests == []
    assert agent.metered.usages == []


def test_a_budget_stops_the_call_after_the_one_that_crossed_it(
    gateway: GatewayUnderTest, upstream: ResponsesModelServer
) -> None:
    """With the daemon's own budget check, what the first call spent refuses the next."""
    budget = Budget(max_tokens=5)
    agent = gateway.grant(
        upstream, refusal=lambda spent: budget_reached(spent, budget), price=priced
    )
    upstream.script(Reply(text="a long enough answer to cross the budget"))

    call(agent, "openai", streamed=False)
    agent.metered.wait(1)
    with pytest.raises(openai.APIStatusError, match="budget reached") as raised:
        call(agent, "openai", streamed=False)

    assert raised.value.status_code == 402
    assert len(agent.metered.refusals) == 1
    assert len(upstream.requests) == 1


# -- the upstream's failures ---------------------------------------------------------------------

STREAMED = pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])


@STREAMED
@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("status", [429, 500])
def test_an_upstream_error_reaches_the_program_as_its_apis_error(
    gateway: GatewayUnderTest, upstream: ResponsesModelServer, api: Api, streamed: bool, status: int
) -> None:
    """A rate limit stays a rate limit (the program backs off), a server error stays one."""
    agent = gateway.grant(upstream, anthropic_upstream=api == "anthropic")
    upstream.script(Reply(status=status, error_message=f"scripted {status}"))

    kinds = {
        ("openai", 429): openai.RateLimitError,
        ("openai", 500): openai.InternalServerError,
        ("anthropic", 429): anthropic.RateLimitError,
        ("anthropic", 500): anthropic.InternalServerError,
    }
    with pytest.raises(kinds[api, status], match=f"scripted {status}"):
        call(agent, api, streamed=streamed)
    assert len(upstream.requests) == 1


@STREAMED
@pytest.mark.parametrize("api", APIS)
def test_a_hung_model_server_is_a_timeout_of_the_programs_api(
    gateway: GatewayUnderTest, upstream: ResponsesModelServer, api: Api, streamed: bool
) -> None:
    """A model that never answers costs the agent the grant's timeout, not its whole run."""
    agent = gateway.grant(upstream, anthropic_upstream=api == "anthropic", timeout=1.0)
    (reply,) = upstream.script(Reply(hang=True))

    started = time.monotonic()
    error = failing_call(agent, api, streamed=streamed)

    assert error.status_code == 504
    assert time.monotonic() - started < 5
    reply.wait_disconnected()
    assert agent.metered.usages == []


@STREAMED
@pytest.mark.parametrize("api", APIS)
def test_garbage_from_the_model_server_is_a_bad_gateway(
    gateway: GatewayUnderTest, upstream: ResponsesModelServer, api: Api, streamed: bool
) -> None:
    """An HTML page where a model's answer should be (a captive proxy) is a 502 the
    program reports, not a crash of its parser."""
    agent = gateway.grant(upstream, anthropic_upstream=api == "anthropic")
    upstream.script(Reply(garbage=True))

    error = failing_call(agent, api, streamed=streamed)

    assert error.status_code == 502
    assert "It works" in error.message
    assert agent.metered.usages == []


@pytest.mark.parametrize("api", APIS)
def test_an_error_quoting_the_key_reaches_the_program_scrubbed(
    gateway: GatewayUnderTest, upstream: ResponsesModelServer, api: Api
) -> None:
    """A provider's 401 repeats the key it got; the agent (and its log) sees
    "[redacted]" instead, so the key never reaches the sandbox."""
    agent = gateway.grant(upstream, anthropic_upstream=api == "anthropic")
    upstream.script(Reply(status=401))

    error = failing_call(agent, api, streamed=False)

    assert error.status_code == 401
    assert "Incorrect API key provided: [redacted]" in error.message
    assert REAL_KEY not in error.message
    assert REAL_KEY not in error.response.text
    assert REAL_KEY not in str(error.response.headers)


# -- logs -------------------------------------------------------------------------------------


@pytest.mark.parametrize("api", APIS)
def test_the_log_of_a_call_holds_no_key_token_or_prompt(
    gateway: GatewayUnderTest,
    upstream: ResponsesModelServer,
    api: Api,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A user may paste the daemon's log in a bug report: a call is logged (who, what,
    how long, how many tokens) without anything secret or private."""
    caplog.set_level(logging.INFO, logger="forkyard.gateway")
    agent = gateway.grant(upstream, anthropic_upstream=api == "anthropic")
    upstream.script(Reply(text="ok"))

    with watching_log() as log:
        call(agent, api, streamed=False)
        log.wait_for(" -> 200 ")

    text = caplog.text + "\n".join(record.getMessage() for record in log.records)
    assert agent.grant.label in text
    assert REAL_KEY not in text
    assert agent.token not in text
    assert "marmalade" not in text


def test_prompts_are_logged_when_asked(
    gateway: GatewayUnderTest, upstream: ResponsesModelServer, caplog: pytest.LogCaptureFixture
) -> None:
    """`log_prompts` is the user's choice to see what agents send their model."""
    caplog.set_level(logging.INFO, logger="forkyard.gateway")
    agent = gateway.grant(upstream, log_prompts=True)
    upstream.script(Reply(text="ok"))

    with watching_log() as log:
        call(agent, "openai", streamed=False)
        log.wait_for(" -> 200 ")

    assert "marmalade-7f3a" in caplog.text
    assert REAL_KEY not in caplog.text and agent.token not in caplog.text


# -- hostile clients ------------------------------------------------------------------------------


HOSTILE = {
    "not-http": b"\x00\xffnot http\r\n\r\n",
    "huge-header": b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
    "body-longer-than-declared": (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n"
        b"Authorization: Bearer @TOKEN@\r\n\r\n" + b"x" * 1000
    ),
    "body-cut-short": (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n"
        b'Authorization: Bearer @TOKEN@\r\n\r\n{"model": '
    ),
}


@pytest.mark.parametrize("data", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_bytes_are_refused_and_the_gateway_serves_on(
    gateway: GatewayUnderTest, upstream: ResponsesModelServer, data: bytes
) -> None:
    """Whatever an agent's program writes on its socket, it gets a 4xx or a closed
    connection, nothing reaches the model, and its next proper call works."""
    agent = gateway.grant(upstream)

    answer = raw_exchange(agent.socket, data.replace(b"@TOKEN@", agent.token.encode()))

    assert answer == b"" or answer.startswith(b"HTTP/1.1 4"), answer[:200]
    assert upstream.requests == []
    upstream.script(Reply(text="still here"))
    assert call(agent, "openai", streamed=False) == "still here"


@pytest.mark.parametrize("api", APIS)
def test_a_program_that_hangs_up_mid_stream_ends_the_upstream_call(
    gateway: GatewayUnderTest, upstream: ResponsesModelServer, api: Api
) -> None:
    """A cancelled agent's program closes its connection mid-answer; the model must stop
    generating (and billing) too, so the gateway drops its upstream connection."""
    agent = gateway.grant(upstream, anthropic_upstream=api == "anthropic")
    (reply,) = upstream.script(Reply(text="one two three four five six seven", hold=True))

    if api == "openai":
        with openai_client(agent) as client:
            chunks = client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": PROMPT}], stream=True
            )
            next(iter(chunks))
            chunks.close()
    else:
        with (
            anthropic_client(agent) as claude,
            claude.messages.stream(
                model=MODEL, max_tokens=100, messages=[{"role": "user", "content": PROMPT}]
            ) as stream,
        ):
            next(iter(stream.text_stream))

    reply.wait_disconnected()
    assert not reply.finished


def test_a_stream_cut_short_costs_what_it_reported_so_far(
    gateway: GatewayUnderTest, upstream: ResponsesModelServer
) -> None:
    """Anthropic reports a call's input tokens first: a program that hangs up mid-answer
    (cancelled) was still billed for them, and its budget must see it."""
    agent = gateway.grant(upstream, anthropic_upstream=True)
    (reply,) = upstream.script(Reply(text="one two three four five six seven", hold=True))
    with (
        anthropic_client(agent) as claude,
        claude.messages.stream(
            model=MODEL, max_tokens=100, messages=[{"role": "user", "content": PROMPT}]
        ) as stream,
    ):
        next(iter(stream.text_stream))
    reply.wait_disconnected()

    (usage,) = agent.metered.wait(1)
    assert usage.input_tokens > 0
    # What message_start said; the rest of the answer never came.
    assert usage.output_tokens <= 1


def test_a_call_is_metered_when_the_program_hangs_up_at_its_end(
    gateway: GatewayUnderTest,
) -> None:
    """The sync openai SDK stops reading at `[DONE]` and closes the connection; the
    usage it was sent just before is what the call cost and must be counted."""
    with LingeringUpstream() as lingering:
        agent = gateway.grant(lingering)
        with openai_client(agent) as client:
            chunks = client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": PROMPT}], stream=True
            )
            seen = [chunk for chunk in chunks]
        assert "".join(c.choices[0].delta.content or "" for c in seen if c.choices) == "all done"
        assert [c.usage.prompt_tokens for c in seen if c.usage] == [LingeringUpstream.USAGE[0]]
        assert lingering.hung_up.wait(WAIT), "the gateway kept its upstream call open"

        (usage,) = agent.metered.wait(1, timeout=2)
        assert (usage.input_tokens, usage.output_tokens, usage.cached_tokens) == (
            LingeringUpstream.USAGE
        )


def test_a_call_the_program_hung_up_on_at_its_end_is_logged(
    gateway: GatewayUnderTest, caplog: pytest.LogCaptureFixture
) -> None:
    """The log is where a user looks for an agent's calls (status, time, tokens): one
    that ended normally for the program must be there."""
    caplog.set_level(logging.INFO, logger="forkyard.gateway")
    with LingeringUpstream() as lingering, watching_log() as log:
        agent = gateway.grant(lingering)
        with openai_client(agent) as client:
            chunks = client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": PROMPT}], stream=True
            )
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert lingering.hung_up.wait(WAIT)
        agent.metered.wait(1)

        log.wait_for(f"{agent.grant.label}: POST /chat/completions", timeout=2)


def test_closing_the_gateway_with_a_live_grant_returns(upstream: ResponsesModelServer) -> None:
    """A daemon exiting with an agent still running must not hang in the gateway."""
    directory = Path(tempfile.mkdtemp(prefix="fy-gw-"))
    under_test = GatewayUnderTest(Gateway(directory))
    under_test.gateway.start()
    agent = under_test.grant(upstream)
    closing = threading.Thread(target=under_test.gateway.close, daemon=True)
    closing.start()
    try:
        closing.join(3)
        assert not closing.is_alive(), "Gateway.close() still waiting after 3 s"
        assert not agent.socket.exists()
    finally:
        under_test.gateway.revoke(agent.token)  # lets a hung close() finish
        closing.join(WAIT)
        shutil.rmtree(directory, ignore_errors=True)


def test_a_head_request_gets_headers_and_no_body(
    gateway: GatewayUnderTest, upstream: ResponsesModelServer
) -> None:
    """Claude Code probes its base URL with `HEAD /` before it starts."""
    agent = gateway.grant(upstream)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(WAIT)
        sock.connect(str(agent.socket))
        sock.sendall(b"HEAD / HTTP/1.1\r\nHost: gateway\r\n\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer and (chunk := sock.recv(65536)):
            answer += chunk
        # The connection stays usable: the next request gets its answer, not the body
        # a HEAD answer must not have.
        sock.sendall(b"HEAD / HTTP/1.1\r\nHost: gateway\r\n\r\n")
        while answer.count(b"\r\n\r\n") < 2 and (chunk := sock.recv(65536)):
            answer += chunk
    first, second, rest = answer.split(b"\r\n\r\n", 2)
    assert first.startswith(b"HTTP/1.1 401"), answer
    assert second.startswith(b"HTTP/1.1 401"), answer
    assert rest == b""
