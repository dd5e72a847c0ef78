"""Loading the model SDKs without stalling the event loop.

Importing the openai and anthropic packages takes seconds of CPU on a small machine. An
import on the event loop would hold every request behind it, so the first chat of a
session would wait for the SDKs and so would the person's every keystroke's request.
The SDKs are imported once per process in a worker thread; whoever is about to make a
model awaits `load_sdks()` first, and the server starts that load in the background as
soon as it knows a model is configured.
"""

from __future__ import annotations

import importlib
import threading

import anyio
import anyio.to_thread

_PROVIDER_MODULES = (
    "forkyard.models.openai_provider",
    "forkyard.models.anthropic_provider",
)


class _State:
    loaded = False
    #: Held by the one thread that imports; a second caller waits on it in its own
    #: worker thread, never on the loop.
    lock = threading.Lock()


def _import_providers() -> None:
    with _State.lock:
        if _State.loaded:
            return
        for name in _PROVIDER_MODULES:
            importlib.import_module(name)
        _State.loaded = True


def sdks_loaded() -> bool:
    """Whether a model can be made now without importing anything."""
    return _State.loaded


async def load_sdks() -> None:
    """Import the provider modules (and so the SDKs) in a worker thread, once. Cheap
    after the first call; safe to call from many tasks at once."""
    if not _State.loaded:
        await anyio.to_thread.run_sync(_import_providers, abandon_on_cancel=True)
