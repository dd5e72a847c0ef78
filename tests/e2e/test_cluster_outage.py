"""The cluster going away under a running agent: the daemon is not taken with it (Ray's
driver is the bridge process, not the daemon), the cluster agent ends `interrupted`
saying why, a local agent beside it finishes, and the next cluster dispatch fails at
once. Its own module: it stops the cluster it started."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import anyio.to_thread
import pytest
from pygls.exceptions import JsonRpcException

from forkyard.daemon.paths import DaemonPaths, read_pid
from tests.e2e.conftest import StartServer
from tests.e2e.test_cluster_agents import diff_of, wait_for_log
from tests.helpers import wait_for_processes_with
from tests.ray_head import ray_head, ray_program, stop_ray

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(ray_program() is None, reason="Ray is not installed (./setup.sh)"),
]


async def test_the_cluster_going_away_takes_only_its_agents(
    start_server: StartServer, repo: Path, server_env: dict[str, str]
) -> None:
    marker = f"fy-cluster-outage-{os.getpid()}"
    with ray_head() as head:
        client = await start_server(
            repo, initialization_options={"cluster": {"address": head.address}}
        )
        daemon = read_pid(DaemonPaths(Path(server_env["FORKYARD_STATE_DIR"])))
        assert daemon is not None
        remote = await client.dispatch(
            f"echo out > out.txt && echo READY && sleep 600 # {marker}",
            backend="command",
            placement="cluster",
        )
        await wait_for_log(client, remote["id"], "READY")
        local = await client.dispatch(
            "echo here > here.txt && sleep 4", backend="command", title="local"
        )
        await client.wait_for_agent(local["id"], {"running"})
        await anyio.to_thread.run_sync(stop_ray)
    ended = await client.wait_for_agent(remote["id"], timeout=90)
    assert ended["state"] == "interrupted", ended
    assert "lost" in ended["error"]
    finished = await client.wait_for_agent(local["id"], timeout=60)
    assert finished["state"] == "done", "the local agent ran on"
    assert [path for path, _, _ in await diff_of(client, local["id"])] == ["here.txt"]
    assert read_pid(DaemonPaths(Path(server_env["FORKYARD_STATE_DIR"]))) == daemon
    os.kill(daemon, 0)  # the daemon was not taken down: it is the same, and alive
    assert await wait_for_processes_with(marker, 0, seconds=30) == []
    with anyio.fail_after(15), pytest.raises(JsonRpcException) as raised:
        await client.dispatch("true", backend="command", placement="cluster")
    assert "cannot be reached" in str(raised.value)
