"""The built-in `llm` agent end to end: `forkyard serve` over stdio, driven by pytest-lsp's
client, runs agents whose model is a scripted fake OpenAI server on 127.0.0.1, with real
worktrees, real sandboxed commands and real approvals through `window/showMessageRequest`.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from lsprotocol import types

from forkyard.client import ForkyardClient
from tests.e2e.conftest import StartServer
from tests.fakes.model_server import FakeModelServer, RecordedRequest, Reply
from tests.helpers import git

pytestmark = pytest.mark.timeout(90)

#: The sample repository's tests, run inside the sandbox without leaving caches behind
#: in the worktree (they would show up in the agent's diff).
RUN_TESTS = (
    f"PYTHONDONTWRITEBYTECODE=1 {shlex.quote(sys.executable)} -m pytest -q -p no:cacheprovider"
)

#: The tools of the loop and their arguments, exactly as PROTOCOL.md names them.
PROTOCOL_TOOLS: dict[str, tuple[set[str], set[str]]] = {
    # name: (all arguments, required arguments)
    "list_files": ({"path", "glob"}, set()),
    "read_file": ({"path", "start_line", "end_line"}, {"path"}),
    "search": ({"pattern", "path", "glob"}, {"pattern"}),
    "write_file": ({"path", "content"}, {"path", "content"}),
    "edit_file": ({"path", "old_text", "new_text"}, {"path", "old_text", "new_text"}),
    "delete_file": ({"path"}, {"path"}),
    "run_command": ({"command", "timeout_seconds"}, {"command"}),
    "finish": ({"summary"}, {"summary"}),
}
READ_ONLY_TOOLS = ["list_files", "read_file", "search", "finish"]


def model_options(server: FakeModelServer, **extra: Any) -> dict[str, Any]:
    config = server.model_config("openai").model_dump(exclude_none=True)
    config.update({"timeoutSeconds": 10, "maxRetries": 0})
    return {"models": {"default": config}, **extra}


def call(name: str, **arguments: Any) -> Reply:
    """A model answer that calls one tool."""
    return Reply(tool_calls=[(name, arguments)])


def tool_names(request: RecordedRequest) -> list[str]:
    return [tool["function"]["name"] for tool in request.tools]


def tool_results(request: RecordedRequest) -> list[str]:
    return [m["content"] for m in request.messages if m["role"] == "tool"]


def progress_messages(client: ForkyardClient, agent_id: str) -> list[str]:
    return [
        update["progress"]["message"]
        for update in client.agent_updates
        if update["id"] == agent_id and update.get("progress")
    ]


def states_seen(client: ForkyardClient, agent_id: str) -> list[str]:
    seen: list[str] = []
    for update in client.agent_updates:
        if update["id"] == agent_id and (not seen or seen[-1] != update["state"]):
            seen.append(update["state"])
    return seen


async def agent_log(client: ForkyardClient, agent_id: str) -> list[tuple[str, str]]:
    read = await client.request("forkyard/agent/read", {"agentId": agent_id})
    return [(entry["kind"], entry["text"]) for entry in read["log"]]


async def changed_files(client: ForkyardClient, agent_id: str) -> dict[str, str]:
    """path -> status of the agent's diff."""
    diff = await client.request("forkyard/agent/diff", {"agentId": agent_id})
    return {change["path"]: change["status"] for change in diff["files"]}


def answer_approvals(
    client: ForkyardClient,
    answer: Callable[[types.ShowMessageRequestParams], Awaitable[str | None]],
) -> list[types.ShowMessageRequestParams]:
    """Answer the server's `window/showMessageRequest` with the action titled as
    `answer` says (None: no action). Returns the list of requests received."""
    asked: list[types.ShowMessageRequestParams] = []

    @client.lsp.feature(types.WINDOW_SHOW_MESSAGE_REQUEST)  # type: ignore[untyped-decorator]
    async def show_message_request(
        params: types.ShowMessageRequestParams,
    ) -> types.MessageActionItem | None:
        asked.append(params)
        client.poke()
        title = await answer(params)
        return None if title is None else types.MessageActionItem(title=title)

    return asked


def assert_told_tools_role_and_task(
    first: RecordedRequest, number: int, task: str, worktree: Path
) -> None:
    """The model's first request offers a worker every tool with its JSON schema, and a
    system prompt saying who it is, where it works and what to do."""
    assert tool_names(first) == list(PROTOCOL_TOOLS)
    for tool in first.tools:
        parameters = tool["function"]["parameters"]
        expected, required = PROTOCOL_TOOLS[tool["function"]["name"]]
        assert set(parameters["properties"]) == expected, tool
        assert set(parameters["required"]) == required, tool
        assert tool["function"]["description"]
    system, user = first.messages[0], first.messages[1]
    assert system["role"] == "system"
    assert f"agent #{number}" in system["content"]
    assert "writes in its own worktree" in system["content"], "the worker role's description"
    assert f"Task: {task}" in system["content"]
    assert str(worktree) in system["content"]
    assert "src/app.py" in system["content"], "the repository's layout"
    assert user == {"role": "user", "content": task}


async def test_a_worker_reads_edits_writes_runs_the_tests_and_finishes(
    start_server: StartServer, repo: Path, fake_model_server: FakeModelServer
) -> None:
    documented = '    """The sum of a and b."""\n    return a + b\n'
    greet = "def greet(name):\n    return f'hello {name}'\n"
    summary = "Documented add() and added greet(); the tests pass."
    fake_model_server.script(
        call("read_file", path="src/app.py"),
        call("edit_file", path="src/app.py", old_text="    return a + b\n", new_text=documented),
        call("write_file", path="src/greet.py", content=greet),
        call("run_command", command=RUN_TESTS),
        call("finish", summary=summary),
    )
    client = await start_server(repo, initialization_options=model_options(fake_model_server))
    task = "Document add() and add a greet() helper"
    agent = await client.dispatch(task)
    assert agent["backend"] == "llm"
    assert agent["role"] == "worker"

    done = await client.wait_for_agent(agent["id"])
    assert done["state"] == "done", done
    assert done["summary"] == summary
    assert done["error"] is None
    assert done["changes"] == {"files": 2, "additions": 3, "deletions": 0}
    assert states_seen(client, agent["id"]) == ["queued", "starting", "running", "done"]

    # The diff is exactly the two file changes, in the agent's worktree, not the checkout.
    diff = await client.request("forkyard/agent/diff", {"agentId": agent["id"]})
    files = {change["path"]: change for change in diff["files"]}
    assert set(files) == {"src/app.py", "src/greet.py"}
    assert files["src/greet.py"]["status"] == "added"
    assert files["src/app.py"]["status"] == "modified"
    assert [h["text"] for h in files["src/app.py"]["hunks"]] == ['+    """The sum of a and b."""\n']
    worktree = Path(done["worktree"])
    assert not worktree.is_relative_to(repo)
    assert (worktree / "src/greet.py").read_text() == greet
    assert (repo / "src/app.py").read_text() == "def add(a, b):\n    return a + b\n"
    assert not (repo / "src/greet.py").exists()
    assert git(repo, "status", "--porcelain") == ""

    requests = fake_model_server.requests
    assert len(requests) == 5
    assert_told_tools_role_and_task(requests[0], done["number"], task, worktree)

    # Each tool's result went back to the model in the next request.
    assert "return a + b" in tool_results(requests[1])[-1]
    assert "src/app.py" in tool_results(requests[2])[-1]
    assert "src/greet.py" in tool_results(requests[3])[-1]
    assert "1 passed" in tool_results(requests[4])[-1], tool_results(requests[4])[-1]

    # The log shows every call, and progress named the steps as they ran.
    log = await agent_log(client, agent["id"])
    calls = [text.split(" ", 1)[0] for kind, text in log if kind == "tool"]
    assert calls == ["read_file", "edit_file", "write_file", "run_command", "finish"]
    results = [text for kind, text in log if kind == "tool_result"]
    assert len(results) == 5 and not any("-> error" in line for line in results), results
    steps = [m for m in progress_messages(client, agent["id"]) if m.startswith("step ")]
    assert steps[0] == "step 1: read_file src/app.py"
    assert all(m.split(":", 1)[0] in {f"step {n}" for n in range(1, 6)} for m in steps), steps
    await client.wait_until(
        lambda: any(
            f"agent #{done['number']}" in m.message and "done" in m.message
            for m in client.lsp.messages  # type: ignore[attr-defined]
        )
    )


async def test_an_explorer_may_not_write_or_run_commands(
    start_server: StartServer, repo: Path, fake_model_server: FakeModelServer
) -> None:
    fake_model_server.script(
        call("write_file", path="hack.txt", content="owned\n"),
        call("run_command", command="touch ran.txt"),
        call("read_file", path="README.md"),
        Reply(text="The README says: sample."),
    )
    client = await start_server(repo, initialization_options=model_options(fake_model_server))
    agent = await client.dispatch("What does the README say?", role="explorer")
    assert agent["branch"] is None

    done = await client.wait_for_agent(agent["id"])
    assert done["state"] == "done", done
    assert done["worktree"] is None and done["branch"] is None
    assert done["summary"] == "The README says: sample."

    requests = fake_model_server.requests
    assert len(requests) == 4
    assert tool_names(requests[0]) == READ_ONLY_TOOLS
    assert "read-only" in requests[0].messages[0]["content"]
    assert str(repo) in requests[0].messages[0]["content"], "it works in the user's checkout"
    refused_write = tool_results(requests[1])[-1]
    assert "write_file" in refused_write and "not allowed" in refused_write
    refused_command = tool_results(requests[2])[-1]
    assert "run_command" in refused_command and "not allowed" in refused_command
    assert tool_results(requests[3])[-1].strip().endswith("# sample")

    assert not (repo / "hack.txt").exists()
    assert not (repo / "ran.txt").exists()
    assert git(repo, "status", "--porcelain") == ""
    assert await changed_files(client, agent["id"]) == {}
    results = [text for kind, text in await agent_log(client, agent["id"]) if kind == "tool_result"]
    assert results[0].startswith("write_file -> error:")
    assert results[1].startswith("run_command -> error:")


CAREFUL_ROLE = {"roles": {"careful": {"policy": {"run_command": "ask"}}}}


@pytest.mark.parametrize(
    ("answer", "prompts", "ran"),
    [
        ("Allow once", 2, True),
        ("Allow for this agent", 1, True),
        ("Deny", 2, False),
        (None, 2, False),
        ("fail", 2, False),
    ],
)
async def test_commands_the_policy_asks_about_wait_for_the_users_answer(
    start_server: StartServer,
    repo: Path,
    fake_model_server: FakeModelServer,
    answer: str | None,
    prompts: int,
    ran: bool,
) -> None:
    """An "Allow once" asks again next time, "Allow for this agent" does not; "Deny", no
    answer (null) and an error answer all deny."""
    first_command = "echo one > one.txt"
    second_command = "echo two > two.txt"
    fake_model_server.script(
        call("run_command", command=first_command),
        call("run_command", command=second_command),
        call("finish", summary="ran the commands"),
    )
    client = await start_server(
        repo, initialization_options=model_options(fake_model_server, **CAREFUL_ROLE)
    )

    async def always(_params: types.ShowMessageRequestParams) -> str | None:
        if answer == "fail":
            raise RuntimeError("the editor could not show the prompt")
        return answer

    asked = answer_approvals(client, always)
    agent = await client.dispatch("write two files", role="careful", title="two files")
    done = await client.wait_for_agent(agent["id"])
    assert done["state"] == "done", done

    assert len(asked) == prompts
    for request, command in zip(asked, [first_command, second_command], strict=False):
        assert f"agent #{done['number']} (two files)" in request.message
        assert request.message.endswith(f"run_command: {command}")
        assert [action.title for action in request.actions or []] == [
            "Allow once",
            "Allow for this agent",
            "Deny",
        ]

    results = (
        tool_results(fake_model_server.requests[1])
        + tool_results(fake_model_server.requests[2])[1:]
    )
    worktree = Path(done["worktree"])
    if ran:
        assert (worktree / "one.txt").read_text() == "one\n"
        assert (worktree / "two.txt").read_text() == "two\n"
        assert await changed_files(client, agent["id"]) == {
            "one.txt": "added",
            "two.txt": "added",
        }
        assert not any("denied" in result for result in results), results
    else:
        assert not (worktree / "one.txt").exists()
        assert not (worktree / "two.txt").exists()
        assert await changed_files(client, agent["id"]) == {}
        assert len(results) == 2
        assert all("run_command was denied by the user" in result for result in results)
    approvals = [text for kind, text in await agent_log(client, agent["id"]) if kind == "approval"]
    logged = {"Allow once": "allow_once", "Allow for this agent": "allow_for_agent"}
    assert approvals[0] == f"run_command {first_command!r}: {logged.get(answer or '', 'deny')}"
    assert len(approvals) == prompts


async def test_an_approval_waiting_holds_up_nothing_else(
    start_server: StartServer, repo: Path, fake_model_server: FakeModelServer
) -> None:
    fake_model_server.script(
        call("run_command", command="echo approved > approved.txt"),
        call("finish", summary="ran it"),
    )
    client = await start_server(
        repo, initialization_options=model_options(fake_model_server, **CAREFUL_ROLE)
    )
    decided = asyncio.Event()

    async def when_decided(_params: types.ShowMessageRequestParams) -> str:
        await decided.wait()
        return "Allow once"

    asked = answer_approvals(client, when_decided)
    careful = await client.dispatch("needs approval", role="careful")
    await client.wait_until(lambda: asked)

    # While the user thinks about it, other agents run and requests are answered.
    other = await client.dispatch("echo meanwhile > meanwhile.txt", backend="command")
    assert (await client.wait_for_agent(other["id"]))["state"] == "done"
    listed = await client.request("forkyard/agent/list", {})
    states = {a["id"]: a["state"] for a in listed["agents"]}
    assert states[careful["id"]] == "running"
    assert not (Path(client.agents[careful["id"]]["worktree"]) / "approved.txt").exists()

    decided.set()
    done = await client.wait_for_agent(careful["id"])
    assert done["state"] == "done", done
    assert (Path(done["worktree"]) / "approved.txt").read_text() == "approved\n"


async def test_invalid_tool_arguments_go_back_to_the_model_which_corrects_them(
    start_server: StartServer, repo: Path, fake_model_server: FakeModelServer
) -> None:
    fake_model_server.script(
        Reply(tool_calls=[("write_file", '{"path": "notes.txt", "content": ')]),
        Reply(tool_calls=[("write_file", {"path": "notes.txt"})]),
        call("write_file", path="notes.txt", content="fixed\n"),
        Reply(text="Wrote notes.txt."),
    )
    client = await start_server(repo, initialization_options=model_options(fake_model_server))
    agent = await client.dispatch("write notes")
    done = await client.wait_for_agent(agent["id"])
    assert done["state"] == "done", done
    assert done["summary"] == "Wrote notes.txt."

    requests = fake_model_server.requests
    not_json = tool_results(requests[1])[-1]
    assert "write_file" in not_json and "not valid JSON" in not_json, not_json
    missing = tool_results(requests[2])[-1]
    assert "content: required" in missing, missing
    assert await changed_files(client, agent["id"]) == {"notes.txt": "added"}
    assert (Path(done["worktree"]) / "notes.txt").read_text() == "fixed\n"


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        (Reply(status=500, error_message="the GPU caught fire"), "HTTP 500: the GPU caught fire"),
        (Reply(garbage=True), "invalid response"),
    ],
    ids=["http-500", "garbage"],
)
async def test_a_failing_model_fails_the_agent_and_keeps_its_work(
    start_server: StartServer,
    repo: Path,
    fake_model_server: FakeModelServer,
    failure: Reply,
    expected: str,
) -> None:
    fake_model_server.script(call("write_file", path="draft.txt", content="draft\n"), failure)
    client = await start_server(repo, initialization_options=model_options(fake_model_server))
    agent = await client.dispatch("draft something", title="drafter")
    failed = await client.wait_for_agent(agent["id"])
    assert failed["state"] == "failed", failed
    assert expected in failed["error"], failed["error"]
    assert fake_model_server.openai_base_url in failed["error"], "it names the endpoint"

    worktree = Path(failed["worktree"])
    assert (worktree / "draft.txt").read_text() == "draft\n", "the worktree is kept"
    assert git(repo, "show", f"{failed['branch']}:draft.txt") == "draft\n"
    assert await changed_files(client, agent["id"]) == {"draft.txt": "added"}
    # The notice is one short line; the whole error is on the agent (above).
    [notice] = await client.wait_until(
        lambda: [
            m.message
            for m in client.lsp.messages  # type: ignore[attr-defined]
            if "agent #1 (drafter) failed" in m.message
        ]
    )
    assert len(notice) <= 64 and "\n" not in notice, notice
    listed = await client.request("forkyard/agent/list", {})
    assert [a["state"] for a in listed["agents"]] == ["failed"]


async def test_a_follow_up_runs_a_finished_agent_again_in_its_worktree(
    start_server: StartServer, repo: Path, fake_model_server: FakeModelServer
) -> None:
    fake_model_server.script(
        call("write_file", path="a.txt", content="a\n"),
        call("finish", summary="wrote a.txt"),
        call("write_file", path="b.txt", content="b\n"),
        call("finish", summary="wrote b.txt too"),
    )
    client = await start_server(repo, initialization_options=model_options(fake_model_server))
    agent = await client.dispatch("write a.txt")
    first = await client.wait_for_agent(agent["id"])
    assert first["state"] == "done" and first["summary"] == "wrote a.txt"
    updates_before = len(client.agent_updates)

    result = await client.request(
        "forkyard/agent/message", {"agentId": str(first["number"]), "text": "now write b.txt"}
    )
    assert result["agent"]["state"] == "queued"
    await client.wait_until(
        lambda: any(
            u["id"] == agent["id"] and u["state"] == "running"
            for u in client.agent_updates[updates_before:]
        )
    )
    second = await client.wait_for_agent(agent["id"], {"done", "failed"})
    assert second["state"] == "done", second
    assert second["summary"] == "wrote b.txt too"
    assert second["worktree"] == first["worktree"]
    assert await changed_files(client, agent["id"]) == {"a.txt": "added", "b.txt": "added"}

    requests = fake_model_server.requests
    assert len(requests) == 4
    history = requests[2].messages
    assert [m["role"] for m in history] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
        "tool",
        "user",
    ]
    assert history[1]["content"] == "write a.txt"
    calls = [m["tool_calls"][0]["function"] for m in history if m["role"] == "assistant"]
    assert [c["name"] for c in calls] == ["write_file", "finish"]
    assert json.loads(calls[0]["arguments"]) == {"path": "a.txt", "content": "a\n"}
    assert history[-1] == {"role": "user", "content": "now write b.txt"}
    log = await agent_log(client, agent["id"])
    assert ("user", "now write b.txt") in log


async def test_a_running_agent_gets_a_follow_up_at_its_next_step(
    start_server: StartServer, repo: Path, fake_model_server: FakeModelServer
) -> None:
    held, _finish = fake_model_server.script(
        Reply(tool_calls=[("list_files", {})], hold=True, hold_after_chunks=0),
        call("finish", summary="listed the files"),
    )
    client = await start_server(repo, initialization_options=model_options(fake_model_server))
    agent = await client.dispatch("list the files")
    await held.started()
    result = await client.request(
        "forkyard/agent/message", {"agentId": agent["id"], "text": "and mind the README"}
    )
    assert result["agent"]["state"] == "running"
    held.release()
    done = await client.wait_for_agent(agent["id"])
    assert done["state"] == "done", done
    second = fake_model_server.requests[1].messages
    assert [m["role"] for m in second[-2:]] == ["tool", "user"]
    assert second[-1]["content"] == "and mind the README"


async def test_cancel_stops_an_agent_whose_model_hangs(
    start_server: StartServer, repo: Path, fake_model_server: FakeModelServer
) -> None:
    (hanging,) = fake_model_server.script(Reply(hang=True))
    client = await start_server(repo, initialization_options=model_options(fake_model_server))
    agent = await client.dispatch("think forever")
    await hanging.started()
    started = time.monotonic()
    result = await client.request("forkyard/agent/cancel", {"agentId": agent["id"]})
    assert result["agent"]["state"] == "cancelled"
    assert time.monotonic() - started < 3, "cancel waited for the model"
    await hanging.client_disconnected()
    assert result["agent"]["error"] is None
    assert await anyio.Path(result["agent"]["worktree"]).is_dir(), "the worktree is kept"
    listed = await client.request("forkyard/agent/list", {})
    assert [a["state"] for a in listed["agents"]] == ["cancelled"]
