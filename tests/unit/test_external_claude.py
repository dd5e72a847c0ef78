"""The claude backend driving the real `claude` program (installed by
tests/fakes/install_agents.sh) against a fake Anthropic API on 127.0.0.1, in a real git
worktree; and how roles become Claude Code's tool permissions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from forkyard.agents.base import RunOutcome
from forkyard.agents.claude import ClaudeBackend, tool_permissions
from forkyard.agents.external_config import ExternalBackendConfig
from forkyard.settings import BUILTIN_ROLES, RoleConfig
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
from tests.fakes.model_server import FakeModelServer, Reply


@pytest.fixture
def model() -> Iterator[FakeModelServer]:
    with FakeModelServer() as server:
        yield server


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return make_workspace(tmp_path)


def claude_context(
    workspace: Workspace, model: FakeModelServer, **config: object
) -> FakeAgentContext:
    backend = ExternalBackendConfig.model_validate(
        {
            "program": str(installed_program("claude")),
            "model": "fake-model",
            "base_url": model.anthropic_base_url,
            **config,
        }
    )
    return FakeAgentContext(
        cwd=workspace.worktree,
        repo_root=workspace.repo,
        settings=settings_for(workspace.state_dir, claude=backend),
        # Claude Code retries a failing API ten times with backoff; tests want it once.
        environ=server_environ(ANTHROPIC_API_KEY=FAKE_API_KEY, CLAUDE_CODE_MAX_RETRIES="0"),
    )


def write(path: Path, content: str) -> Reply:
    return Reply(
        text="Writing the file.",
        tool_calls=[("Write", {"file_path": str(path), "content": content})],
    )


async def test_claude_makes_the_scripted_edit_and_reports_its_result(
    workspace: Workspace, model: FakeModelServer
) -> None:
    model.script(
        write(workspace.worktree / "notes.txt", "hello from claude\n"),
        Reply(text="Added notes.txt"),
    )
    context = claude_context(workspace, model)

    outcome = await ClaudeBackend().run(context, "Add a notes file")

    assert outcome == RunOutcome(ok=True, summary="Added notes.txt")
    assert workspace.status() == ["?? notes.txt"]
    assert (workspace.worktree / "notes.txt").read_text() == "hello from claude\n"
    requests = [r for r in model.requests if r.api == "anthropic"]
    assert len(requests) == 2, "claude should ask the model, write, ask again"
    assert requests[0].headers["x-api-key"] == FAKE_API_KEY
    assert requests[0].body["model"] == "fake-model"
    assert "Add a notes file" in requests[0].text
    assert "tool_result" in requests[1].text
    assert "Write" in context.log_text("tool")
    assert any(message.startswith("Write ") for message, _ in context.progress_reports)
    assert "--permission-mode acceptEdits" in context.log_text("command")
    assert FAKE_API_KEY not in context.log_text()


async def test_a_follow_up_resumes_the_claude_session(
    workspace: Workspace, model: FakeModelServer
) -> None:
    model.script(Reply(text="The answer is 42."), Reply(text="Yes, 42 again."))
    context = claude_context(workspace, model)
    backend = ClaudeBackend()

    first = await backend.run(context, "What is the answer?")
    second = await backend.run(context, "Are you sure?")

    assert (first.ok, second.ok) == (True, True)
    assert second.summary == "Yes, 42 again."
    follow_up = model.last_request
    assert "The answer is 42." in follow_up.text, "the follow-up must carry the history"
    assert "What is the answer?" in follow_up.text
    commands = [text for kind, text in context.logs if kind == "command"]
    assert "--resume" not in commands[0]
    assert "--resume " in commands[1]


async def test_an_explorer_claude_has_no_writing_tools(
    workspace: Workspace, model: FakeModelServer
) -> None:
    model.script(write(workspace.repo / "README.md", "hacked\n"), Reply(text="I could not."))
    context = claude_context(workspace, model)
    context.role = BUILTIN_ROLES["explorer"]
    context.cwd = workspace.repo

    outcome = await ClaudeBackend().run(context, "Change the README")

    assert outcome.ok
    assert (workspace.repo / "README.md").read_text() == "# sample\n"
    offered = {tool["name"] for tool in model.requests[0].tools}
    assert "Read" in offered
    assert not offered & {"Write", "Edit", "Bash", "WebFetch"}
    assert "error:" in context.log_text("tool_result")


async def test_cancelling_stops_claude_and_every_process_it_started(
    workspace: Workspace, model: FakeModelServer
) -> None:
    (hanging,) = model.script(Reply(hang=True))
    context = claude_context(workspace, model)
    await assert_cancel_kills_everything(ClaudeBackend(), context, workspace.worktree, hanging)


async def test_a_model_error_fails_the_run_with_claudes_result(
    workspace: Workspace, model: FakeModelServer
) -> None:
    model.script(Reply(status=500, error_message="the fake model is down"))
    context = claude_context(workspace, model, env=["CLAUDE_CODE_MAX_RETRIES"])

    with anyio.fail_after(30):
        outcome = await ClaudeBackend().run(context, "Do something")

    assert not outcome.ok
    assert outcome.error is not None
    assert outcome.error.startswith(
        "claude exited with status 1: API Error: 500 the fake model is down"
    )
    assert len(model.requests) == 1, "CLAUDE_CODE_MAX_RETRIES=0 was passed on: no retry"


def test_a_worker_may_edit_and_run_commands_without_asking() -> None:
    allowed, disallowed, mode = tool_permissions(BUILTIN_ROLES["worker"], writable=True)

    assert mode == "acceptEdits"
    assert {"Read", "Write", "Edit", "Bash", "Grep"} <= set(allowed)
    assert set(disallowed) == {"WebFetch", "WebSearch", "EnterWorktree", "ExitWorktree"}


def test_an_explorer_gets_reading_tools_only_whatever_its_role_lists() -> None:
    role = RoleConfig(worktree=False)  # lists every tool, but has no worktree

    allowed, disallowed, mode = tool_permissions(role, writable=False)

    assert mode == "default"
    assert set(allowed) == {"Read", "Glob", "Grep", "LS"}
    assert {"Write", "Edit", "MultiEdit", "NotebookEdit", "Bash"} <= set(disallowed)


def test_role_policies_deny_and_ask_map_to_claude_permissions() -> None:
    role = RoleConfig(policy={"run_command": "deny", "edit_file": "ask"})

    allowed, disallowed, mode = tool_permissions(role, writable=True)

    assert "Bash" in disallowed and "Bash" not in allowed
    # "ask" cannot be asked in print mode: neither pre-approved nor removed, and edits
    # are no longer accepted wholesale.
    assert "Edit" not in allowed and "Edit" not in disallowed
    assert "Write" in allowed
    assert mode == "default"
