"""Worktrees through the real server: the setup step of `.forkyard.toml` before an agent
runs, ports of its own for each agent, sparse worktrees for dispatches that name paths,
a report of how long preparation took, `forkyard/status`, and garbage collection of
applied agents' worktrees."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from forkyard.client import ForkyardClient
from tests.e2e.conftest import StartServer
from tests.e2e.editor import Editor
from tests.helpers import git, make_repo

pytestmark = pytest.mark.timeout(90)

PREPARED = re.compile(r"^prepared worktree in \d+ ms \((pooled|fresh|overlay)(, sparse: .*)?\)$")


@pytest.fixture
def app_repo(tmp_path: Path) -> Path:
    repo = make_repo(
        tmp_path / "app",
        {
            ".gitignore": ".env\n",
            "src/app.py": "def add(a, b):\n    return a + b\n",
            "tests/test_app.py": "def test_add():\n    pass\n",
            "docs/guide.md": "# guide\n",
            "README.md": "# app\n",
        },
    )
    (repo / ".env").write_text("SECRET_URL=postgres://localhost/dev\n")
    return repo


def configure(repo: Path, toml: str) -> None:
    (repo / ".forkyard.toml").write_text(toml)
    git(repo, "add", ".forkyard.toml")
    git(repo, "commit", "-q", "-m", "forkyard settings")


async def log_of(client: ForkyardClient, agent_id: str) -> list[dict[str, Any]]:
    read = await client.request("forkyard/agent/read", {"agentId": agent_id})
    log: list[dict[str, Any]] = read["log"]
    return log


async def test_setup_runs_before_the_agent_and_each_agent_has_its_own_ports(
    start_server: StartServer, app_repo: Path, trust_repo: Callable[[Path], None]
) -> None:
    configure(
        app_repo,
        '[worktree]\ncopy = [".env"]\nsetup = "echo setting up; cat .env > setup-saw.txt"\n'
        "setup_network = false\n",
    )
    trust_repo(app_repo)
    client = await start_server(app_repo)
    command = "cat setup-saw.txt; echo $FORKYARD_PORT_BASE; echo $FORKYARD_PORTS"
    first = await client.dispatch(command, backend="command", title="one")
    second = await client.dispatch(command, backend="command", title="two")
    ranges = []
    for agent in (first, second):
        done = await client.wait_for_agent(agent["id"])
        assert done["state"] == "done", done
        worktree = Path(done["worktree"])
        assert (worktree / ".env").read_text() == (app_repo / ".env").read_text()
        log = await log_of(client, agent["id"])
        texts = [entry["text"] for entry in log]
        assert any(PREPARED.match(text) for text in texts), texts
        setup = [entry["text"] for entry in log if entry["kind"] == "setup"]
        assert setup[:3] == [
            "copied .env",
            "$ echo setting up; cat .env > setup-saw.txt",
            "setting up",
        ]
        output = [entry["text"] for entry in log if entry["kind"] == "stdout"]
        assert output[0] == "SECRET_URL=postgres://localhost/dev"
        base, ports = int(output[1]), [int(port) for port in output[2].split()]
        assert ports[0] == base and len(ports) == 10
        ranges.append(set(ports))
        # The setup's own files are the agent's work, the copied .env is not.
        diff = await client.request("forkyard/agent/diff", {"agentId": agent["id"]})
        assert [f["path"] for f in diff["files"]] == ["setup-saw.txt"]
    assert ranges[0].isdisjoint(ranges[1])


async def test_a_failing_setup_fails_the_agent_with_the_reason(
    start_server: StartServer, app_repo: Path, trust_repo: Callable[[Path], None]
) -> None:
    configure(
        app_repo,
        "[worktree]\nsetup = \"echo 'error: lockfile is out of date' >&2; exit 4\"\n"
        "setup_network = false\n",
    )
    trust_repo(app_repo)
    client = await start_server(app_repo)
    agent = await client.dispatch("touch ran.txt", backend="command")
    failed = await client.wait_for_agent(agent["id"])
    assert failed["state"] == "failed"
    assert "setup" in failed["error"] and "exit 4" in failed["error"]
    assert "lockfile is out of date" in failed["error"]
    assert not (Path(failed["worktree"]) / "ran.txt").exists(), "the agent never ran"
    log = await log_of(client, agent["id"])
    assert any(e["kind"] == "setup" and "lockfile" in e["text"] for e in log)


async def test_a_dispatch_naming_paths_gets_a_sparse_worktree(
    start_server: StartServer, app_repo: Path
) -> None:
    client = await start_server(app_repo)
    agent = await client.dispatch(
        "ls -R > ../listing.txt 2>&1; ls; sed -i 's/a + b/b + a/' src/app.py",
        backend="command",
        paths=["src"],
    )
    done = await client.wait_for_agent(agent["id"])
    assert done["state"] == "done", done
    worktree = Path(done["worktree"])
    assert (worktree / "src/app.py").exists() and (worktree / "README.md").exists()
    assert not (worktree / "tests").exists() and not (worktree / "docs").exists()
    diff = await client.request("forkyard/agent/diff", {"agentId": agent["id"]})
    assert [(f["path"], f["status"]) for f in diff["files"]] == [("src/app.py", "modified")]
    log = await log_of(client, agent["id"])
    assert any(
        re.match(r"prepared worktree in \d+ ms \(fresh, sparse: src\)$", e["text"]) for e in log
    )
    with pytest.raises(Exception, match="paths"):
        await client.dispatch("true", backend="command", paths=["../outside"])


async def test_status_reports_disk_use_and_applied_worktrees_are_collected(
    start_server: StartServer, app_repo: Path
) -> None:
    client = await start_server(
        app_repo,
        initialization_options={"worktree": {"gcGraceSeconds": 0, "gcIntervalSeconds": 0.2}},
    )
    Editor(client)  # answers workspace/applyEdit
    agent = await client.dispatch("echo more >> README.md; echo wip > wip.txt", backend="command")
    done = await client.wait_for_agent(agent["id"])
    assert done["state"] == "done"
    status = await client.request("forkyard/status", {})
    [mine] = [w for w in status["worktrees"] if w["agentId"] == agent["id"]]
    assert mine["kind"] == "agent" and mine["diskBytes"] > 0 and mine["state"] == "done"
    assert status["totalDiskBytes"] >= mine["diskBytes"]
    assert status["poolSize"] == 2

    # Uncommitted in the worktree when the collector comes: committed into the kept ref.
    (Path(done["worktree"]) / "late.txt").write_text("written after the agent finished\n")
    applied = await client.request("forkyard/agent/apply", {"agentId": agent["id"]})
    assert applied["applied"] and not applied["conflicts"], applied
    assert (app_repo / "wip.txt").read_text() == "wip\n"
    collected = await client.wait_until(
        lambda: (
            (a := client.agents[agent["id"]])["state"] == "applied" and a["worktree"] is None and a
        )
    )
    assert collected["branch"] is None
    assert not Path(done["worktree"]).exists()
    ref = f"refs/forkyard/applied/{done['number']}"
    assert {"wip.txt", "late.txt"} <= set(
        git(app_repo, "ls-tree", "-r", "--name-only", ref).split()
    )
    assert git(app_repo, "branch", "--list", "forkyard/*") == ""
    log = await log_of(client, agent["id"])
    assert any(f"removed; its work is kept at {ref}" in e["text"] for e in log)
