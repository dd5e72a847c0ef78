"""The cluster's pieces that need no cluster: where agents may start, what an untrusted
repository may not say, the daemon never loading Ray, a bridge sending garbage, and
`forkyard cluster check` on an address nobody answers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import anyio
import pytest

from forkyard.cluster.bridge import tcp_target
from forkyard.cluster.link import BridgeLink, NodeLost, encode
from forkyard.cluster.run import ClusterAgents
from forkyard.orchestrator.runtime import AgentRuntime
from forkyard.settings import Settings, load_settings
from forkyard_protocol.models import Agent, AgentPlacement
from tests.helpers import make_repo
from tests.ray_head import free_port

pytestmark = pytest.mark.timeout(60)


def agent(number: int, kind: str) -> AgentRuntime:
    return AgentRuntime(
        Agent(
            id=f"agent-{number}",
            number=number,
            title="t",
            task="true",
            role="worker",
            backend="command",
            state="queued",
            base_ref="0" * 40,
            created_at="",
            updated_at="",
            placement=AgentPlacement(kind=kind),  # type: ignore[arg-type]
        )
    )


def test_cluster_agents_take_cluster_slots_and_local_ones_local_slots() -> None:
    settings = Settings.model_validate({"max_parallel_agents": 1, "cluster": {"max_agents": 2}})
    cluster = ClusterAgents(cast(Any, SimpleNamespace(settings=settings)))
    runtimes = [agent(1, "local"), agent(2, "cluster"), agent(3, "local"), agent(4, "cluster")]
    runtimes += [agent(5, "cluster")]
    agents = {r.agent.id: r for r in runtimes}
    chosen = cluster.startable(runtimes, set(), agents)
    assert [r.agent.number for r in chosen] == [1, 2, 4], "one local, two on the cluster"
    # With #1 and #2 running, one cluster slot is left and no local one.
    queue = [r for r in runtimes if r.agent.number not in (1, 2)]
    chosen = cluster.startable(queue, {"agent-1", "agent-2"}, agents)
    assert [r.agent.number for r in chosen] == [4]


def test_the_addresses_ray_takes() -> None:
    assert tcp_target("10.0.0.5:6379") == ("10.0.0.5", 6379)
    assert tcp_target("ray://head.example:10001") == ("head.example", 10001)
    assert tcp_target("[::1]:6379") == ("::1", 6379)
    assert tcp_target("auto") is None
    assert tcp_target("local") is None


def test_an_untrusted_repository_cannot_send_its_agents_to_a_cluster(tmp_path: Path) -> None:
    """A cloned repository naming a cluster would have the person's code (and agents)
    shipped to someone else's machines."""
    repo = make_repo(
        tmp_path / "repo",
        {
            ".forkyard.toml": (
                '[cluster]\naddress = "203.0.113.9:6379"\n'
                '[roles.worker]\nplacement = "cluster"\nbudget_usd = 2\n'
            )
        },
    )
    home = tmp_path / "home"
    environ = {"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")}
    loaded = load_settings(repo, environ)
    assert loaded.settings.cluster.address is None
    worker = loaded.settings.role("worker")
    assert worker is not None
    assert worker.placement == "local"
    assert worker.budget_usd == 2, "the harmless key of the same table still applies"
    assert {"cluster.address", "roles.worker.placement"} <= set(loaded.ignored_keys)


def test_the_daemon_never_loads_ray() -> None:
    """Ray is the bridge's: the daemon, its orchestrator and the cluster code it runs
    import none of it, configured or not."""
    code = (
        "import sys, forkyard.daemon.server, forkyard.app, forkyard.cluster.run, "
        "forkyard.cluster.check, forkyard.cluster.link, forkyard.cluster.node; "
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


async def bridge_speaking(data: bytes, *, then_exit: bool = False) -> BridgeLink:
    """A link to a stand-in bridge that writes `data`, then waits on its stdin (or
    exits)."""
    end = "" if then_exit else "; sys.stdin.read()"
    script = f"import sys; sys.stdout.buffer.write({data!r}); sys.stdout.flush(){end}"
    process = await anyio.open_process([sys.executable, "-c", script])
    return BridgeLink(process, "127.0.0.1:1")


@pytest.mark.parametrize(
    "garbage",
    [
        b"\xff\xff\xff\xff" + b"x" * 16,  # a frame of 4 GiB announced
        b"\x00\x00\x00\x05hello",  # a frame that is not a pickle
        b"\x00\x00\x01\x00short",  # a frame cut off by the bridge's end
    ],
)
async def test_a_bridge_sending_garbage_ends_its_link_not_the_daemon(garbage: bytes) -> None:
    link = await bridge_speaking(garbage, then_exit=garbage.endswith(b"short"))
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(link.read_forever)
            with pytest.raises(NodeLost):
                await link.call("connect", address="x", timeout=1)
            await link.close()
            group.cancel_scope.cancel()
        assert link.ended is not None
    finally:
        if link.process.returncode is None:
            link.process.kill()


async def test_a_bridge_answering_a_question_it_was_not_asked_is_ignored() -> None:
    stray = encode({"id": 999, "value": "unasked"}) + encode({"run": 7, "batch": []})
    answer = encode({"id": 1, "error": ("unavailable", "placement: no such cluster")})
    link = await bridge_speaking(stray + answer)
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(link.read_forever)
            with pytest.raises(Exception, match="no such cluster"):
                await link.call("connect", address="x", timeout=1)
            await link.close()
            group.cancel_scope.cancel()
    finally:
        if link.process.returncode is None:
            link.process.kill()


def test_cluster_check_says_why_an_address_is_not_usable(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    done = subprocess.run(
        [sys.executable, "-m", "forkyard.cli", "cluster", "check", "--address", address],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert done.stdout.strip() == (
        f"cluster {address}: not usable: the cluster at {address} cannot be reached: "
        "Connection refused"
    )
    as_json = subprocess.run(
        [sys.executable, "-m", "forkyard.cli", "cluster", "check", "--json", "--address", address],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    report = json.loads(as_json.stdout)
    assert report["usable"] is False
    assert report["address"] == address
    assert "cannot be reached" in report["reason"]
