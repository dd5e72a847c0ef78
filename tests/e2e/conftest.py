from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_lsp

from forkyard.client import ForkyardClient

StartServer = Callable[..., Awaitable[ForkyardClient]]


@pytest.fixture
def server_env(tmp_path: Path) -> dict[str, str]:
    """The server's environment: its own state dir, and a HOME with no user config."""
    home = tmp_path / "home"
    home.mkdir()
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "FORKYARD_STATE_DIR": str(tmp_path / "state"),
        "LANG": "C.UTF-8",
    }


@pytest.fixture
async def start_server(server_env: dict[str, str]) -> AsyncIterator[StartServer]:
    """Start `forkyard serve` over stdio with pytest-lsp's recording client; every server
    started is shut down (or killed) at the end of the test."""
    started: list[ForkyardClient] = []

    async def start(repo: Path, **kwargs: Any) -> ForkyardClient:
        client = await ForkyardClient.start(
            repo, server_env, lsp=pytest_lsp.make_test_lsp_client(), **kwargs
        )
        started.append(client)
        return client

    yield start
    for client in started:
        await client.stop()


@pytest.fixture
def trust_repo(server_env: dict[str, str]) -> Callable[[Path], None]:
    """Trust a repository as `forkyard trust` does, in this test's own config directory
    (never the real one), so its whole `.forkyard.toml` applies."""
    from forkyard.trust import set_trust

    def trust(repo: Path) -> None:
        set_trust(repo, server_env, trusted=True)

    return trust
