"""Review across agents, end to end through a real front and its daemon on a real
repository: agents that change the same function see each other as overlaps (and the
hunk diagnostics say so), apply in order stops at the first conflict with the ones before
it in the buffer, rebase onto the person's commit gives a fresh diff or lists its
conflicts, and best of 3 runs the role's check on each."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lsprotocol import types

from forkyard.client import ForkyardClient, default_capabilities
from tests.e2e.conftest import StartServer
from tests.e2e.editor import Editor
from tests.e2e.test_chat_commands import say
from tests.e2e.test_review import forkyard_diagnostics, run_agent
from tests.e2e.test_terminal import forkyard
from tests.helpers import git, make_repo

pytestmark = pytest.mark.timeout(120)

TOTAL = "def total():\n    a = 1\n    b = 2\n    c = 3\n    return a + b + c\n"
OTHER = "".join(f"\n\ndef f{i}():\n    return {i}\n" for i in range(8))
APP = TOTAL + OTHER


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo", {"app.py": APP, "README.md": "# app\n"})


def overlap_numbers(client: ForkyardClient, agent: dict[str, Any]) -> list[int]:
    numbers = {a["id"]: a["number"] for a in client.agents.values()}
    current = client.agents[agent["id"]]
    return sorted(numbers[o["agentId"]] for o in current["overlaps"])


async def test_three_agents_on_one_function_overlap_apply_in_order_and_rebase(
    start_server: StartServer, repo: Path
) -> None:
    client = await start_server(repo)
    editor = Editor(client)
    first = await run_agent(client, "sed -i 's/a = 1$/a = 10/' app.py", "a ten")
    second = await run_agent(client, "sed -i 's/b = 2$/b = 20/' app.py", "b twenty")
    third = await run_agent(client, "sed -i 's/a = 1$/a = 100/' app.py", "a hundred")
    elsewhere = await run_agent(client, "sed -i 's/return 5$/return 50/' app.py", "five")

    # Each of the three sees the other two (same line, or the line next to it); the
    # fourth changed lines far from theirs and overlaps nobody.
    await client.wait_until(
        lambda: all(len(client.agents[a["id"]]["overlaps"]) == 2 for a in (first, second, third))
    )
    assert overlap_numbers(client, first) == [2, 3]
    assert overlap_numbers(client, second) == [1, 3]
    assert overlap_numbers(client, third) == [1, 2]
    assert client.agents[elsewhere["id"]]["overlaps"] == []
    assert client.agents[first["id"]]["overlaps"][0]["paths"] == ["app.py"]

    listed = await client.request("forkyard/agent/list", {})
    by_number = {a["number"]: a for a in listed["agents"]}
    assert [o["paths"] for o in by_number[3]["overlaps"]] == [["app.py"], ["app.py"]]

    uri = editor.open(repo / "app.py")
    diagnostics = await client.wait_until(
        lambda: len(forkyard_diagnostics(client, uri)) == 4 and forkyard_diagnostics(client, uri)
    )
    messages = sorted(d.message for d in diagnostics)
    assert "agent #1: a ten (+1 -1); also changed by agents #2, #3" in messages
    assert "agent #2: b twenty (+1 -1); also changed by agents #1, #3" in messages
    assert "agent #4: five (+1 -1)" in messages

    # The person's unsaved edit on the line after agent #2's is said on its hunk only.
    editor.type_text(uri, APP.replace("    c = 3\n", "    c = 3  # mine\n"))
    mentioned = await client.wait_until(
        lambda: [
            d.message for d in forkyard_diagnostics(client, uri) if "next to your edit" in d.message
        ]
    )
    assert mentioned == [
        "agent #2: b twenty (+1 -1); also changed by agents #1, #3; next to your edit"
    ]

    result = await client.request(
        "forkyard/agent/applyAll", {"agentIds": [first["id"], second["id"], third["id"]]}
    )
    assert [r["applied"] for r in result["results"]] == [True, True, False]
    assert result["stoppedAt"] == third["id"]
    [conflict] = result["results"][2]["conflicts"]
    assert conflict["path"] == "app.py"
    buffer = editor.buffers[uri]
    assert "    a = 10\n    b = 20\n    c = 3  # mine\n" in buffer, (
        "the first two, one over the other"
    )
    assert "a = 100" not in buffer, "nothing of the conflicting third"
    assert [e.label for e in editor.edits] == ["Forkyard: agent #1", "Forkyard: agent #2"]
    await client.wait_for_agent(first["id"], {"applied"})
    await client.wait_for_agent(second["id"], {"applied"})
    assert client.agents[third["id"]]["state"] == "done"
    await client.wait_until(lambda: client.agents[third["id"]]["overlaps"] == [])

    await commit_and_rebase(client, repo, uri, buffer, third, elsewhere)


async def commit_and_rebase(
    client: ForkyardClient,
    repo: Path,
    uri: str,
    buffer: str,
    third: dict[str, Any],
    elsewhere: dict[str, Any],
) -> None:
    # The person saves and commits; the third agent's rebase conflicts, the fourth's is
    # clean and its diff is only its own change over the new commit.
    (repo / "app.py").write_text(buffer)
    git(repo, "commit", "-qam", "the person's commit")
    head = git(repo, "rev-parse", "HEAD").strip()

    rebased = await client.request("forkyard/agent/rebase", {"agentId": elsewhere["id"]})
    assert rebased["conflicts"] == []
    assert rebased["agent"]["baseRef"] == head
    assert rebased["agent"]["state"] == "done"
    diff = await client.request("forkyard/agent/diff", {"agentId": elsewhere["id"]})
    assert [f["path"] for f in diff["files"]] == ["app.py"]
    assert "+    return 50" in diff["patch"] and "a = 10" not in diff["patch"]
    assert "    a = 10\n    b = 20\n" in Path(elsewhere["worktree"], "app.py").read_text()
    await client.wait_until(
        lambda: [d for d in forkyard_diagnostics(client, uri) if d.message.startswith("agent #4")]
    )

    conflicted = await client.request("forkyard/agent/rebase", {"agentId": "3"})
    assert conflicted["conflicts"] == ["app.py"]
    assert conflicted["agent"]["state"] == "done"
    marked = Path(third["worktree"], "app.py").read_text()
    assert "<<<<<<<" in marked and "a = 100" in marked and "a = 10\n" in marked
    refs = git(repo, "for-each-ref", "--format=%(refname)", "refs/forkyard/rebased/")
    assert len(refs.split()) == 2, "both old tips kept"


async def test_best_of_three_with_a_check_that_fails_for_one(
    start_server: StartServer, repo: Path, trust_repo: Any
) -> None:
    # Each agent writes its own number into the line; the check refuses agent #2's.
    (repo / ".forkyard.toml").write_text(
        '[roles.worker]\ncheck = "echo junk > check.log; mkdir -p .cache && touch .cache/c; '
        "! grep -q 'return 22$' app.py && echo all good\"\n"
    )
    git(repo, "add", ".forkyard.toml")
    git(repo, "commit", "-qm", "check")
    trust_repo(repo)
    capabilities = default_capabilities()
    assert capabilities.window is not None
    capabilities.window.show_message = types.ShowMessageRequestClientCapabilities()
    capabilities.experimental = {"forkyard": {"noticeActions": True}}
    client = await start_server(repo, capabilities=capabilities)
    editor = Editor(client)
    asked: list[types.ShowMessageRequestParams] = []

    @client.lsp.feature(types.WINDOW_SHOW_MESSAGE_REQUEST)
    def choose(params: types.ShowMessageRequestParams) -> types.MessageActionItem | None:
        asked.append(params)
        client.poke()
        wanted = "Discard the others"
        if any(action.title == wanted for action in params.actions or []):
            return types.MessageActionItem(title=wanted)
        return None

    command = 'n=$(basename "$PWD" | cut -d- -f1); sed -i "s/return 2$/return 2$n/" app.py'
    result = await client.request(
        "forkyard/agent/dispatch",
        {"task": command, "backend": "command", "count": 3, "title": "two"},
    )
    agents = result["agents"]
    assert [a["number"] for a in agents] == [1, 2, 3]
    assert result["agent"]["id"] == agents[0]["id"]
    assert len({a["group"] for a in agents}) == 1 and agents[0]["group"]
    assert [a["title"] for a in agents] == ["two (1/3)", "two (2/3)", "two (3/3)"]
    done = [await client.wait_for_agent(a["id"]) for a in agents]
    assert [a["state"] for a in done] == ["done"] * 3
    assert [a["check"]["passed"] for a in done] == [True, False, True]
    assert "all good" in done[0]["check"]["summary"]
    assert "exit status 1" in done[1]["check"]["summary"]

    ids = [a["id"] for a in agents]
    compared = await client.request("forkyard/agent/compare", {"agentIds": ids})
    assert [(e["files"], e["additions"], e["deletions"]) for e in compared["agents"]] == [
        (1, 1, 1)
    ] * 3
    assert [e["check"]["passed"] for e in compared["agents"]] == [True, False, True]
    assert sorted((o["a"], o["b"]) for o in compared["overlaps"]) == sorted(
        [(ids[0], ids[1]), (ids[0], ids[2]), (ids[1], ids[2])]
    )
    assert all(o["paths"] == ["app.py"] for o in compared["overlaps"])
    # The check judged the work and left nothing of its own in the worktree.
    diff = await client.request("forkyard/agent/diff", {"agentId": ids[0]})
    assert [f["path"] for f in diff["files"]] == ["app.py"]
    assert not Path(done[0]["worktree"], "check.log").exists()

    uri = editor.open(repo / "app.py")
    applied = await client.request("forkyard/agent/apply", {"agentId": ids[2]})
    assert applied["applied"] is True
    assert "return 23" in editor.buffers[uri]
    await client.wait_for_agent(ids[2], {"applied"})
    await client.wait_until(
        lambda: [a for a in asked if "discard #1, #2 of its group" in a.message]
    )
    await client.wait_for_agent(ids[0], {"discarded"})
    await client.wait_for_agent(ids[1], {"discarded"})
    kept = git(repo, "for-each-ref", "--format=%(refname)", "refs/forkyard/discarded/")
    assert kept.split() == ["refs/forkyard/discarded/1", "refs/forkyard/discarded/2"]


async def test_the_chat_and_the_terminal_show_overlaps_and_apply_in_order(
    start_server: StartServer, repo: Path, server_env: dict[str, str]
) -> None:
    client = await start_server(repo)
    editor = Editor(client)
    first = await run_agent(client, "sed -i 's/a = 1$/a = 10/' app.py", "a ten")
    second = await run_agent(client, "sed -i 's/b = 2$/b = 20/' app.py", "b twenty")
    await client.wait_until(lambda: client.agents[first["id"]]["overlaps"])

    listed = await say(client, "/agents")
    assert "#2 **b twenty** `done`" in listed["text"]
    assert "— overlaps #1 (app.py)" in listed["text"]
    assert "— overlaps #2 (app.py)" in listed["text"]
    code, out, err = await forkyard(server_env, repo, "agents")
    assert code == 0, err
    lines = out.splitlines()
    assert any(
        line.startswith("#1 a ten done") and "overlaps #2 (app.py)" in line for line in lines
    )

    uri = editor.open(repo / "app.py")
    started = await say(client, "/apply 2 1", listed["threadId"])
    assert "Applying agents #2, #1 in your editor, in that order" in started["text"]

    def told() -> str | None:
        for method, params in client.notifications:
            text = params["message"]["text"] if method == "forkyard/chat/message" else ""
            if "Applied agent #1" in text:
                return str(text)
        return None

    note = await client.wait_until(told)
    assert note.index("Applied agent #2") < note.index("Applied agent #1")
    assert "    a = 10\n    b = 20\n" in editor.buffers[uri]
    assert [e.label for e in editor.edits] == ["Forkyard: agent #2", "Forkyard: agent #1"]
    await client.wait_for_agent(first["id"], {"applied"})
    await client.wait_for_agent(second["id"], {"applied"})

    code, out, err = await forkyard(
        server_env, repo, "dispatch", "true", "--backend", "command", "--n", "2"
    )
    assert code == 0, err
    assert [line.split(" queued ")[0] for line in out.splitlines()] == [
        "#3 true (1/2)",
        "#4 true (2/2)",
    ], out


async def test_the_terminal_applies_several_agents_in_order_onto_disk(
    start_server: StartServer, repo: Path, server_env: dict[str, str]
) -> None:
    client = await start_server(repo)
    await run_agent(client, "sed -i 's/a = 1$/a = 10/' app.py", "a ten")
    await run_agent(client, "sed -i 's/b = 2$/b = 20/' app.py", "b twenty")
    third = await run_agent(client, "sed -i 's/a = 1$/a = 100/' app.py", "a hundred")
    code, out, _ = await forkyard(server_env, repo, "apply", "1", "2", "3")
    assert code == 1, "it stopped at a conflict"
    assert out.index("Applied agent #1") < out.index("Applied agent #2")
    assert "Stopped at agent #3: nothing of it was applied" in out
    assert "    a = 10\n    b = 20\n" in (repo / "app.py").read_text()
    listed = await client.request("forkyard/agent/list", {})
    assert [a["state"] for a in listed["agents"]] == ["done", "applied", "applied"]
    assert listed["agents"][0]["id"] == third["id"]
