"""The orchestrator end to end: `forkyard serve` over stdio, driven by pytest-lsp's client,
on real git repositories, running real (sandboxed) commands."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from pygls.exceptions import JsonRpcException

from forkyard.client import ForkyardClient
from tests.e2e.conftest import StartServer
from tests.helpers import git, process_running, wait_for_no_process

pytestmark = pytest.mark.timeout(90)


def states_seen(client: ForkyardClient, agent_id: str) -> list[str]:
    seen: list[str] = []
    for update in client.agent_updates:
        if update["id"] == agent_id and (not seen or seen[-1] != update["state"]):
            seen.append(update["state"])
    return seen


async def test_initialize_advertises_roles_and_backends(
    start_server: StartServer, repo: Path
) -> None:
    client = await start_server(repo)
    assert client.initialize_result is not None
    experimental: Any = client.initialize_result.capabilities.experimental
    forkyard = experimental["forkyard"]
    assert forkyard["version"] == 1
    assert {"explorer", "worker", "default"} <= set(forkyard["roles"])
    assert "command" in forkyard["backends"]
    details = {d["name"]: d for d in forkyard["backendDetails"]}
    assert details["llm"]["available"] is False
    assert "model" in details["llm"]["reason"]
    stats = await client.request("forkyard/server/stats", {})
    assert stats["agentsRunning"] == 0
    assert stats["maxLoopStallMs"] >= 0


async def test_at_most_max_parallel_agents_run_and_all_finish(
    start_server: StartServer, repo: Path
) -> None:
    client = await start_server(repo, initialization_options={"maxParallelAgents": 2})
    ids = []
    for n in range(4):
        agent = await client.dispatch(
            f"sleep 1 && echo agent {n} > out{n}.txt", backend="command", title=f"job {n}"
        )
        assert agent["state"] in ("queued", "starting")
        ids.append(agent["id"])
    for agent_id in ids:
        agent = await client.wait_for_agent(agent_id)
        assert agent["state"] == "done", agent

    running: set[str] = set()
    most = 0
    for update in client.agent_updates:
        if update["state"] in ("starting", "running"):
            running.add(update["id"])
        else:
            running.discard(update["id"])
        most = max(most, len(running))
    assert most == 2, "two agents should have run side by side, never more"
    for agent_id in ids:
        assert states_seen(client, agent_id) == ["queued", "starting", "running", "done"]


async def test_diff_is_exactly_the_agents_change(start_server: StartServer, repo: Path) -> None:
    client = await start_server(repo)
    agent = await client.dispatch(
        "printf 'hello\\n' > NEW.txt && sed -i 's/a + b/b + a/' src/app.py && rm README.md",
        backend="command",
    )
    done = await client.wait_for_agent(agent["id"])
    assert done["state"] == "done", done
    assert done["changes"] == {"files": 3, "additions": 2, "deletions": 2}
    assert done["worktree"] and not Path(done["worktree"]).is_relative_to(repo)
    assert done["branch"].startswith(f"forkyard/{done['number']}-")

    diff = await client.request("forkyard/agent/diff", {"agentId": agent["id"]})
    files = {f["path"]: f for f in diff["files"]}
    assert set(files) == {"NEW.txt", "src/app.py", "README.md"}
    assert files["NEW.txt"]["status"] == "added"
    assert files["README.md"]["status"] == "deleted"
    modified = files["src/app.py"]
    assert modified["status"] == "modified"
    assert [h["text"] for h in modified["hunks"]] == ["-    return a + b\n+    return b + a\n"]
    assert modified["uri"] == (repo / "src/app.py").as_uri()
    assert "+hello" in diff["patch"] and "-    return a + b" in diff["patch"]
    # The user's checkout is untouched.
    assert not (repo / "NEW.txt").exists()
    assert (repo / "README.md").exists()
    assert git(repo, "status", "--porcelain") == ""

    by_number = await client.request(
        "forkyard/agent/file", {"agentId": str(done["number"]), "path": "NEW.txt"}
    )
    assert by_number == {"text": "hello\n"}
    gone = await client.request(
        "forkyard/agent/file", {"agentId": agent["id"], "path": "README.md"}
    )
    assert gone == {"text": None}


async def test_worktree_starts_from_the_dirty_checkout(
    start_server: StartServer, repo: Path
) -> None:
    (repo / "src/app.py").write_text("def add(a, b):\n    return a + b  # user edit\n")
    (repo / "notes.txt").write_text("untracked notes\n")
    (repo / "debug.log").write_text("ignored\n")
    client = await start_server(repo)
    agent = await client.dispatch("cat notes.txt src/app.py > seen.txt", backend="command")
    done = await client.wait_for_agent(agent["id"])
    assert done["state"] == "done", done
    worktree = Path(done["worktree"])
    assert (
        worktree / "seen.txt"
    ).read_text() == "untracked notes\ndef add(a, b):\n    return a + b  # user edit\n"
    assert not (worktree / "debug.log").exists(), "ignored files stay out of the worktree"
    diff = await client.request("forkyard/agent/diff", {"agentId": agent["id"]})
    assert [f["path"] for f in diff["files"]] == ["seen.txt"], "only the agent's own change"
    assert git(repo, "status", "--porcelain").splitlines() == [" M src/app.py", "?? notes.txt"]


async def test_cancel_kills_the_command_and_keeps_the_worktree(
    start_server: StartServer, repo: Path
) -> None:
    client = await start_server(repo)
    agent = await client.dispatch(
        "echo partial > partial.txt; echo started; sleep 314159", backend="command"
    )
    await client.wait_until(
        lambda: (client.agents[agent["id"]].get("progress") or {}).get("message") == "started"
    )
    with anyio.fail_after(10):  # "started" is printed just before sleep starts
        while not await process_running("sleep 314159"):  # noqa: ASYNC110
            await anyio.sleep(0.02)

    result = await client.request("forkyard/agent/cancel", {"agentId": agent["id"]})
    assert result["agent"]["state"] == "cancelled"
    assert await wait_for_no_process("sleep 314159"), "the command's process survived cancel"
    worktree = Path(result["agent"]["worktree"])
    assert (worktree / "partial.txt").read_text() == "partial\n"
    branch = result["agent"]["branch"]
    assert git(repo, "show", f"{branch}:partial.txt") == "partial\n", "work kept in a ref"


async def test_progress_per_agent_and_cancel_through_its_token(
    start_server: StartServer, repo: Path
) -> None:
    client = await start_server(repo)
    reports = client.lsp.progress_reports  # type: ignore[attr-defined]
    quick = await client.dispatch("echo one; echo two", backend="command", title="quick")
    await client.wait_for_agent(quick["id"])
    slow = await client.dispatch("echo waiting; sleep 271828", backend="command", title="slow")

    def token_of(agent: dict[str, Any]) -> Any:
        for token, values in reports.items():
            if values and getattr(values[0], "title", "").startswith(f"agent #{agent['number']}:"):
                return token
        return None

    token = await client.wait_until(lambda: token_of(slow), timeout=30)
    quick_values = reports[token_of(quick)]
    assert quick_values[0].kind == "begin" and quick_values[0].cancellable is True
    assert quick_values[-1].kind == "end"
    assert any(v.kind == "report" for v in quick_values)

    from lsprotocol import types

    client.lsp.protocol.notify(
        types.WINDOW_WORK_DONE_PROGRESS_CANCEL, types.WorkDoneProgressCancelParams(token=token)
    )
    cancelled = await client.wait_for_agent(slow["id"])
    assert cancelled["state"] == "cancelled"
    assert await wait_for_no_process("sleep 271828")
    await client.wait_until(lambda: reports[token][-1].kind == "end")


BAD_PARAMS: list[tuple[str, Any, str]] = [
    ("forkyard/agent/dispatch", {}, "task"),
    ("forkyard/agent/dispatch", {"task": 5}, "task"),
    ("forkyard/agent/dispatch", {"task": "x", "includeUncommitted": "maybe"}, "includeUncommitted"),
    ("forkyard/agent/dispatch", {"task": "x", "role": "wizard", "backend": "command"}, "role"),
    ("forkyard/agent/dispatch", {"task": "x", "backend": "teleport"}, "backend"),
    ("forkyard/agent/dispatch", {"task": "x"}, "llm"),
    (
        "forkyard/agent/dispatch",
        {"task": "x", "backend": "command", "baseRef": "no-such-ref"},
        "baseRef",
    ),
    ("forkyard/agent/dispatch", [1, 2], "object"),
    ("forkyard/agent/read", {}, "agentId"),
    ("forkyard/agent/read", {"agentId": "nope"}, "agentId"),
    ("forkyard/agent/read", {"agentId": "99"}, "agentId"),
    ("forkyard/agent/message", {"agentId": "1"}, "text"),
    ("forkyard/agent/cancel", {"agentId": None}, "agentId"),
    ("forkyard/agent/diff", {"agentId": ["1"]}, "agentId"),
    ("forkyard/agent/file", {"agentId": "nope", "path": "a"}, "agentId"),
    ("forkyard/agent/file", {"agentId": "x"}, "path"),
    ("forkyard/agent/apply", {"agentId": "x", "paths": "a"}, "paths"),
    ("forkyard/agent/discard", {"agentId": "nope"}, "agentId"),
    ("forkyard/chat", {"text": 3}, "text"),
    ("forkyard/thread/read", {}, "threadId"),
]


async def test_malformed_params_are_answered_with_invalid_params(
    start_server: StartServer, repo: Path
) -> None:
    client = await start_server(repo)
    for method, params, field in BAD_PARAMS:
        with pytest.raises(JsonRpcException) as caught:
            await client.request(method, params)
        error = caught.value
        assert error.code == -32602, (method, params, error)
        assert field in str(error.message), (method, params, error.message)
    # ... and the server is still healthy.
    listed = await client.request("forkyard/agent/list", {})
    assert listed == {"agents": []}


async def test_a_follow_up_runs_a_finished_agent_again_in_its_worktree(
    start_server: StartServer, repo: Path
) -> None:
    client = await start_server(repo)
    agent = await client.dispatch("echo one > one.txt", backend="command")
    first = await client.wait_for_agent(agent["id"])
    result = await client.request(
        "forkyard/agent/message", {"agentId": "1", "text": "echo two > two.txt"}
    )
    assert result["agent"]["state"] == "queued"
    await client.wait_until(lambda: states_seen(client, agent["id"]).count("done") == 2)
    again = client.agents[agent["id"]]
    assert again["worktree"] == first["worktree"]
    diff = await client.request("forkyard/agent/diff", {"agentId": agent["id"]})
    assert sorted(f["path"] for f in diff["files"]) == ["one.txt", "two.txt"]
    assert again["changes"]["files"] == 2
