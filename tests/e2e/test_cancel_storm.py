"""Cancel storms through the real server: command agents cancelled right as they start,
then a server killed with agents running. Whatever the moment, nothing of theirs may
keep running: not bwrap, not the sandbox's init, not a process the command moved to a
session of its own."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tests.e2e.conftest import StartServer
from tests.helpers import kill_daemon, wait_for_processes_with

pytestmark = pytest.mark.timeout(180)

AGENTS = 12
#: Processes carrying an agent's marker: bwrap, the sandbox's init, the shell, two sleeps.
PER_AGENT = 5


def sleeper(marker: str, n: int) -> str:
    """A command whose every process carries `marker`: one sleep escapes to its own
    session (as a daemon would), one stays in the foreground."""
    seconds = f"{marker}{n:02d}"
    return f"setsid sleep {seconds} & sleep {seconds}"


async def test_agents_cancelled_right_as_they_start_leave_no_process(
    start_server: StartServer, repo: Path
) -> None:
    client = await start_server(repo, initialization_options={"maxParallelAgents": 4})
    marker = str(random.randrange(10**8, 10**9))

    for n in range(AGENTS):
        agent = await client.dispatch(sleeper(marker, n), backend="command")
        if n % 3 == 0:
            # As soon as it runs: bwrap is starting, or setting up its namespace.
            await client.wait_for_agent(agent["id"], {"running"})
        elif n % 3 == 1:
            # Once its command runs in the sandbox.
            await client.wait_for_agent(agent["id"], {"running"})
            assert len(await wait_for_processes_with(f"{marker}{n:02d}", PER_AGENT)) == PER_AGENT
        cancelled = await client.request("forkyard/agent/cancel", {"agentId": agent["id"]})
        assert cancelled["agent"]["state"] == "cancelled"

    assert await wait_for_processes_with(marker, 0) == []
    assert (await client.request("forkyard/agent/list", {}))["agents"]


async def test_a_killed_daemon_leaves_no_agent_process(
    start_server: StartServer, repo: Path, server_env: dict[str, str]
) -> None:
    client = await start_server(repo, initialization_options={"maxParallelAgents": 4})
    marker = str(random.randrange(10**8, 10**9))
    for n in range(4):
        agent = await client.dispatch(sleeper(marker, n), backend="command")
        await client.wait_for_agent(agent["id"], {"running"})
    assert len(await wait_for_processes_with(marker, 4 * PER_AGENT)) == 4 * PER_AGENT

    # The daemon runs the agents: killed (as an OOM killer would), it takes them along.
    await kill_daemon(server_env)

    assert await wait_for_processes_with(marker, 0) == []
