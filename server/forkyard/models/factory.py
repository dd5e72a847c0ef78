"""From settings to a `ChatModel`: the one place that reads an API key."""

from __future__ import annotations

from collections.abc import Mapping

from forkyard.models.config import ModelConfig
from forkyard.models.errors import missing_key_error
from forkyard.models.types import ChatModel

#: Sent when no key is configured: local servers (Ollama, llama.cpp, vLLM) ignore it,
#: and the SDKs refuse to start without some key.
PLACEHOLDER_API_KEY = "not-needed"


def create_chat_model(config: ModelConfig, environ: Mapping[str, str]) -> ChatModel:
    """The chat model `config` describes, its key read from `environ[api_key_env]` only.

    The caller passes `os.environ` (or a test's own mapping): the SDKs' own fallbacks to
    OPENAI_API_KEY / ANTHROPIC_API_KEY / *_BASE_URL are bypassed on purpose, so that the
    settings alone decide which endpoint and which key a model uses. Raises `ModelError`
    when a configured key variable is not set for a provider that needs one.
    """
    # The SDKs are imported here, not at the top: loading them takes a second or two,
    # which a server without a configured model should not pay at every start.
    from forkyard.models.anthropic_provider import (
        ANTHROPIC_DEFAULT_BASE_URL,
        AnthropicChatModel,
    )
    from forkyard.models.openai_provider import OPENAI_DEFAULT_BASE_URL, OpenAIChatModel

    api_key = _api_key(config, environ)
    if config.provider == "anthropic":
        return AnthropicChatModel(
            model=config.model,
            base_url=config.base_url or ANTHROPIC_DEFAULT_BASE_URL,
            api_key=api_key,
            api_key_env=config.api_key_env,
            timeout_seconds=config.timeout_seconds,
            max_retries=config.max_retries,
            max_output_tokens=config.max_output_tokens,
        )
    return OpenAIChatModel(
        model=config.model,
        base_url=config.base_url or OPENAI_DEFAULT_BASE_URL,
        api_key=api_key,
        api_key_env=config.api_key_env,
        timeout_seconds=config.timeout_seconds,
        max_retries=config.max_retries,
        max_output_tokens=config.max_output_tokens,
    )


def _api_key(config: ModelConfig, environ: Mapping[str, str]) -> str:
    if not config.api_key_env:
        return PLACEHOLDER_API_KEY
    key = environ.get(config.api_key_env, "").strip()
    if key:
        return key
    if config.provider == "anthropic":
        raise missing_key_error(config.api_key_env, config.model)
    # An OpenAI-compatible local server needs no key even when a variable is named;
    # a real endpoint answers 401, which is reported naming the variable.
    return PLACEHOLDER_API_KEY
