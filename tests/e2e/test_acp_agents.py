"""Real ACP agents end to end: `forkyard serve` over stdio runs claude-agent-acp (driving
Claude Code) and codex-acp (driving Codex), installed into `.agents/` by
tests/fakes/install_agents.sh, in agent worktrees, sandboxed, against the fake model on
127.0.0.1 through the model gateway. Each test fails if the fake model saw nothing."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from lsprotocol import types

from forkyard.client import ForkyardClient
from tests.e2e.conftest import StartServer
from tests.e2e.test_llm_agents import answer_approvals
from tests.fakes.agent_context import (
    FAKE_API_KEY,
    agents_dir,
    processes_in,
    wait_until_no_processes_in,
)
from tests.fakes.model_server import RecordedRequest, Reply
from tests.fakes.responses_server import ResponsesModelServer
from tests.helpers import git

pytestmark = pytest.mark.timeout(120)

AGENT_TIMEOUT = 90.0
ORIGINAL_APP = "def add(a, b):\n    return a + b\n"
SWAP_HUNK = "-    return a + b\n+    return b + a\n"
SWAP_COMMAND = "sed -i 's/a + b/b + a/' src/app.py"


@dataclass(frozen=True)
class AcpProgram:
    backend: str
    #: The program under `.agents/`.
    path: str
    base_url: Callable[[ResponsesModelServer], str]
    is_model_call: Callable[[RecordedRequest], bool]
    #: The model's reply that makes the program run a shell command.
    run: Callable[[str], Reply]


PROGRAMS = {
    "claude-acp": AcpProgram(
        backend="claude-acp",
        path="node_modules/.bin/claude-agent-acp",
        base_url=lambda model: model.anthropic_base_url,
        is_model_call=lambda request: request.api == "anthropic",
        run=lambda command: Reply(text="Running it.", tool_calls=[("Bash", {"command": command})]),
    ),
    "codex-acp": AcpProgram(
        backend="codex-acp",
        path="node_modules/.bin/codex-acp-linux-x64",
        base_url=lambda model: model.openai_base_url,
        is_model_call=lambda request: request.path.endswith("/responses"),
        run=lambda command: Reply(
            text="Running it.", tool_calls=[("exec_command", {"cmd": command})]
        ),
    ),
}


@pytest.fixture
def server_env(server_env: dict[str, str]) -> dict[str, str]:
    keys = {"OPENAI_API_KEY": FAKE_API_KEY, "ANTHROPIC_API_KEY": FAKE_API_KEY}
    return {**server_env, **keys}


@pytest.fixture
def model() -> Iterator[ResponsesModelServer]:
    with ResponsesModelServer(default=Reply(text="(unscripted reply)")) as server:
        yield server


def installed(program: AcpProgram) -> Path:
    folder = agents_dir()
    path = folder / program.path
    if path.exists():
        return path
    error = folder / f"{program.path.rsplit('/', 1)[-1]}.install-error"
    if error.exists():
        pytest.skip(f"{program.backend} is not installed: {error.read_text().strip()}")
    pytest.fail(f"{path} is missing: run `bash tests/fakes/install_agents.sh`")


def options(program: AcpProgram, model: ResponsesModelServer, **extra: Any) -> dict[str, Any]:
    installed(program)
    backend = {"baseUrl": program.base_url(model), "model": "fake-model"}
    return {"backends": {program.backend: backend}, **extra}


def model_calls(program: AcpProgram, model: ResponsesModelServer) -> list[RecordedRequest]:
    calls = [request for request in model.requests if program.is_model_call(request)]
    assert calls, f"{program.backend} never reached the fake model"
    return calls


async def agent_log(client: ForkyardClient, agent_id: str) -> str:
    read = await client.request("forkyard/agent/read", {"agentId": agent_id})
    return "\n".join(f"{entry['kind']}: {entry['text']}" for entry in read["log"])


@pytest.mark.parametrize("backend", list(PROGRAMS))
async def test_an_edit_gives_exactly_its_diff(
    start_server: StartServer, model: ResponsesModelServer, repo: Path, backend: str
) -> None:
    program = PROGRAMS[backend]
    model.script(program.run(SWAP_COMMAND), Reply(text="Swapped the operands."))
    client = await start_server(repo, initialization_options=options(program, model))
    experimental: Any = client.initialize_result.capabilities.experimental  # type: ignore[union-attr]
    details = {d["name"]: d for d in experimental["forkyard"]["backendDetails"]}
    assert details[backend]["available"] and details[backend]["kind"] == "acp", details

    agent = await client.dispatch("Swap the operands in add", backend=backend)
    done = await client.wait_for_agent(agent["id"], timeout=AGENT_TIMEOUT)

    assert done["state"] == "done", (done, await agent_log(client, agent["id"]))
    assert done["summary"].endswith("Swapped the operands."), done["summary"]
    diff = await client.request("forkyard/agent/diff", {"agentId": agent["id"]})
    (changed,) = diff["files"]
    assert changed["path"] == "src/app.py"
    assert [hunk["text"] for hunk in changed["hunks"]] == [SWAP_HUNK]
    assert (repo / "src/app.py").read_text() == ORIGINAL_APP
    assert git(repo, "status", "--porcelain") == ""
    calls = model_calls(program, model)
    assert "Swap the operands in add" in calls[0].text
    assert FAKE_API_KEY not in await agent_log(client, agent["id"])


@pytest.mark.parametrize("backend", list(PROGRAMS))
async def test_cancel_leaves_no_process(
    start_server: StartServer, model: ResponsesModelServer, repo: Path, backend: str
) -> None:
    program = PROGRAMS[backend]
    (hanging,) = model.script(Reply(hang=True))
    client = await start_server(repo, initialization_options=options(program, model))
    agent = await client.dispatch("Take forever", backend=backend)
    running = await client.wait_for_agent(agent["id"], {"running"}, timeout=AGENT_TIMEOUT)
    worktree = Path(running["worktree"])
    await hanging.started()
    assert await processes_in(worktree)

    result = await client.request("forkyard/agent/cancel", {"agentId": agent["id"]})

    assert result["agent"]["state"] == "cancelled"
    assert await wait_until_no_processes_in(worktree, timeout=20) == []
    await hanging.client_disconnected()


@pytest.mark.parametrize("backend", list(PROGRAMS))
async def test_an_explorer_writes_nothing_whatever_the_agent_does(
    start_server: StartServer, model: ResponsesModelServer, repo: Path, backend: str
) -> None:
    program = PROGRAMS[backend]
    model.script(program.run(SWAP_COMMAND), Reply(text="Tried."))
    client = await start_server(repo, initialization_options=options(program, model))

    agent = await client.dispatch("Swap the operands", backend=backend, role="explorer")
    ended = await client.wait_for_agent(agent["id"], timeout=AGENT_TIMEOUT)

    assert ended["state"] in ("done", "failed"), ended
    # Refused by the role (Claude Code asks first), or by the read-only sandbox.
    assert (repo / "src/app.py").read_text() == ORIGINAL_APP
    assert git(repo, "status", "--porcelain") == ""
    model_calls(program, model)


async def test_a_permission_request_is_answered_through_the_editor(
    start_server: StartServer, model: ResponsesModelServer, repo: Path
) -> None:
    """Claude Code asks before it runs a command; the role says "ask", so the person
    answers in the editor, and the answer is the option the agent offered."""
    program = PROGRAMS["claude-acp"]
    model.script(program.run("echo approved > approved.txt"), Reply(text="Ran it."))
    careful = {"roles": {"careful": {"policy": {"run_command": "ask"}}}}
    client = await start_server(repo, initialization_options=options(program, model, **careful))

    async def allow(_params: types.ShowMessageRequestParams) -> str | None:
        return "Allow once"

    asked = answer_approvals(client, allow)
    agent = await client.dispatch("Write approved.txt", backend="claude-acp", role="careful")
    done = await client.wait_for_agent(agent["id"], timeout=AGENT_TIMEOUT)

    assert done["state"] == "done", (done, await agent_log(client, agent["id"]))
    assert len(asked) == 1
    assert "run_command" in asked[0].message
    assert (Path(done["worktree"]) / "approved.txt").read_text() == "approved\n"
