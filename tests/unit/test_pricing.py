"""Metering: cached tokens as each provider reports them, prices, and costs in dollars."""

from __future__ import annotations

from typing import Literal

import pytest

from forkyard.conversation.commands import agent_line
from forkyard.models import ChatMessage, Usage, complete, create_chat_model
from forkyard.models.config import ModelConfig, ModelPrice
from forkyard.models.pricing import (
    DEFAULT_PRICES,
    add_usage,
    cost_usd,
    default_price,
    metered,
    price_for,
    usage_text,
)
from forkyard.settings import Settings, normalise_keys
from forkyard_protocol import Agent
from forkyard_protocol import Usage as WireUsage
from tests.fakes import fixtures
from tests.fakes.model_server import FakeModelServer, Reply

fake_model_server = fixtures.fake_model_server

PRICE = ModelPrice(input_per_mtok=2.0, output_per_mtok=8.0, cached_per_mtok=0.5)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_each_provider_reports_cached_tokens_within_the_input(
    fake_model_server: FakeModelServer, provider: Literal["openai", "anthropic"]
) -> None:
    """OpenAI counts cache reads inside `prompt_tokens`, Anthropic apart from
    `input_tokens`: both come out as the same `Usage`, cached a part of the input."""
    fake_model_server.script(Reply(text="a reply of a few words", cached_tokens=5))
    model = create_chat_model(fake_model_server.model_config(provider), {})
    try:
        completion = await complete(model, [ChatMessage.user("what is running right now?")])
    finally:
        await model.aclose()

    [reported] = fake_model_server.reported_usage
    assert reported.cached_tokens == 5
    assert completion.usage == Usage(
        input_tokens=reported.input_tokens,
        output_tokens=reported.output_tokens,
        cached_tokens=5,
    )


def test_cost_prices_cached_tokens_apart() -> None:
    usage = Usage(input_tokens=1_000_000, output_tokens=500_000, cached_tokens=400_000)
    # 600k uncached at $2, 400k cached at $0.5, 500k out at $8.
    assert cost_usd(usage, PRICE) == pytest.approx(1.2 + 0.2 + 4.0)


def test_cached_tokens_cost_the_input_price_when_no_cached_price_is_set() -> None:
    price = ModelPrice(input_per_mtok=3.0, output_per_mtok=15.0)
    usage = Usage(input_tokens=2000, output_tokens=100, cached_tokens=1000)
    assert cost_usd(usage, price) == pytest.approx((2000 * 3.0 + 100 * 15.0) / 1e6)


def test_unknown_price_has_no_cost() -> None:
    assert cost_usd(Usage(input_tokens=10, output_tokens=10), None) is None
    assert metered(Usage(input_tokens=10, output_tokens=3), None) == WireUsage(
        input_tokens=10, output_tokens=3, cached_tokens=0, cost_usd=None
    )


@pytest.mark.parametrize(
    ("model", "table_entry"),
    [
        ("gpt-4o", "gpt-4o"),
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-mini", "gpt-4o-mini"),
        ("gpt-4.1-mini-2025-04-14", "gpt-4.1-mini"),
        ("gpt-4.1", "gpt-4.1"),
        ("openai/gpt-4o-mini", "gpt-4o-mini"),
        ("claude-sonnet-4-20250514", "claude-sonnet-4"),
        ("claude-3-5-haiku-latest", "claude-3-5-haiku"),
        ("claude-opus-4-1", "claude-opus-4"),
    ],
)
def test_default_table_matches_the_longest_prefix(model: str, table_entry: str) -> None:
    assert default_price(model) is DEFAULT_PRICES[table_entry]


@pytest.mark.parametrize("model", ["qwen2.5-coder:14b", "llama3", "fake-model", "gpt-3.5-turbo"])
def test_models_the_table_does_not_know_have_no_default_price(model: str) -> None:
    assert default_price(model) is None


def test_a_configured_price_wins_over_the_default_table() -> None:
    assert price_for(ModelConfig(model="gpt-4o")) is DEFAULT_PRICES["gpt-4o"]
    assert price_for(ModelConfig(model="gpt-4o", price=PRICE)) == PRICE
    assert price_for(ModelConfig(model="my-local-model")) is None


def test_price_is_read_from_settings_in_toml_and_camel_case_keys() -> None:
    """`[models.NAME.price]` in a TOML file, `price: {inputPerMtok: ...}` from an editor."""
    from_toml = Settings.model_validate(
        {
            "models": {
                "default": {"model": "m", "price": {"input_per_mtok": 2, "output_per_mtok": 8}}
            }
        }
    )
    from_editor = Settings.model_validate(
        normalise_keys(
            {
                "models": {
                    "default": {"model": "m", "price": {"inputPerMtok": 2, "outputPerMtok": 8}}
                }
            }
        )
    )
    expected = ModelPrice(input_per_mtok=2, output_per_mtok=8)
    assert from_toml.models["default"].price == expected
    assert from_editor.models["default"].price == expected


def test_sums_keep_the_cost_only_while_every_call_was_priced() -> None:
    priced = metered(Usage(input_tokens=1000, output_tokens=200, cached_tokens=100), PRICE)
    total = add_usage(add_usage(None, priced), priced)
    assert (total.input_tokens, total.output_tokens, total.cached_tokens) == (2000, 400, 200)
    assert total.cost_usd == pytest.approx(2 * (priced.cost_usd or 0))
    unpriced = metered(Usage(input_tokens=5, output_tokens=5), None)
    assert add_usage(total, unpriced).cost_usd is None
    assert add_usage(total, unpriced).input_tokens == 2005


@pytest.mark.parametrize(
    ("usage", "text"),
    [
        (WireUsage(input_tokens=1000, output_tokens=200, cost_usd=0.0031), "1.2k tokens, $0.003"),
        (WireUsage(input_tokens=40, output_tokens=2, cost_usd=None), "42 tokens"),
        (WireUsage(input_tokens=2_000_000, output_tokens=0, cost_usd=5.0), "2M tokens, $5.00"),
        (WireUsage(input_tokens=900, output_tokens=100, cost_usd=0.0), "1k tokens, $0"),
        (None, ""),
    ],
)
def test_usage_text_for_people(usage: WireUsage | None, text: str) -> None:
    assert usage_text(usage) == text


def test_agent_lines_show_tokens_and_cost_when_known() -> None:
    """`/agents` and `forkyard agents` print this line."""
    agent = Agent(
        id="a1",
        number=3,
        title="t",
        task="t",
        role="worker",
        backend="llm",
        state="done",
        base_ref="HEAD",
        created_at="2026-01-01T00:00:00Z",
        updated_at="2026-01-01T00:00:00Z",
    )
    assert "tokens" not in agent_line(agent)
    agent.usage = WireUsage(input_tokens=1100, output_tokens=100, cost_usd=0.003)
    assert "(worker, 0 files +0 -0, 1.2k tokens, $0.003)" in agent_line(agent)
    agent.usage = WireUsage(input_tokens=1100, output_tokens=100)
    assert agent_line(agent).endswith("(worker, 0 files +0 -0, 1.2k tokens)")
