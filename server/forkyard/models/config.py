"""How a user names a chat model in the settings (`[models.<name>]` tables).

The settings module imports this model; the providers read it. The key itself is never a
field here: only the name of the environment variable that holds it, so that a config
file, a log line or a repr can never carry a secret.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ModelPrice(BaseModel):
    """`[models.NAME.price]`: USD per million tokens. `cached_per_mtok` prices the prompt
    tokens read from the provider's cache; unset, they cost as much as the others."""

    model_config = ConfigDict(extra="forbid")

    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)
    cached_per_mtok: float | None = Field(default=None, ge=0)


class ModelConfig(BaseModel):
    """One configured chat model: which wire protocol, where, which model, which key."""

    model_config = ConfigDict(extra="forbid")

    provider: Literal["openai", "anthropic"] = "openai"
    #: None means the provider's public endpoint (api.openai.com / api.anthropic.com).
    base_url: str | None = None
    model: str
    #: Name of the environment variable holding the API key; None for local endpoints
    #: (Ollama, llama.cpp, vLLM) that need no key.
    api_key_env: str | None = None
    timeout_seconds: float = Field(default=120.0, gt=0)
    max_retries: int = Field(default=2, ge=0)
    #: The model's context window, for trimming long threads; None: not trimmed.
    context_tokens: int | None = Field(default=None, gt=0)
    #: Anthropic requires an explicit output budget per request; OpenAI-compatible
    #: endpoints get it only when set, so that local servers keep their own default.
    max_output_tokens: int | None = Field(default=None, gt=0)
    #: What the model costs; None: the default table's price for the model's name
    #: (`forkyard.models.pricing`), if any.
    price: ModelPrice | None = None
