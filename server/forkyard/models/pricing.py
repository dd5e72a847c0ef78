"""What a model's calls cost: prices per million tokens, and usage metered in dollars.

A price comes from the model's own `[models.NAME.price]` table; without one, from
`DEFAULT_PRICES` by the model's name; a model in neither (a local one, say) has its
tokens counted and its cost unknown (None), never a made-up figure.
"""

from __future__ import annotations

from forkyard.models.config import ModelConfig, ModelPrice
from forkyard.models.types import Usage
from forkyard_protocol import Usage as WireUsage

#: DEFAULTS, for convenience only: providers change their prices, and these are list
#: prices in USD per million tokens as published when they were written. Set
#: `[models.NAME.price]` to override them (it always wins). Matched by prefix of the
#: model name (the longest prefix wins, so `gpt-4o-mini` is not priced as `gpt-4o`).
DEFAULT_PRICES: dict[str, ModelPrice] = {
    "gpt-4o": ModelPrice(input_per_mtok=2.50, output_per_mtok=10.00, cached_per_mtok=1.25),
    "gpt-4o-mini": ModelPrice(input_per_mtok=0.15, output_per_mtok=0.60, cached_per_mtok=0.075),
    "gpt-4.1": ModelPrice(input_per_mtok=2.00, output_per_mtok=8.00, cached_per_mtok=0.50),
    "gpt-4.1-mini": ModelPrice(input_per_mtok=0.40, output_per_mtok=1.60, cached_per_mtok=0.10),
    "claude-sonnet-4": ModelPrice(input_per_mtok=3.00, output_per_mtok=15.00, cached_per_mtok=0.30),
    "claude-3-5-haiku": ModelPrice(input_per_mtok=0.80, output_per_mtok=4.00, cached_per_mtok=0.08),
    "claude-opus-4": ModelPrice(input_per_mtok=15.00, output_per_mtok=75.00, cached_per_mtok=1.50),
}


def default_price(model: str) -> ModelPrice | None:
    """The default table's price for a model name; a routing prefix (`openai/gpt-4o`)
    is ignored. None for a name the table does not know."""
    name = model.rsplit("/", 1)[-1].strip().lower()
    matches = [prefix for prefix in DEFAULT_PRICES if name.startswith(prefix)]
    return DEFAULT_PRICES[max(matches, key=len)] if matches else None


def price_for(config: ModelConfig) -> ModelPrice | None:
    """The configured price, else the default one for the model's name."""
    return config.price if config.price is not None else default_price(config.model)


def cost_usd(usage: Usage, price: ModelPrice | None) -> float | None:
    """What `usage` costs at `price`; None when the price is unknown. `input_tokens`
    includes the cached ones, which cost `cached_per_mtok` (or the input price)."""
    if price is None:
        return None
    cached = min(usage.cached_tokens, usage.input_tokens)
    cached_price = price.input_per_mtok if price.cached_per_mtok is None else price.cached_per_mtok
    total = (
        (usage.input_tokens - cached) * price.input_per_mtok
        + cached * cached_price
        + usage.output_tokens * price.output_per_mtok
    )
    return total / 1_000_000


def metered(usage: Usage, price: ModelPrice | None) -> WireUsage:
    """One call's usage as the protocol reports it, its cost included when known."""
    return WireUsage(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cached_tokens=usage.cached_tokens,
        cost_usd=cost_usd(usage, price),
    )


def add_usage(total: WireUsage | None, part: WireUsage) -> WireUsage:
    """`total` plus one more call. The cost stays known only while every call's is: a
    sum that left out an unpriced call would look like the whole bill and be less."""
    if total is None:
        return part
    cost = (
        None if total.cost_usd is None or part.cost_usd is None else total.cost_usd + part.cost_usd
    )
    return WireUsage(
        input_tokens=total.input_tokens + part.input_tokens,
        output_tokens=total.output_tokens + part.output_tokens,
        cached_tokens=total.cached_tokens + part.cached_tokens,
        cost_usd=cost,
    )


def usage_text(usage: WireUsage | None) -> str:
    """`1.2k tokens, $0.003` for a person; empty when nothing was metered."""
    if usage is None:
        return ""
    tokens = usage.input_tokens + usage.output_tokens
    text = f"{_count(tokens)} tokens"
    if usage.cost_usd is not None:
        text += f", {_dollars(usage.cost_usd)}"
    return text


def _count(tokens: int) -> str:
    if tokens < 1000:
        return str(tokens)
    if tokens < 1_000_000:
        return f"{tokens / 1000:.1f}k".replace(".0k", "k")
    return f"{tokens / 1_000_000:.1f}M".replace(".0M", "M")


def _dollars(cost: float) -> str:
    if cost == 0:
        return "$0"
    if cost < 0.01:
        return f"${cost:.3f}" if cost >= 0.001 else "<$0.001"
    return f"${cost:.2f}"
