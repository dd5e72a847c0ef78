"""The codex backend driving the real `codex` program (installed by
tests/fakes/install_agents.sh) against a fake model on 127.0.0.1 speaking the Responses
API, in a real git worktree."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from forkyard.agents.base import RunOutcome
from forkyard.agents.codex import CodexBackend
from forkyard.agents.external_config import ExternalBackendConfig
from forkyard.settings import BUILTIN_ROLES
from tests.fakes.agent_context import (
    FAKE_API_KEY,
    FakeAgentContext,
    Workspace,
    assert_cancel_kills_everything,
    installed_program,
    make_workspace,
    server_environ,
    settings_for,
)
from tests.fakes.model_server import Reply
from tests.fakes.responses_server import ResponsesModelServer

#: No retries against the fake: a scripted failure must fail at once.
NO_RETRIES = [
    "-c",
    "model_providers.forkyard.request_max_retries=0",
    "-c",
    "model_providers.forkyard.stream_max_retries=0",
]


@pytest.fixture
def model() -> Iterator[ResponsesModelServer]:
    with ResponsesModelServer() as server:
        yield server


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return make_workspace(tmp_path)


def codex_context(
    workspace: Workspace, model: ResponsesModelServer, *, args: list[str] | None = None
) -> FakeAgentContext:
    config = ExternalBackendConfig(
        program=str(installed_program("codex")),
        model="fake-model",
        base_url=model.openai_base_url,
        args=args or [],
    )
    return FakeAgentContext(
        cwd=workspace.worktree,
        repo_root=workspace.repo,
        settings=settings_for(workspace.state_dir, codex=config),
        environ=server_environ(OPENAI_API_KEY=FAKE_API_KEY),
    )


def shell(command: str) -> Reply:
    return Reply(text="Running a command.", tool_calls=[("exec_command", {"cmd": command})])


async def test_codex_makes_the_scripted_edit_and_reports_its_last_message(
    workspace: Workspace, model: ResponsesModelServer
) -> None:
    model.script(shell("printf 'hello from codex\\n' > notes.txt"), Reply(text="Added notes.txt"))
    context = codex_context(workspace, model)

    outcome = await CodexBackend().run(context, "Add a notes file")

    assert outcome == RunOutcome(ok=True, summary="Added notes.txt")
    assert workspace.status() == ["?? notes.txt"]
    assert (workspace.worktree / "notes.txt").read_text() == "hello from codex\n"
    requests = model.responses_requests
    assert len(requests) == 2, "codex should ask the model, run the command, ask again"
    assert requests[0].headers["authorization"] == f"Bearer {FAKE_API_KEY}"
    assert requests[0].body["model"] == "fake-model"
    assert "Add a notes file" in requests[0].text
    assert "function_call_output" in requests[1].text
    assert "printf 'hello from codex" in context.log_text("command")
    assert "Added notes.txt" in context.log_text("assistant")
    assert any("printf" in message for message, _ in context.progress_reports)
    assert FAKE_API_KEY not in context.log_text()


async def test_a_follow_up_resumes_the_same_codex_thread(
    workspace: Workspace, model: ResponsesModelServer
) -> None:
    model.script(Reply(text="The answer is 42."), Reply(text="Yes, 42 again."))
    context = codex_context(workspace, model)
    backend = CodexBackend()

    first = await backend.run(context, "What is the answer?")
    second = await backend.run(context, "Are you sure?")

    assert (first.ok, second.ok) == (True, True)
    assert second.summary == "Yes, 42 again."
    follow_up = model.responses_requests[-1]
    assert "The answer is 42." in follow_up.text, "the follow-up must carry the history"
    assert "What is the answer?" in follow_up.text
    threads = [text for _, text in context.logs if text.startswith("codex thread ")]
    assert len(threads) == 2 and threads[0] == threads[1]
    thread_id = threads[0].removeprefix("codex thread ")
    commands = [text for kind, text in context.logs if kind == "command"]
    assert " resume " not in commands[0]
    assert f" resume {thread_id} -" in commands[-1]


async def test_an_explorer_codex_cannot_write_the_users_checkout(
    workspace: Workspace, model: ResponsesModelServer
) -> None:
    model.script(shell("echo hacked > README.md"), Reply(text="I could not write."))
    context = codex_context(workspace, model)
    context.role = BUILTIN_ROLES["explorer"]
    context.cwd = workspace.repo

    outcome = await CodexBackend().run(context, "Change the README")

    assert outcome.ok
    assert (workspace.repo / "README.md").read_text() == "# sample\n"
    command_output = json.dumps(model.responses_requests[-1].body["input"][-1])
    assert "Read-only file system" in command_output
    assert "--sandbox read-only" in context.log_text("command")


async def test_cancelling_stops_codex_and_every_process_it_started(
    workspace: Workspace, model: ResponsesModelServer
) -> None:
    (hanging,) = model.script(Reply(hang=True))
    context = codex_context(workspace, model)
    await assert_cancel_kills_everything(CodexBackend(), context, workspace.worktree, hanging)


async def test_a_model_error_fails_the_run_with_codexs_message(
    workspace: Workspace, model: ResponsesModelServer
) -> None:
    model.script(Reply(status=500, error_message="the fake model is down"))
    context = codex_context(workspace, model, args=NO_RETRIES)

    outcome = await CodexBackend().run(context, "Do something")

    assert not outcome.ok
    assert outcome.error is not None
    assert outcome.error.startswith("codex exited with status 1: ")
    reported = context.log_text("error").splitlines()[-1]
    assert reported in outcome.error, "the error should be codex's own message"
    assert model.responses_requests, "codex never reached the fake model"


async def test_commands_codex_runs_have_no_network_although_codex_has(
    workspace: Workspace, model: ResponsesModelServer
) -> None:
    # The model endpoint is reachable (codex talks to it); the command the model asks
    # for may not reach it, or anything else: codex's own sandbox stays on inside ours.
    probe = f"bash -c 'echo hi > /dev/tcp/127.0.0.1/{model.port}' && echo CONNECTED"
    model.script(shell(probe), Reply(text="done"))
    context = codex_context(workspace, model)

    outcome = await CodexBackend().run(context, "Call home")

    assert outcome.ok
    command_output = json.dumps(model.responses_requests[-1].body["input"][-1])
    assert "Operation not permitted" in command_output
    assert "CONNECTED" not in command_output
