"""One error type for every way a chat model can fail, with messages a user can act on.

The SDKs raise a zoo of exceptions (and, mid-stream, sometimes the bare transport's);
the chat shows the message of a `ModelError` as is, so each one says what is wrong and
where, and none ever carries the API key: the key is scrubbed from every message and the
SDK's exception is not chained, since its text may quote the key back.
"""

from __future__ import annotations

from typing import Literal

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


def describe(error: BaseException) -> str:
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


def short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 1] + "…"
