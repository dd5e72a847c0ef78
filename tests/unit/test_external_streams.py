"""How the codex and claude backends read their programs' event streams, tested with
stand-in programs that print recorded streams: what the real programs printed in this
project's runs against the fake model (trimmed), plus the items of codex's documented
event schema that a scripted fake model cannot make codex emit (its to-do list, file
changes). Also: programs that print garbage, or exit non-zero, fail with stderr's tail."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from forkyard.agents.claude import ClaudeBackend
from forkyard.agents.codex import CodexBackend
from forkyard.agents.external_config import ExternalBackendConfig
from forkyard.agents.external_runtime import AgentHome, ExternalProgramBackend
from tests.fakes.agent_context import (
    FakeAgentContext,
    Workspace,
    make_workspace,
    server_environ,
    settings_for,
)

THREAD = "01a2146e-9df0-7943-b6b5-3eec8e89768e"
SESSION = "650e84fc-e964-4084-bde5-105b7035b437"
COMMAND = "/bin/bash -lc \"printf 'hello\\\\n' > notes.txt\""


def codex_item(event: str, item: dict[str, Any]) -> dict[str, Any]:
    return {"type": event, "item": item}


CODEX_RUN: list[dict[str, Any]] = [
    {"type": "thread.started", "thread_id": THREAD},
    codex_item(
        "item.completed",
        {
            "id": "item_0",
            "type": "error",
            "message": "Model metadata for `fake-model` not found. Defaulting to fallback "
            "metadata; this can degrade performance and cause issues.",
        },
    ),
    {"type": "turn.started"},
    codex_item(
        "item.started",
        {
            "id": "item_1",
            "type": "todo_list",
            "items": [
                {"text": "Read the code", "completed": False},
                {"text": "Add the notes file", "completed": False},
            ],
        },
    ),
    codex_item("item.completed", {"id": "item_2", "type": "agent_message", "text": "On it."}),
    codex_item(
        "item.updated",
        {
            "id": "item_1",
            "type": "todo_list",
            "items": [
                {"text": "Read the code", "completed": True},
                {"text": "Add the notes file", "completed": False},
            ],
        },
    ),
    codex_item(
        "item.started",
        {
            "id": "item_3",
            "type": "command_execution",
            "command": COMMAND,
            "aggregated_output": "",
            "exit_code": None,
            "status": "in_progress",
        },
    ),
    codex_item(
        "item.completed",
        {
            "id": "item_3",
            "type": "command_execution",
            "command": COMMAND,
            "aggregated_output": "",
            "exit_code": 0,
            "status": "completed",
        },
    ),
    codex_item(
        "item.completed",
        {
            "id": "item_4",
            "type": "file_change",
            "changes": [{"path": "/w/notes.txt", "kind": "add"}],
            "status": "completed",
        },
    ),
    codex_item(
        "item.completed", {"id": "item_5", "type": "agent_message", "text": "Added notes.txt"}
    ),
    {
        "type": "turn.completed",
        "usage": {
            "input_tokens": 20344,
            "cached_input_tokens": 0,
            "cache_write_input_tokens": 0,
            "output_tokens": 15,
            "reasoning_output_tokens": 0,
        },
    },
]

HIGH_DEMAND = "We’re currently experiencing high demand, which may cause temporary errors."
CODEX_MODEL_DOWN: list[dict[str, Any]] = [
    {"type": "thread.started", "thread_id": THREAD},
    {"type": "turn.started"},
    {"type": "error", "message": HIGH_DEMAND},
    {"type": "turn.failed", "error": {"message": HIGH_DEMAND}},
]

CLAUDE_RUN: list[dict[str, Any]] = [
    {
        "type": "system",
        "subtype": "init",
        "cwd": "/w",
        "session_id": SESSION,
        "tools": ["Read", "Write", "Edit", "TodoWrite"],
        "model": "fake-model",
        "permissionMode": "acceptEdits",
        "claude_code_version": "2.1.197",
    },
    {
        "type": "assistant",
        "message": {
            "id": "msg_0001",
            "type": "message",
            "role": "assistant",
            "model": "fake-model",
            "content": [
                {
                    "type": "tool_use",
                    "id": "toolu_0001",
                    "name": "TodoWrite",
                    "input": {
                        "todos": [
                            {"content": "Read the code", "status": "completed"},
                            {"content": "Write the notes", "status": "in_progress"},
                            {"content": "Check the result", "status": "pending"},
                            {"content": "Report", "status": "pending"},
                        ]
                    },
                }
            ],
        },
        "session_id": SESSION,
    },
    {
        "type": "assistant",
        "message": {
            "id": "msg_0002",
            "type": "message",
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": "toolu_0002",
                    "name": "Write",
                    "input": {"file_path": "/w/notes.txt", "content": "hello claude\n"},
                }
            ],
        },
        "session_id": SESSION,
    },
    {
        "type": "user",
        "message": {
            "role": "user",
            "content": [
                {
                    "tool_use_id": "toolu_0002",
                    "type": "tool_result",
                    "content": "File created successfully at: /w/notes.txt",
                }
            ],
        },
        "session_id": SESSION,
    },
    {
        "type": "assistant",
        "message": {"content": [{"type": "text", "text": "Wrote notes.txt"}]},
        "session_id": SESSION,
    },
    {
        "type": "result",
        "subtype": "success",
        "is_error": False,
        "num_turns": 2,
        "result": "Wrote notes.txt",
        "session_id": SESSION,
        "total_cost_usd": 0.19,
        "permission_denials": [],
    },
]

CLAUDE_API_ERROR: list[dict[str, Any]] = [
    CLAUDE_RUN[0],
    {
        "type": "result",
        "subtype": "success",
        "is_error": True,
        "api_error_status": 500,
        "num_turns": 1,
        "result": "API Error: 500 the fake model is down.",
        "session_id": SESSION,
        "permission_denials": [],
    },
]


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return make_workspace(tmp_path)


def stand_in(folder: Path, name: str, *, stdout: str, stderr: str = "", status: int = 0) -> Path:
    """A program that reads its stdin, notes its arguments in its HOME, prints the
    given output and exits with the given status."""
    folder.mkdir(exist_ok=True)
    program = folder / name
    program.write_text(
        "#!/bin/sh\n"
        'cat > "$HOME/stdin.txt"\n'
        'printf "%s\\n" "$@" > "$HOME/argv.txt"\n'
        f"cat <<'STDOUT'\n{stdout}\nSTDOUT\n"
        + (f"cat >&2 <<'STDERR'\n{stderr}\nSTDERR\n" if stderr else "")
        + f"exit {status}\n"
    )
    program.chmod(0o755)
    return program


def jsonl(events: list[dict[str, Any]]) -> str:
    return "\n".join(json.dumps(event) for event in events)


def context_for(workspace: Workspace, name: str, program: Path) -> FakeAgentContext:
    config = ExternalBackendConfig(program=str(program), model="fake-model")
    return FakeAgentContext(
        cwd=workspace.worktree,
        repo_root=workspace.repo,
        settings=settings_for(workspace.state_dir, **{name: config}),
        environ=server_environ(),
    )


def argv_of_last_run(context: FakeAgentContext, backend: ExternalProgramBackend) -> list[str]:
    home = AgentHome.for_agent(context, backend.name).path
    return (home / "argv.txt").read_text().splitlines()


async def test_codex_events_become_log_progress_and_the_last_message(
    workspace: Workspace, tmp_path: Path
) -> None:
    program = stand_in(tmp_path / "bin-codex", "codex", stdout=jsonl(CODEX_RUN))
    context = context_for(workspace, "codex", program)
    backend = CodexBackend()

    outcome = await backend.run(context, "Add a notes file")

    assert outcome.ok and outcome.summary == "Added notes.txt"
    assert ("Read the code", 0) in context.progress_reports
    assert ("Add the notes file", 50) in context.progress_reports
    assert context.log_text("system").startswith(f"codex thread {THREAD}")
    assert "Model metadata for `fake-model` not found" in context.log_text("warning")
    assert f"$ {COMMAND}" in context.log_text("command")
    assert f"$ {COMMAND} (exit 0)" in context.log_text("tool_result")
    assert context.log_text("tool") == "file change: add /w/notes.txt"
    assert context.log_text("assistant") == "On it.\nAdded notes.txt"
    home = AgentHome.for_agent(context, "codex").path
    assert (home / "stdin.txt").read_text() == "Add a notes file"
    assert argv_of_last_run(context, backend)[-1] == "-"

    await backend.run(context, "And a test")

    assert argv_of_last_run(context, backend)[-3:] == ["resume", THREAD, "-"]


async def test_a_failed_codex_turn_fails_with_codexs_message(
    workspace: Workspace, tmp_path: Path
) -> None:
    program = stand_in(tmp_path / "bin-codex", "codex", stdout=jsonl(CODEX_MODEL_DOWN), status=1)
    context = context_for(workspace, "codex", program)

    outcome = await CodexBackend().run(context, "Do something")

    assert not outcome.ok
    assert outcome.error == f"codex exited with status 1: {HIGH_DEMAND}"


@pytest.mark.parametrize("kind", ["codex", "claude"])
async def test_a_program_that_prints_garbage_fails_and_says_what_it_printed(
    workspace: Workspace, tmp_path: Path, kind: str
) -> None:
    program = stand_in(
        tmp_path / f"bin-{kind}",
        kind,
        stdout="<!doctype html>\n<html><body>It works!</body></html>",
        stderr="warning: something odd",
    )
    context = context_for(workspace, kind, program)
    backend = CodexBackend() if kind == "codex" else ClaudeBackend()

    outcome = await backend.run(context, "Do something")

    assert not outcome.ok
    assert outcome.error == (
        f"{kind} failed: its output was not its JSON event stream; it printed:\n"
        "<!doctype html>\n<html><body>It works!</body></html>\n"
        "stderr:\nwarning: something odd"
    )
    assert "<!doctype html>" in context.log_text("stdout")


@pytest.mark.parametrize("kind", ["codex", "claude"])
async def test_a_program_that_exits_non_zero_fails_with_its_stderr_tail(
    workspace: Workspace, tmp_path: Path, kind: str
) -> None:
    stderr = "\n".join(f"line {n}" for n in range(1, 9)) + (
        '\nError loading config.toml: `wire_api = "chat"` is no longer supported.'
    )
    program = stand_in(tmp_path / f"bin-{kind}", kind, stdout="", stderr=stderr, status=1)
    context = context_for(workspace, kind, program)
    backend = CodexBackend() if kind == "codex" else ClaudeBackend()

    outcome = await backend.run(context, "Do something")

    assert not outcome.ok
    assert outcome.error == (
        f"{kind} exited with status 1\nstderr:\nline 5\nline 6\nline 7\nline 8\n"
        'Error loading config.toml: `wire_api = "chat"` is no longer supported.'
    )


async def test_claude_messages_become_log_progress_and_the_result(
    workspace: Workspace, tmp_path: Path
) -> None:
    program = stand_in(tmp_path / "bin-claude", "claude", stdout=jsonl(CLAUDE_RUN))
    context = context_for(workspace, "claude", program)
    backend = ClaudeBackend()

    outcome = await backend.run(context, "Add a notes file")

    assert outcome.ok and outcome.summary == "Wrote notes.txt"
    assert ("Write the notes", 25) in context.progress_reports
    assert ("Write /w/notes.txt", None) in context.progress_reports
    assert "File created successfully" in context.log_text("tool_result")
    assert context.log_text("assistant") == "Wrote notes.txt"
    assert f"session {SESSION}" in context.log_text("system")

    await backend.run(context, "And a test")

    argv = argv_of_last_run(context, backend)
    assert argv[argv.index("--resume") + 1] == SESSION


async def test_a_claude_error_result_fails_the_run(workspace: Workspace, tmp_path: Path) -> None:
    program = stand_in(tmp_path / "bin-claude", "claude", stdout=jsonl(CLAUDE_API_ERROR))
    context = context_for(workspace, "claude", program)

    outcome = await ClaudeBackend().run(context, "Do something")

    assert not outcome.ok
    assert outcome.error == "claude failed: API Error: 500 the fake model is down."
