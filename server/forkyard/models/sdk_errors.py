"""Translating the SDKs' and transport exceptions into `ModelError`s.

Apart from `errors.py` because it imports both SDKs, which take a second or two to load:
only the providers need it, and they are loaded only when a model is configured.
"""

from __future__ import annotations

import json

import anthropic
import httpx2
import openai

from forkyard.models.errors import ModelError, describe, invalid_response_error, scrub, short

_TIMEOUT_ERRORS = (openai.APITimeoutError, anthropic.APITimeoutError, httpx2.TimeoutException)
_INVALID_ERRORS = (
    openai.APIResponseValidationError,
    anthropic.APIResponseValidationError,
    httpx2.DecodingError,
    json.JSONDecodeError,
    UnicodeDecodeError,
)
_CONNECTION_ERRORS = (openai.APIConnectionError, anthropic.APIConnectionError, httpx2.RequestError)
_STATUS_ERRORS = (openai.APIStatusError, anthropic.APIStatusError)
_API_ERRORS = (openai.APIError, anthropic.APIError)

#: Everything `translate_error` knows; other exceptions are bugs and pass unchanged.
SDK_ERRORS: tuple[type[Exception], ...] = (
    *_TIMEOUT_ERRORS,
    *_INVALID_ERRORS,
    *_CONNECTION_ERRORS,
    *_API_ERRORS,
    openai.OpenAIError,
    anthropic.AnthropicError,
)


def translate_error(
    error: Exception,
    *,
    base_url: str,
    model: str,
    timeout_seconds: float,
    api_key: str | None,
    api_key_env: str | None,
    mid_stream: bool,
) -> ModelError | None:
    """The `ModelError` for an SDK or transport exception; None for anything else.

    `mid_stream`: the reply had started, so a broken connection is not "cannot reach".
    """
    translated = _translate(
        error,
        base_url=base_url,
        model=model,
        timeout_seconds=timeout_seconds,
        api_key_env=api_key_env,
        mid_stream=mid_stream,
    )
    if translated is None:
        return None
    return ModelError(scrub(str(translated), api_key), kind=translated.kind)


def _translate(
    error: Exception,
    *,
    base_url: str,
    model: str,
    timeout_seconds: float,
    api_key_env: str | None,
    mid_stream: bool,
) -> ModelError | None:
    if isinstance(error, _TIMEOUT_ERRORS):
        return ModelError(
            f"the model did not answer within {timeout_seconds:g} s ({base_url}, "
            f"model '{model}'); raise timeout_seconds if the model is just slow",
            kind="timeout",
        )
    if isinstance(error, json.JSONDecodeError):
        return invalid_response_error(base_url, f"not JSON: {short(error.doc)[:80]!r}")
    if isinstance(error, _INVALID_ERRORS):
        return invalid_response_error(base_url, short(describe(error)))
    if isinstance(error, _CONNECTION_ERRORS):
        detail = short(describe(error))
        if mid_stream:
            return ModelError(
                f"the connection to the model endpoint {base_url} broke off mid-reply: {detail}",
                kind="unreachable",
            )
        return ModelError(
            f"cannot reach the model endpoint {base_url}: {detail}", kind="unreachable"
        )
    if isinstance(error, _STATUS_ERRORS):
        return _status_error(error, base_url=base_url, model=model, api_key_env=api_key_env)
    if isinstance(error, _API_ERRORS):
        return ModelError(
            f"the model endpoint {base_url} reported an error: {short(error.message)}",
            kind="api_error",
        )
    if isinstance(error, openai.OpenAIError | anthropic.AnthropicError):
        return ModelError(f"model '{model}' at {base_url}: {short(str(error))}", kind="api_error")
    return None


def _status_error(
    error: openai.APIStatusError | anthropic.APIStatusError,
    *,
    base_url: str,
    model: str,
    api_key_env: str | None,
) -> ModelError:
    status = error.status_code
    if status in (401, 403):
        # The server's own text is left out on purpose: OpenAI quotes part of the key.
        where = f"the key in {api_key_env}" if api_key_env else "api_key_env in the settings"
        return ModelError(
            f"the model endpoint {base_url} refused the API key (HTTP {status}): check {where}",
            kind="auth",
        )
    detail = short(_server_message(error))
    if status == 404:
        return ModelError(
            f"model '{model}' not found at {base_url} (HTTP 404: {detail}); "
            "check model and base_url in the settings",
            kind="not_found",
        )
    if status < 400:
        # An error event inside a stream that had started with 200.
        return ModelError(
            f"the model endpoint {base_url} reported an error: {detail}", kind="api_error"
        )
    return ModelError(
        f"the model endpoint {base_url} answered HTTP {status}: {detail}", kind="api_error"
    )


def _server_message(error: openai.APIStatusError | anthropic.APIStatusError) -> str:
    body = error.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return str(inner["message"])
        if isinstance(inner, str):
            return inner
    return error.message
