"""External agent programs end to end: `forkyard serve` over stdio, driven by pytest-lsp's
client, runs the real Codex CLI, Claude Code and aider (installed into `.agents/` by
tests/fakes/install_agents.sh) in agent worktrees, each against a scripted fake model on
127.0.0.1 that speaks its API: the Responses API for codex, the Messages API for claude,
chat completions for aider, reached through the model gateway (the programs' sandboxes
have no network). Every test fails if the fake model saw nothing."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pygls.exceptions import JsonRpcException

from forkyard.client import ForkyardClient
from tests.e2e.conftest import StartServer
from tests.fakes.agent_context import (
    FAKE_API_KEY,
    installed_program,
    processes_in,
    wait_until_no_processes_in,
)
from tests.fakes.model_server import RecordedRequest, Reply
from tests.fakes.responses_server import ResponsesModelServer
from tests.helpers import git

# The programs start in one to a few seconds each (aider imports litellm); the server's
# wait for an agent is bounded well below this.
pytestmark = pytest.mark.timeout(90)

AGENT_TIMEOUT = 60.0
ORIGINAL_APP = "def add(a, b):\n    return a + b\n"
#: The one edit every program is scripted to make, as the diff's only hunk.
SWAP_HUNK = "-    return a + b\n+    return b + a\n"
SWAP_COMMAND = "sed -i 's/a + b/b + a/' src/app.py"
TASK = "Swap the operands in add"
#: What the orchestrator itself reports, whichever backend runs.
GENERIC_PROGRESS = {"starting", "running"}


@pytest.fixture
def server_env(server_env: dict[str, str]) -> dict[str, str]:
    """The server's environment with the keys the programs read (fake ones, which the
    fake model checks) and Claude Code's retry count, for a backend that passes it on."""
    return {
        **server_env,
        "OPENAI_API_KEY": FAKE_API_KEY,
        "ANTHROPIC_API_KEY": FAKE_API_KEY,
        "CLAUDE_CODE_MAX_RETRIES": "0",
    }


@pytest.fixture
def model() -> Iterator[ResponsesModelServer]:
    """One fake model for every program: it speaks all three APIs. Aider retries a
    failing model for a minute; a default reply keeps an unscripted request from turning
    into that."""
    with ResponsesModelServer(default=Reply(text="(unscripted reply)")) as server:
        yield server


@dataclass(frozen=True)
class Program:
    """How one real program is pointed at the fake model and scripted to make the edit."""

    kind: str
    #: The fake model's base URL the program's backend is configured with.
    base_url: Callable[[ResponsesModelServer], str]
    #: Which of the fake model's requests are this program's model calls.
    is_model_call: Callable[[RecordedRequest], bool]
    #: The replies that make the program swap the operands and finish.
    edit_script: tuple[Reply, ...]
    #: The agent's summary after that script: the program's final message.
    summary: str
    #: The auth header the program must send with the fake key.
    auth_header: tuple[str, str]
    args: tuple[str, ...] = ()
    #: What the program prints before its final message that is not part of it (aider
    #: echoes the file it added to the chat, which the summary does not tell apart).
    echo_before_summary: str = ""


def _is_responses(request: RecordedRequest) -> bool:
    return request.path.endswith("/responses")


PROGRAMS: dict[str, Program] = {
    "codex": Program(
        kind="codex",
        base_url=lambda model: model.openai_base_url,
        is_model_call=_is_responses,
        edit_script=(
            Reply(text="Swapping them.", tool_calls=[("exec_command", {"cmd": SWAP_COMMAND})]),
            Reply(text="Swapped the operands of add."),
        ),
        summary="Swapped the operands of add.",
        auth_header=("authorization", f"Bearer {FAKE_API_KEY}"),
        # No retries against the fake: a scripted failure must fail at once.
        args=(
            "-c",
            "model_providers.forkyard.request_max_retries=0",
            "-c",
            "model_providers.forkyard.stream_max_retries=0",
        ),
    ),
    "claude": Program(
        kind="claude",
        base_url=lambda model: model.anthropic_base_url,
        is_model_call=lambda request: request.api == "anthropic",
        edit_script=(
            Reply(text="Swapping them.", tool_calls=[("Bash", {"command": SWAP_COMMAND})]),
            Reply(text="Swapped the operands of add."),
        ),
        summary="Swapped the operands of add.",
        auth_header=("x-api-key", FAKE_API_KEY),
    ),
    "aider": Program(
        kind="aider",
        base_url=lambda model: model.openai_base_url,
        is_model_call=lambda request: request.api == "openai",
        # The "whole" format: the model answers with the file's whole new text in a fence.
        # Aider adds a file that a reply names to the chat and asks again; only then
        # may the model edit it.
        edit_script=(
            Reply(text="Please add src/app.py to the chat."),
            Reply(
                text="Swapped the operands of add.\n\n"
                "src/app.py\n```\ndef add(a, b):\n    return b + a\n```\n"
            ),
        ),
        summary="Swapped the operands of add.\n\n"
        "src/app.py\n```\ndef add(a, b):\n    return b + a\n```\n"
        "Applied edit to src/app.py",
        echo_before_summary="src/app.py\n",
        auth_header=("authorization", f"Bearer {FAKE_API_KEY}"),
        args=("--edit-format", "whole"),
    ),
}


def backend_options(program: Program, model: ResponsesModelServer, **extra: Any) -> dict[str, Any]:
    """initializationOptions configuring `program`'s backend against the fake model."""
    config = {
        "program": str(installed_program(program.kind)),
        "model": "fake-model",
        "baseUrl": program.base_url(model),
        "args": list(program.args),
        **extra,
    }
    return {"backends": {program.kind: config}}


def model_calls(program: Program, model: ResponsesModelServer) -> list[RecordedRequest]:
    calls = [request for request in model.requests if program.is_model_call(request)]
    assert calls, f"{program.kind} never reached the fake model"
    return calls


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


@pytest.mark.parametrize("kind", list(PROGRAMS))
async def test_the_program_makes_its_edit_in_the_worktree_and_finishes_done(
    start_server: StartServer, model: ResponsesModelServer, repo: Path, kind: str
) -> None:
    program = PROGRAMS[kind]
    model.script(*program.edit_script)
    client = await start_server(repo, initialization_options=backend_options(program, model))
    experimental: Any = client.initialize_result.capabilities.experimental  # type: ignore[union-attr]
    assert kind in experimental["forkyard"]["backends"]

    agent = await client.dispatch(TASK, backend=kind, title=f"swap with {kind}")
    done = await client.wait_for_agent(agent["id"], timeout=AGENT_TIMEOUT)

    assert done["state"] == "done", done
    assert done["backend"] == kind
    assert states_seen(client, agent["id"]) == ["queued", "starting", "running", "done"]
    assert done["summary"].removeprefix(program.echo_before_summary) == program.summary
    assert done["changes"] == {"files": 1, "additions": 1, "deletions": 1}
    diff = await client.request("forkyard/agent/diff", {"agentId": agent["id"]})
    (changed,) = diff["files"]
    assert (changed["path"], changed["status"]) == ("src/app.py", "modified")
    assert [hunk["text"] for hunk in changed["hunks"]] == [SWAP_HUNK]
    worktree = Path(done["worktree"])
    assert not worktree.is_relative_to(repo)
    assert (worktree / "src/app.py").read_text() == ORIGINAL_APP.replace("a + b", "b + a")
    # The user's checkout is untouched.
    assert (repo / "src/app.py").read_text() == ORIGINAL_APP
    assert git(repo, "status", "--porcelain") == ""

    calls = model_calls(program, model)
    header, value = program.auth_header
    assert calls[0].headers[header] == value
    assert calls[0].body["model"] == "fake-model"
    assert TASK in calls[0].text
    own_progress = set(progress_messages(client, agent["id"])) - GENERIC_PROGRESS
    assert f"starting {kind}" in own_progress, own_progress
    assert own_progress - {f"starting {kind}"}, "no progress from the program's own output"
    read = await client.request("forkyard/agent/read", {"agentId": agent["id"]})
    log_text = "\n".join(entry["text"] for entry in read["log"])
    assert program.summary.splitlines()[0] in log_text
    assert FAKE_API_KEY not in log_text


@pytest.mark.parametrize("kind", list(PROGRAMS))
async def test_cancel_ends_the_program_and_every_process_it_started(
    start_server: StartServer, model: ResponsesModelServer, repo: Path, kind: str
) -> None:
    program = PROGRAMS[kind]
    (hanging,) = model.script(Reply(hang=True))
    client = await start_server(repo, initialization_options=backend_options(program, model))
    agent = await client.dispatch("Take forever", backend=kind)
    running = await client.wait_for_agent(agent["id"], {"running"}, timeout=AGENT_TIMEOUT)
    worktree = Path(running["worktree"])
    await hanging.started()
    assert await processes_in(worktree), f"{kind} should be running in its worktree"

    result = await client.request("forkyard/agent/cancel", {"agentId": agent["id"]})

    assert result["agent"]["state"] == "cancelled"
    assert await wait_until_no_processes_in(worktree) == [], f"{kind} survived cancel"
    await hanging.client_disconnected()
    cancelled = await client.wait_for_agent(agent["id"], {"cancelled"})
    assert cancelled["error"] is None
    assert worktree.is_dir(), "the worktree is kept"
    model_calls(program, model)


async def test_a_command_that_prints_garbage_and_exits_non_zero_fails_with_its_stderr(
    start_server: StartServer, repo: Path
) -> None:
    options = {
        "backends": {
            "flaky": {"kind": "external", "command": "echo garbage; echo oops >&2; exit 3"}
        }
    }
    client = await start_server(repo, initialization_options=options)
    agent = await client.dispatch("anything", backend="flaky")
    failed = await client.wait_for_agent(agent["id"], timeout=AGENT_TIMEOUT)

    assert failed["state"] == "failed", failed
    assert failed["error"] == "flaky exited with status 3\nstderr:\noops"
    assert failed["summary"] == "garbage"


async def test_a_program_whose_output_is_not_its_event_stream_fails_with_its_stderr(
    start_server: StartServer, repo: Path, tmp_path: Path
) -> None:
    # Something called codex that exits 0 but never prints codex's JSON events.
    impostor = tmp_path / "impostor" / "codex"
    impostor.parent.mkdir()
    impostor.write_text("#!/bin/sh\necho 'this is not json'\necho 'codex: it broke' >&2\n")
    impostor.chmod(0o755)
    options = {"backends": {"codex": {"program": str(impostor)}}}
    client = await start_server(repo, initialization_options=options)
    agent = await client.dispatch("anything", backend="codex")
    failed = await client.wait_for_agent(agent["id"], timeout=AGENT_TIMEOUT)

    assert failed["state"] == "failed", failed
    assert failed["error"] == (
        "codex failed: its output was not its JSON event stream; it printed:\n"
        "this is not json\nstderr:\ncodex: it broke"
    )


async def test_a_model_error_fails_the_real_program_with_its_own_message(
    start_server: StartServer, model: ResponsesModelServer, repo: Path
) -> None:
    program = PROGRAMS["claude"]
    model.script(Reply(status=500, error_message="the fake model is down"))
    # The backend passes only the variables its settings name: here, the retry count.
    options = backend_options(program, model, env=["CLAUDE_CODE_MAX_RETRIES"])
    client = await start_server(repo, initialization_options=options)
    agent = await client.dispatch(TASK, backend="claude")
    failed = await client.wait_for_agent(agent["id"], timeout=AGENT_TIMEOUT)

    assert failed["state"] == "failed", failed
    assert failed["error"].startswith(
        "claude exited with status 1: API Error: 500 the fake model is down"
    ), failed["error"]
    assert len(model_calls(program, model)) == 1, "the retry count was passed on: no retry"
    assert failed["changes"] == {"files": 0, "additions": 0, "deletions": 0}


INSTALL_HINTS = {
    "codex": "npm install -g @openai/codex",
    "claude": "npm install -g @anthropic-ai/claude-code",
    "aider": "pip install aider-chat",
}


@pytest.mark.parametrize("kind", list(INSTALL_HINTS))
async def test_a_program_that_is_not_installed_is_unavailable_and_says_how_to_install_it(
    start_server: StartServer, repo: Path, tmp_path: Path, kind: str
) -> None:
    missing = tmp_path / "not-installed" / kind
    options = {"backends": {kind: {"program": str(missing)}}}
    client = await start_server(repo, initialization_options=options)

    experimental: Any = client.initialize_result.capabilities.experimental  # type: ignore[union-attr]
    forkyard = experimental["forkyard"]
    assert kind not in forkyard["backends"]
    assert "command" in forkyard["backends"]
    details = {detail["name"]: detail for detail in forkyard["backendDetails"]}
    assert details[kind]["available"] is False
    reason = details[kind]["reason"]
    assert str(missing) in reason and INSTALL_HINTS[kind] in reason, reason

    with pytest.raises(JsonRpcException) as caught:
        await client.dispatch(TASK, backend=kind)
    assert caught.value.code == -32602
    message = str(caught.value.message)
    assert message.startswith("backend: ") and INSTALL_HINTS[kind] in message, message
    assert await client.request("forkyard/agent/list", {}) == {"agents": []}
