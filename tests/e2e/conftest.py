from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
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
    stalls: list[float] = []
    for client in started:
        stalls += await largest_loop_stall(client)
        await client.stop()
    worst = max(stalls, default=0.0)
    assert worst < MAX_LOOP_STALL_MS, (
        f"the server's event loop stalled for {worst:.0f} ms during this test "
        f"(limit {MAX_LOOP_STALL_MS} ms): something blocked it"
    )


#: The longest the server's event loop may go without running during an end-to-end
#: test: a request waits at least that long behind whatever blocked it.
MAX_LOOP_STALL_MS = 250


async def largest_loop_stall(client: ForkyardClient) -> list[float]:
    """The server's largest loop stall so far (`forkyard/server/stats`), or nothing when
    the test already stopped or killed it."""
    process = client.server_process
    if process is None or process.returncode is not None:
        return []
    with anyio.move_on_after(5):
        try:
            stats = await client.request("forkyard/server/stats", {})
        except Exception:  # a server the test left unable to answer says nothing here
            return []
        return [float(stats["maxLoopStallMs"])]
    return []


@pytest.fixture
def trust_repo(server_env: dict[str, str]) -> Callable[[Path], None]:
    """Trust a repository as `forkyard trust` does, in this test's own config directory
    (never the real one), so its whole `.forkyard.toml` applies."""
    from forkyard.trust import set_trust

    def trust(repo: Path) -> None:
        set_trust(repo, server_env, trusted=True)

    return trust
