"""Agents placed on a Ray cluster, end to end: the real front and daemon over stdio, a
real single-node Ray started for these tests (`ray start --head` on 127.0.0.1), real git
repositories and sandboxed commands on the node, a fake model server for the llm agent.

What a person would notice: a cluster agent's diff is the one a local agent gives;
cancel leaves nothing running; a lost worker leaves the agent `interrupted` with its
work; ten agents on one base ship it once; a cluster that is not there fails at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from pygls.exceptions import JsonRpcException

from forkyard.client import ForkyardClient
from tests.e2e.conftest import StartServer
from tests.e2e.editor import Editor
from tests.e2e.test_chat_commands import say
from tests.e2e.test_review import forkyard_diagnostics
from tests.e2e.test_terminal import forkyard
from tests.fakes.model_server import FakeModelServer, Reply
from tests.helpers import kill_daemon, wait_for_processes_with
from tests.ray_head import RayHead, free_port, ray_head, ray_program

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(ray_program() is None, reason="Ray is not installed (./setup.sh)"),
]


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayHead]:
    with ray_head() as head:
        yield head


def cluster_options(head: RayHead, **extra: Any) -> dict[str, Any]:
    return {"cluster": {"address": head.address, "maxAgents": 10}, **extra}


async def log_of(client: ForkyardClient, agent_id: str) -> list[tuple[str, str]]:
    read = await client.request("forkyard/agent/read", {"agentId": agent_id})
    return [(entry["kind"], entry["text"]) for entry in read["log"]]


async def diff_of(client: ForkyardClient, agent_id: str) -> list[tuple[str, str, str]]:
    """(path, status, +additions -deletions) of each file of the agent's diff."""
    diff = await client.request("forkyard/agent/diff", {"agentId": agent_id})
    return sorted(
        (f["path"], f["status"], f"+{f['additions']} -{f['deletions']}") for f in diff["files"]
    )


async def patch_of(client: ForkyardClient, agent_id: str) -> str:
    """The agent's whole diff as a patch: the same text for the same changes."""
    diff = await client.request("forkyard/agent/diff", {"agentId": agent_id})
    patch: str = diff["patch"]
    return patch


async def wait_for_log(
    client: ForkyardClient, agent_id: str, line: str, seconds: float = 60
) -> list[tuple[str, str]]:
    """The agent's log once its command printed `line` (checked on each of its updates);
    the command's own echo in the log does not count."""
    found: list[tuple[str, str]] = []

    async def has_it() -> bool:
        nonlocal found
        found = await log_of(client, agent_id)
        return any(kind == "stdout" and text.strip() == line for kind, text in found)

    with anyio.fail_after(seconds):
        while not await has_it():
            await _next_update(client)
    return found


async def _next_update(client: ForkyardClient) -> None:
    """Returns at the next notification the client gets (or after 1 s at most)."""
    count = len(client.agent_updates)
    with contextlib.suppress(TimeoutError):
        await client.wait_until(lambda: len(client.agent_updates) > count, 1)


EDIT = "printf 'cluster\\n' > NEW.txt && sed -i 's/a + b/b + a/' src/app.py && rm README.md"


async def test_a_command_agent_on_the_cluster_gives_the_diff_a_local_one_gives(
    start_server: StartServer, repo: Path, cluster: RayHead
) -> None:
    client = await start_server(repo, initialization_options=cluster_options(cluster))
    local = await client.dispatch(EDIT, backend="command", title="here")
    remote = await client.dispatch(EDIT, backend="command", title="there", placement="cluster")
    assert remote["placement"]["kind"] == "cluster"
    local_done = await client.wait_for_agent(local["id"])
    remote_done = await client.wait_for_agent(remote["id"], timeout=120)
    assert local_done["state"] == "done", local_done
    assert remote_done["state"] == "done", remote_done
    assert remote_done["placement"]["kind"] == "cluster"
    assert remote_done["placement"]["node"], "it says which node ran it"
    assert local_done["placement"] == {"kind": "local", "node": None}
    assert await diff_of(client, remote["id"]) == await diff_of(client, local["id"])
    assert await patch_of(client, remote["id"]) == await patch_of(client, local["id"])
    assert "+cluster" in await patch_of(client, remote["id"])
    assert remote_done["changes"] == local_done["changes"]
    # Its work is on its branch in the person's repository, and in a local worktree
    # the review reads, outside the person's checkout.
    worktree = Path(remote_done["worktree"])
    assert (worktree / "NEW.txt").read_text() == "cluster\n"
    assert not (repo / "NEW.txt").exists()
    # Review and apply are a local agent's: its hunk has a diagnostic in the open file,
    # and applying goes through the editor, the person's unsaved buffer included.
    editor = Editor(client)
    uri = editor.open(repo / "src" / "app.py")
    await client.wait_until(
        lambda: any("there" in d.message for d in forkyard_diagnostics(client, uri))
    )
    result = await client.request("forkyard/agent/apply", {"agentId": remote["id"]})
    assert result["applied"] is True, result
    assert "return b + a" in editor.buffers[uri]
    assert (repo / "NEW.txt").read_text() == "cluster\n"
    assert not (repo / "README.md").exists()


async def test_an_llm_agent_on_the_cluster_gives_the_diff_a_local_one_gives(
    start_server: StartServer, repo: Path, cluster: RayHead, fake_model_server: FakeModelServer
) -> None:
    config = fake_model_server.model_config("openai").model_dump(exclude_none=True)
    options = cluster_options(cluster, models={"default": config})
    client = await start_server(repo, initialization_options=options)
    diffs = []
    for placement in ("local", "cluster"):
        write = {"path": "notes.md", "content": "from the model\n"}
        edit = {"path": "src/app.py", "old_text": "a + b", "new_text": "a - -b"}
        fake_model_server.script(
            Reply(tool_calls=[("write_file", write)]),
            Reply(tool_calls=[("edit_file", edit)]),
            Reply(tool_calls=[("finish", {"summary": "wrote notes"})]),
        )
        agent = await client.dispatch("write notes", placement=placement)
        done = await client.wait_for_agent(agent["id"], timeout=120)
        assert done["state"] == "done", done
        assert done["summary"] == "wrote notes"
        assert done["placement"]["kind"] == placement
        diffs.append((await diff_of(client, agent["id"]), await patch_of(client, agent["id"])))
    assert diffs[0] == diffs[1]
    assert "a - -b" in diffs[1][1] and "+from the model" in diffs[1][1]
    assert [path for path, _, _ in diffs[1][0]] == ["notes.md", "src/app.py"]


async def test_cancel_of_a_cluster_agent_leaves_no_process(
    start_server: StartServer, repo: Path, cluster: RayHead
) -> None:
    client = await start_server(repo, initialization_options=cluster_options(cluster))
    marker = f"fy-cluster-cancel-{os.getpid()}"
    agent = await client.dispatch(
        f"echo started > started.txt && echo READY && sleep 600 # {marker}",
        backend="command",
        placement="cluster",
    )
    await wait_for_log(client, agent["id"], "READY")
    assert await wait_for_processes_with(marker, 1, seconds=10) != []
    await client.request("forkyard/agent/cancel", {"agentId": agent["id"]})
    cancelled = await client.wait_for_agent(agent["id"], timeout=60)
    assert cancelled["state"] == "cancelled"
    assert await wait_for_processes_with(marker, 0, seconds=30) == []
    # Its work so far is kept, as for a local cancel.
    assert [path for path, _, _ in await diff_of(client, agent["id"])] == ["started.txt"]


async def test_killing_the_worker_leaves_the_agent_interrupted_with_its_work(
    start_server: StartServer, repo: Path, cluster: RayHead
) -> None:
    client = await start_server(repo, initialization_options=cluster_options(cluster))
    marker = f"fy-cluster-kill-{os.getpid()}"
    agent = await client.dispatch(
        f"echo half > half.txt && echo READY && sleep 600 # {marker}",
        backend="command",
        placement="cluster",
    )
    log = await wait_for_log(client, agent["id"], "READY")
    pid = next(int(text.rsplit("pid ", 1)[1].rstrip(")")) for _, text in log if "pid " in text)
    os.kill(pid, signal.SIGKILL)
    ended = await client.wait_for_agent(agent["id"], timeout=90)
    assert ended["state"] == "interrupted", ended
    assert "lost" in (ended["error"] or "")
    assert [path for path, _, _ in await diff_of(client, agent["id"])] == ["half.txt"], (
        await log_of(client, agent["id"])
    )
    assert await wait_for_processes_with(marker, 0, seconds=30) == []


async def test_ten_agents_on_one_base_ship_it_once(
    start_server: StartServer, repo: Path, cluster: RayHead
) -> None:
    client = await start_server(repo, initialization_options=cluster_options(cluster))
    agents = [
        await client.dispatch(f"echo {n} > out{n}.txt", backend="command", placement="cluster")
        for n in range(10)
    ]
    for agent in agents:
        done = await client.wait_for_agent(agent["id"], timeout=150)
        assert done["state"] == "done", done
        assert [p for p, _, _ in await diff_of(client, agent["id"])] == [
            f"out{agents.index(agent)}.txt"
        ]
    shipped = [
        text
        for agent in agents
        for _, text in await log_of(client, agent["id"])
        if "its base was" in text
    ]
    assert len(shipped) == 10
    assert sum("was shipped" in text for text in shipped) == 1, shipped
    assert sum("already there" in text for text in shipped) == 9, shipped


async def test_an_unreachable_cluster_fails_the_dispatch_at_once(
    start_server: StartServer, repo: Path
) -> None:
    address = f"127.0.0.1:{free_port()}"
    client = await start_server(repo, initialization_options={"cluster": {"address": address}})
    with anyio.fail_after(15), pytest.raises(JsonRpcException) as raised:
        await client.dispatch("true", backend="command", placement="cluster")
    assert "cannot be reached" in str(raised.value)
    assert address in str(raised.value)
    listed = await client.request("forkyard/agent/list", {})
    assert listed["agents"] == [], "no agent was made"


async def test_a_follow_up_runs_on_the_cluster_in_the_worktree_the_node_kept(
    start_server: StartServer, repo: Path, cluster: RayHead
) -> None:
    client = await start_server(repo, initialization_options=cluster_options(cluster))
    agent = await client.dispatch("echo one > one.txt", backend="command", placement="cluster")
    first = await client.wait_for_agent(agent["id"], timeout=120)
    assert first["state"] == "done", (first["error"], await log_of(client, agent["id"]))
    await client.request(
        "forkyard/agent/message", {"agentId": agent["id"], "text": "echo two > two.txt"}
    )

    def finished_twice() -> bool:
        ends = [u for u in client.agent_updates if u["id"] == agent["id"] and u["state"] == "done"]
        return len(ends) >= 2

    await client.wait_until(finished_twice, 120)
    again = client.agents[agent["id"]]
    assert again["placement"] == first["placement"], "on the node that holds its worktree"
    assert [p for p, _, _ in await diff_of(client, agent["id"])] == ["one.txt", "two.txt"]
    notes = [
        text for _, text in await log_of(client, agent["id"]) if "worktree on the node" in text
    ]
    assert len(notes) == 2
    assert "kept from its last run" in notes[1]


async def test_run_from_the_chat_on_the_cluster_and_agents_says_where(
    start_server: StartServer, repo: Path, cluster: RayHead
) -> None:
    client = await start_server(repo, initialization_options=cluster_options(cluster))
    reply = await say(client, "/run --cluster echo chat > chat.txt")
    assert "Started agent #1" in reply["text"], reply
    agent = next(iter(client.agents.values()))
    done = await client.wait_for_agent(agent["id"], timeout=120)
    assert done["state"] == "done", done
    assert done["placement"]["kind"] == "cluster"
    listing = await say(client, "/agents")
    assert f"on cluster node {done['placement']['node']}" in listing["text"], listing


async def test_forkyard_dispatch_cluster_from_a_terminal(
    repo: Path, cluster: RayHead, server_env: dict[str, str]
) -> None:
    config = Path(server_env["XDG_CONFIG_HOME"]) / "forkyard" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text(f'[cluster]\naddress = "{cluster.address}"\n')
    code, out, err = await forkyard(
        server_env, repo, "dispatch", "echo t > t.txt", "--backend", "command", "--cluster"
    )
    assert code == 0, err
    assert out.startswith("#1 "), out
    code, out, err = await forkyard(server_env, repo, "log", "1", "--follow")
    assert code == 0, err
    code, out, err = await forkyard(server_env, repo, "agents")
    assert code == 0, err
    assert "done" in out and "on cluster node" in out, out


async def test_an_acp_agent_on_the_cluster_writes_through_the_client_on_its_node(
    start_server: StartServer, repo: Path, cluster: RayHead, tmp_path: Path
) -> None:
    """External programs run on the node too: here a scripted ACP agent, whose file
    writes the node's backend serves into the node's worktree, come home as its diff."""
    fake = Path(__file__).resolve().parents[1] / "fakes" / "acp_agent.py"
    script = tmp_path / "script.json"
    steps = [{"type": "write_file", "path": "acp.txt", "content": "from acp\n"}]
    script.write_text(json.dumps({"prompts": [steps]}))
    options = cluster_options(
        cluster,
        backends={"fake": {"acp": [sys.executable, str(fake), str(script)]}},
        sandbox={"readPaths": [str(fake.parent), str(tmp_path)]},
    )
    client = await start_server(repo, initialization_options=options)
    agent = await client.dispatch("write it", backend="fake", placement="cluster")
    done = await client.wait_for_agent(agent["id"], timeout=120)
    assert done["state"] == "done", (done["error"], await log_of(client, agent["id"]))
    assert done["placement"]["kind"] == "cluster"
    diff = await diff_of(client, agent["id"])
    assert [path for path, _, _ in diff] == ["acp.txt"]
    assert (Path(done["worktree"]) / "acp.txt").read_text() == "from acp\n"


async def test_the_setup_step_runs_on_the_node_before_the_agent(
    start_server: StartServer, repo: Path, cluster: RayHead
) -> None:
    options = cluster_options(cluster, worktree={"setup": "echo prepared > setup.log"})
    client = await start_server(repo, initialization_options=options)
    agent = await client.dispatch(
        "cat setup.log > seen.txt", backend="command", placement="cluster"
    )
    done = await client.wait_for_agent(agent["id"], timeout=120)
    assert done["state"] == "done", (done["error"], await log_of(client, agent["id"]))
    assert (Path(done["worktree"]) / "seen.txt").read_text() == "prepared\n"
    assert [path for path, _, _ in await diff_of(client, agent["id"])] == ["seen.txt"]


async def test_work_of_a_cluster_agent_whose_daemon_was_killed_comes_home_on_its_follow_up(
    start_server: StartServer, repo: Path, cluster: RayHead, server_env: dict[str, str]
) -> None:
    client = await start_server(repo, initialization_options=cluster_options(cluster))
    marker = f"fy-cluster-crash-{os.getpid()}"
    agent = await client.dispatch(
        f"echo before > before.txt && echo READY && sleep 600 # {marker}",
        backend="command",
        placement="cluster",
    )
    await wait_for_log(client, agent["id"], "READY")
    await kill_daemon(server_env)
    interrupted = await client.wait_for_agent(agent["id"], {"interrupted"}, timeout=60)
    assert interrupted["placement"]["kind"] == "cluster"
    assert await wait_for_processes_with(marker, 0, seconds=30) == [], "its run ended with it"
    await client.request(
        "forkyard/agent/message", {"agentId": agent["id"], "text": "echo after > after.txt"}
    )
    done = await client.wait_for_agent(agent["id"], {"done", "failed"}, timeout=120)
    assert done["state"] == "done", (done["error"], await log_of(client, agent["id"]))
    assert [p for p, _, _ in await diff_of(client, agent["id"])] == ["after.txt", "before.txt"]


async def test_an_explorer_on_the_cluster_reads_the_snapshot_and_writes_nothing(
    start_server: StartServer, repo: Path, cluster: RayHead
) -> None:
    client = await start_server(repo, initialization_options=cluster_options(cluster))
    agent = await client.dispatch(
        "cat src/app.py && echo sneaky > sneaky.txt",
        backend="command",
        role="explorer",
        placement="cluster",
    )
    ended = await client.wait_for_agent(agent["id"], timeout=120)
    log = await log_of(client, agent["id"])
    assert ("stdout", "def add(a, b):") in log, log
    assert ended["state"] == "failed", "its write was refused"
    assert ended["branch"] is None and ended["worktree"] is None
    assert not (repo / "sneaky.txt").exists()
    assert not list(cluster.node_dir.rglob("sneaky.txt")), "nor on the node"
