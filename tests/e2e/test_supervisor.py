"""No agent and no background task can end the server: kill each kind in turn (an agent
whose finishing fails, a done-notice action that raises) and the server keeps serving,
the other agents finish normally, and a new agent runs to the end."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from lsprotocol import types

from forkyard.client import ForkyardClient, default_capabilities
from tests.e2e.conftest import StartServer

pytestmark = pytest.mark.timeout(120)

#: An agent that writes a file, then works until the test creates `go` in its worktree.
WAITING = "echo mine > mine.txt; while [ ! -e go ]; do sleep 0.02; done"


def admin_dir(worktree: Path) -> Path:
    """The worktree's folder in the repository's git dir (what `.git` points at)."""
    text = (worktree / ".git").read_text().strip()
    return Path(text.removeprefix("gitdir:").strip())


def shown(client: ForkyardClient) -> list[str]:
    return [m.message for m in client.lsp.messages]  # type: ignore[attr-defined]


async def running_worktree(client: ForkyardClient, agent: dict[str, Any]) -> Path:
    running = await client.wait_for_agent(agent["id"], {"running"})
    return Path(running["worktree"])


async def assert_still_serving(client: ForkyardClient) -> None:
    listed = await client.request("forkyard/agent/list", {})
    assert listed["agents"], listed
    fresh = await client.dispatch("echo fresh > fresh.txt", backend="command", title="fresh")
    done = await client.wait_for_agent(fresh["id"])
    assert done["state"] == "done", done
    assert (Path(done["worktree"]) / "fresh.txt").read_text() == "fresh\n"


async def test_an_agent_whose_finishing_fails_fails_alone(
    start_server: StartServer, repo: Path
) -> None:
    client = await start_server(repo)
    bystander = await client.dispatch(WAITING, backend="command", title="bystander")
    victim = await client.dispatch(WAITING, backend="command", title="victim")
    bystander_tree = await running_worktree(client, bystander)
    victim_tree = await running_worktree(client, victim)

    # Git cannot work on the victim's worktree any more: its diff and commit fail.
    shutil.rmtree(admin_dir(victim_tree))
    (victim_tree / "go").touch()
    failed = await client.wait_for_agent(victim["id"])
    assert failed["state"] == "failed"
    assert str(victim_tree) in failed["error"], failed["error"]
    assert "kept" in failed["error"]
    assert (victim_tree / "mine.txt").read_text() == "mine\n", "the agent's files are kept"

    assert client.agents[bystander["id"]]["state"] == "running", "not interrupted"
    (bystander_tree / "go").touch()
    done = await client.wait_for_agent(bystander["id"])
    assert done["state"] == "done", done
    assert done["changes"]["files"] >= 1
    await assert_still_serving(client)


@pytest.mark.parametrize("choice", ["Show diff", "Discard"])
async def test_a_done_notice_action_that_raises_is_reported_once(
    start_server: StartServer, repo: Path, choice: str
) -> None:
    capabilities = default_capabilities()
    assert capabilities.window is not None
    capabilities.window.show_message = types.ShowMessageRequestClientCapabilities()
    capabilities.experimental = {"forkyard": {"noticeActions": True}}
    client = await start_server(repo, capabilities=capabilities)
    worktrees: dict[int, Path] = {}

    @client.lsp.feature(types.WINDOW_SHOW_MESSAGE_REQUEST)  # type: ignore[untyped-decorator]
    def choose(params: types.ShowMessageRequestParams) -> types.MessageActionItem | None:
        if "#1 " not in params.message or 1 not in worktrees:
            return None
        # The action the user picks cannot work: git has lost the worktree meanwhile.
        shutil.rmtree(admin_dir(worktrees[1]))
        return types.MessageActionItem(title=choice)

    agent = await client.dispatch(WAITING, backend="command", title="noticed")
    worktrees[1] = await running_worktree(client, agent)
    (worktrees[1] / "go").touch()
    assert (await client.wait_for_agent(agent["id"]))["state"] == "done"

    def failure_lines() -> list[str]:
        return [m for m in shown(client) if "see the log" in m]

    try:
        [line] = await client.wait_until(failure_lines, timeout=20)
    except TimeoutError:
        raise AssertionError(f"no failure reported; shown: {shown(client)}") from None
    assert "\n" not in line
    assert len(line) <= 64, line
    assert line.startswith("Forkyard: "), line
    await assert_still_serving(client)
    assert len(failure_lines()) == 1, "told once"
