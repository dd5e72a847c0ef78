from __future__ import annotations

import os
import select
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import pytest_lsp

from forkyard.client import ForkyardClient
from forkyard.daemon.paths import DaemonPaths, read_pid

StartServer = Callable[..., Awaitable[ForkyardClient]]


@pytest.fixture
def server_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The server's environment: its own state dir, and a HOME with no user config. The
    daemon the test's fronts started for that state dir is stopped at the end."""
    home = tmp_path / "home"
    home.mkdir()
    yield {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "FORKYARD_STATE_DIR": str(tmp_path / "state"),
        "LANG": "C.UTF-8",
        # The suite runs in each worktree mode: FORKYARD_WORKTREE_MODE=full|overlay.
        **{k: v for k, v in os.environ.items() if k == "FORKYARD_WORKTREE_MODE"},
    }
    stop_daemon(tmp_path / "state")


def stop_daemon(state_dir: Path, timeout: float = 30.0) -> None:
    """SIGTERM the state directory's daemon, if one runs, and wait until it is gone
    (on its pidfd, no polling)."""
    pid = read_pid(DaemonPaths(state_dir))
    if pid is None:
        return
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        os.kill(pid, signal.SIGTERM)
        ready, _, _ = select.select([pidfd], [], [], timeout)
        if not ready:
            os.kill(pid, signal.SIGKILL)
            select.select([pidfd], [], [], timeout)
    except ProcessLookupError:
        pass
    finally:
        os.close(pidfd)


@pytest.fixture(scope="session", autouse=True)
def no_daemon_outlives_the_tests(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A backstop: every daemon whose state directory is under this run's temporary
    directory is stopped when the run ends, whatever test started it."""
    yield
    base = str(tmp_path_factory.getbasetemp())
    for stat in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = stat.read_bytes().split(b"\0")
        except OSError:
            continue
        words = [a.decode(errors="replace") for a in args]
        if "daemon" in words and "--state-dir" in words:
            state_dir = words[words.index("--state-dir") + 1]
            if state_dir.startswith(base):
                stop_daemon(Path(state_dir))


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
