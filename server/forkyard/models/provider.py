"""What the two SDK-backed models share: a lazily built client, closing, error mapping.

The SDK client is built once per model, in a worker thread: building one loads the TLS
trust store (tens of milliseconds of CPU) and the chat must keep answering meanwhile. It
is reused for every request, so connections are kept alive, and closed by `aclose`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Generic, Protocol, TypeVar

import anyio

from forkyard.models.errors import ModelError
from forkyard.models.sdk_errors import SDK_ERRORS, translate_error


class _Closable(Protocol):
    async def close(self) -> None: ...


_CLOSE_ERRORS: tuple[type[Exception], ...] = (*SDK_ERRORS, OSError)

ClientT = TypeVar("ClientT", bound=_Closable)
ItemT = TypeVar("ItemT")


class SDKChatModel(Generic[ClientT]):
    """Base of `OpenAIChatModel` and `AnthropicChatModel`; not a provider by itself."""

    provider = "?"

    def __init__(
        self,
        *,
        model: str,
        base_url: str,
        api_key: str,
        api_key_env: str | None,
        timeout_seconds: float,
        max_retries: int,
        max_output_tokens: int | None,
    ) -> None:
        self.model = model
        self.base_url = base_url
        self.api_key_env = api_key_env
        self.timeout_seconds = timeout_seconds
        self.max_retries = max_retries
        self.max_output_tokens = max_output_tokens
        self.__api_key = api_key
        self._client_instance: ClientT | None = None
        self._client_lock = anyio.Lock()

    def __repr__(self) -> str:
        # The key is never shown; only where it comes from.
        return (
            f"{type(self).__name__}(model={self.model!r}, base_url={self.base_url!r}, "
            f"api_key_env={self.api_key_env!r})"
        )

    @property
    def _api_key(self) -> str:
        return self.__api_key

    def _build_client(self) -> ClientT:
        """Build the SDK client; runs in a worker thread."""
        raise NotImplementedError

    async def _client(self) -> ClientT:
        async with self._client_lock:
            if self._client_instance is None:
                self._client_instance = await anyio.to_thread.run_sync(self._build_client)
            return self._client_instance

    async def aclose(self) -> None:
        """Close the connection pool; the model may still be used afterwards (a new
        pool is made on demand)."""
        async with self._client_lock:
            client, self._client_instance = self._client_instance, None
        if client is not None:
            with anyio.CancelScope(shield=True):
                await client.close()

    async def __aenter__(self) -> SDKChatModel[ClientT]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _error(self, error: Exception, *, mid_stream: bool) -> Exception:
        """The `ModelError` for an SDK failure, else the exception itself (a bug)."""
        translated = translate_error(
            error,
            base_url=self.base_url,
            model=self.model,
            timeout_seconds=self.timeout_seconds,
            api_key=self.__api_key,
            api_key_env=self.api_key_env,
            mid_stream=mid_stream,
        )
        return error if translated is None else translated

    async def _call(self, start: Callable[[], Awaitable[ItemT]]) -> ItemT:
        """Await an SDK request, its failures turned into `ModelError`s."""
        try:
            return await start()
        except SDK_ERRORS as error:
            raise self._error(error, mid_stream=False) from None

    async def _next(self, iterator: AsyncIterator[ItemT]) -> ItemT | None:
        """The next item of an SDK stream, None at its end, failures as `ModelError`s."""
        try:
            return await iterator.__anext__()
        except StopAsyncIteration:
            return None
        except SDK_ERRORS as error:
            raise self._error(error, mid_stream=True) from None


async def close_quietly(stream: _Closable) -> None:
    """Close an SDK stream even while our task is being cancelled, so that the HTTP
    response (and the model's generation behind it) stops now, not at garbage
    collection. A failure to close is not the caller's problem."""
    with anyio.CancelScope(shield=True):
        with contextlib.suppress(*_CLOSE_ERRORS):
            await stream.close()


__all__ = ["ModelError", "SDKChatModel", "close_quietly"]
