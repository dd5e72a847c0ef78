"""The server itself: TCP transport, settings reported by name, configuration changes while
running, and worktrees that no agent owns."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import anyio
import pytest
from lsprotocol import types
from pygls.lsp.client import LanguageClient

from forkyard.client import ForkyardClient, default_capabilities
from tests.e2e.conftest import StartServer
from tests.helpers import git

pytestmark = pytest.mark.timeout(90)


def messages(client: ForkyardClient) -> list[str]:
    return [m.message for m in client.lsp.messages]  # type: ignore[attr-defined]


async def test_bad_settings_are_reported_by_name_and_the_rest_applies(
    start_server: StartServer, repo: Path
) -> None:
    (repo / ".forkyard.toml").write_text("max_parallel_agents = 1\nfrobnicate = 3\n")
    client = await start_server(repo, initialization_options={"maxParallelAgents": "lots"})
    # One line for both, so that the editor shows no stack of messages.
    [shown] = await client.wait_until(lambda: [m for m in messages(client) if "ignored" in m])
    assert "'frobnicate'" in shown
    assert "'max_parallel_agents'" in shown
    assert len(shown) <= 88 and "\n" not in shown
    # max_parallel_agents = 1 from the file still applies: two agents run one at a time.
    first = await client.dispatch("sleep 0.5", backend="command")
    second = await client.dispatch("true", backend="command")
    assert (await client.wait_for_agent(second["id"]))["state"] == "done"
    order = [(a["id"], a["state"]) for a in client.agent_updates]
    assert order.index((first["id"], "done")) < order.index((second["id"], "starting"))


async def test_configuration_changes_apply_while_running(
    start_server: StartServer, repo: Path
) -> None:
    client = await start_server(repo, initialization_options={"maxParallelAgents": 1})
    blocker = await client.dispatch("echo up; sleep 141421", backend="command")
    waiting = await client.dispatch("true", backend="command")
    await client.wait_for_agent(blocker["id"], {"running"})
    assert client.agents[waiting["id"]]["state"] == "queued"
    client.lsp.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"forkyard": {"maxParallelAgents": 2}})
    )
    assert (await client.wait_for_agent(waiting["id"]))["state"] == "done"
    await client.request("forkyard/agent/cancel", {"agentId": blocker["id"]})


async def test_worktrees_no_agent_owns_are_reported_not_deleted(
    start_server: StartServer, repo: Path
) -> None:
    client = await start_server(repo)
    agent = await client.dispatch("true", backend="command")
    done = await client.wait_for_agent(agent["id"])
    stray = Path(done["worktree"]).parent / "stray"
    git(repo, "worktree", "add", "-q", "-b", "stray", str(stray))
    await client.stop()

    again = await start_server(repo)
    await again.wait_until(lambda: any("no agent owns" in m for m in messages(again)))
    assert any(m.endswith(": stray") for m in messages(again)), messages(again)
    assert stray.is_dir(), "reported, never deleted"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def test_serve_over_tcp(repo: Path, server_env: dict[str, str]) -> None:
    port = free_port()
    command = [sys.executable, "-m", "forkyard.cli", "serve", "--tcp", f"127.0.0.1:{port}"]
    async with await anyio.open_process(command, env=server_env) as process:
        lsp = LanguageClient("tcp-test", "1")
        with anyio.fail_after(20):
            while True:
                try:
                    await lsp.start_tcp("127.0.0.1", port)
                    break
                except OSError:
                    await anyio.sleep(0.05)  # the server is still starting
        result = await lsp.initialize_async(
            types.InitializeParams(
                capabilities=default_capabilities(), root_uri=repo.as_uri(), process_id=None
            )
        )
        assert result.capabilities.experimental["forkyard"]["version"] == 1  # type: ignore[index]
        lsp.initialized(types.InitializedParams())
        listed = await lsp.protocol.send_request_async("forkyard/agent/list", {})
        assert list(listed.agents) == []
        await lsp.shutdown_async(None)
        lsp.exit(None)
        with anyio.fail_after(10):
            await process.wait()
        await lsp.stop()


async def test_numbers_of_agents_a_lost_state_left_in_the_repository_are_skipped(
    start_server: StartServer, repo: Path
) -> None:
    git(repo, "branch", "forkyard/1-from-an-old-state")
    git(repo, "update-ref", "refs/forkyard/discarded/2", "HEAD")
    client = await start_server(repo)
    agent = await client.dispatch("true", backend="command", title="fresh")
    done = await client.wait_for_agent(agent["id"])
    assert done["state"] == "done"
    assert done["number"] == 3
    assert done["branch"] == "forkyard/3-fresh"
    assert git(repo, "rev-parse", "forkyard/1-from-an-old-state").strip()
