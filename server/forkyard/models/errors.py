"""One error type for every way a chat model can fail, with messages a user can act on.

The SDKs raise a zoo of exceptions (and, mid-stream, sometimes the bare transport's);
the chat shows the message of a `ModelError` as is, so each one says what is wrong and
where, and none ever carries the API key: the key is scrubbed from every message and the
SDK's exception is not chained, since its text may quote the key back.
"""

from __future__ import annotations

import json
from typing import Literal

import anthropic
import httpx2
import openai

from forkyard.errors import ForkyardError

ModelErrorKind = Literal[
    "unreachable",  # nothing answers at base_url, or the connection broke
    "missing_key",  # the configured environment variable is not set
    "auth",  # the endpoint refused the key (401/403)
    "not_found",  # 404: unknown model, or a wrong base_url path
    "timeout",  # no answer within timeout_seconds
    "invalid_response",  # not the wire format the provider speaks
    "api_error",  # any other error status or an error event in the stream
]

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

_MAX_DETAIL = 300


class ModelError(ForkyardError):
    """A chat model could not answer; `str(error)` is meant for the user."""

    def __init__(self, message: str, *, kind: ModelErrorKind) -> None:
        super().__init__(message)
        self.kind: ModelErrorKind = kind

    @property
    def message(self) -> str:
        return str(self)

    def __repr__(self) -> str:
        return f"ModelError({str(self)!r}, kind={self.kind!r})"


def scrub(text: str, secret: str | None) -> str:
    """`text` with every occurrence of `secret` masked."""
    if secret and len(secret) >= 4:
        return text.replace(secret, "***")
    return text


def missing_key_error(env_var: str, model: str) -> ModelError:
    return ModelError(
        f"the API key for model '{model}' is missing: set the environment variable "
        f"{env_var} for the server (the configuration names it in api_key_env)",
        kind="missing_key",
    )


def invalid_response_error(base_url: str, detail: str) -> ModelError:
    return ModelError(
        f"the model endpoint returned an invalid response ({base_url}): {detail}",
        kind="invalid_response",
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
        return invalid_response_error(base_url, f"not JSON: {_short(error.doc)[:80]!r}")
    if isinstance(error, _INVALID_ERRORS):
        return invalid_response_error(base_url, _short(_describe(error)))
    if isinstance(error, _CONNECTION_ERRORS):
        detail = _short(_describe(error))
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
            f"the model endpoint {base_url} reported an error: {_short(error.message)}",
            kind="api_error",
        )
    if isinstance(error, openai.OpenAIError | anthropic.AnthropicError):
        return ModelError(f"model '{model}' at {base_url}: {_short(str(error))}", kind="api_error")
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
    detail = _short(_server_message(error))
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


def _describe(error: BaseException) -> str:
    """The most specific text in an exception chain ("Connection refused", not
    "Connection error.")."""
    parts: list[str] = []
    current: BaseException | None = error
    seen: set[int] = set()
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current).strip()
        if text and text not in parts:
            parts.append(text)
        current = current.__cause__ or current.__context__
    if not parts:
        return type(error).__name__
    return parts[-1] if len(parts) > 1 and _is_generic(parts[0]) else parts[0]


def _is_generic(text: str) -> bool:
    return text in {"Connection error.", "Request timed out."}


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 1] + "…"
