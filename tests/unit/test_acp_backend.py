"""The `acp` backend against a scripted ACP agent (tests/fakes/acp_agent.py), run for
real: sandboxed, in a real worktree, through the real SDK on both sides. What a real
agent does (an edit, a terminal, a permission request) and what a hostile or broken one
does (writes outside, garbage, a crash, a hang that ignores cancel) each end as the role
and the person would have it."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from forkyard.agents import acp_client
from forkyard.agents import acp_session as acp_backend
from forkyard.agents.acp import AcpBackend
from forkyard.agents.acp_session import LOST_SESSION_NOTE, role_preamble
from forkyard.agents.acp_terminals import Terminal
from forkyard.agents.external_config import ExternalBackendConfig
from forkyard.agents.external_runtime import AgentHome
from forkyard.settings import BUILTIN_ROLES, RoleConfig, SandboxSettings
from tests.fakes.agent_context import (
    FakeAgentContext,
    Workspace,
    make_workspace,
    server_environ,
    settings_for,
    wait_until_no_processes_in,
)

pytestmark = pytest.mark.timeout(60)

FAKE_AGENT = Path(__file__).resolve().parents[1] / "fakes" / "acp_agent.py"


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return make_workspace(tmp_path)


def agent_context(
    workspace: Workspace,
    tmp_path: Path,
    prompts: list[Any],
    *,
    load_session: bool = False,
    protocol_version: int = 1,
    role: RoleConfig | None = None,
    number: int = 1,
) -> FakeAgentContext:
    """A context whose `fake` backend runs the scripted agent with `prompts`."""
    script = tmp_path / f"script-{number}-{len(list(tmp_path.glob('script-*')))}.json"
    script.write_text(
        json.dumps(
            {
                "capabilities": {"loadSession": load_session},
                "protocolVersion": protocol_version,
                "prompts": prompts,
            }
        )
    )
    config = ExternalBackendConfig(
        acp=[sys.executable, str(FAKE_AGENT), str(script)], env=["ACP_FAKE_TRACE"]
    )
    settings = settings_for(workspace.state_dir, fake=config).model_copy(
        update={"sandbox": SandboxSettings(read_paths=[str(FAKE_AGENT.parent), str(tmp_path)])}
    )
    role = role or BUILTIN_ROLES["worker"]
    context = FakeAgentContext(
        cwd=workspace.worktree if role.worktree else workspace.repo,
        repo_root=workspace.repo,
        settings=settings,
        environ=server_environ(),
        role=role,
        agent_number=number,
    )
    # The trace goes to the agent's private home: the one place of its own it may write.
    context.environ = server_environ(ACP_FAKE_TRACE=str(trace_path(context)))
    return context


def trace_path(context: FakeAgentContext) -> Path:
    return AgentHome.for_agent(context, "fake").path / "trace.jsonl"


def trace(context: FakeAgentContext) -> list[dict[str, Any]]:
    path = trace_path(context)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def test_an_edit_through_the_client_lands_in_the_worktree_and_the_run_is_done(
    workspace: Workspace, tmp_path: Path
) -> None:
    context = agent_context(
        workspace,
        tmp_path,
        [
            [
                {"type": "plan", "entries": [{"content": "write notes", "status": "in_progress"}]},
                {
                    "type": "tool_call",
                    "id": "t1",
                    "title": "Write notes.txt",
                    "tool_kind": "edit",
                    "diff": {"path": "notes.txt", "oldText": None, "newText": "hello\n"},
                },
                {"type": "write_file", "path": "notes.txt", "content": "hello\n"},
                {"type": "message", "text": "Wrote the notes."},
            ]
        ],
    )

    outcome = await AcpBackend("fake").run(context, "Write a notes file")

    assert outcome.ok, outcome.error
    assert outcome.summary.endswith("Wrote the notes.")
    assert workspace.status() == ["?? notes.txt"]
    assert (workspace.worktree / "notes.txt").read_text() == "hello\n"
    assert ("plan 0/1: write notes", 0) in context.progress_reports
    assert "edit: Write notes.txt" in context.log_text("tool")
    assert "notes.txt" in context.log_text("diff")
    [initialized] = [entry for entry in trace(context) if entry["event"] == "initialize"]
    capabilities = initialized["clientCapabilities"]
    assert (capabilities["fs"]["readTextFile"], capabilities["fs"]["writeTextFile"]) == (True, True)
    assert capabilities["terminal"] is True
    [prompt] = [entry for entry in trace(context) if entry["event"] == "prompt"]
    assert prompt["text"] == f"{role_preamble(context)}\n\nWrite a notes file"
    assert "role 'worker'" in prompt["text"] and str(workspace.worktree) in prompt["text"]


async def test_reading_a_file_that_is_not_there_is_an_empty_text(
    workspace: Workspace, tmp_path: Path
) -> None:
    """Agents read a file before they create it; an error there stops some (Gemini CLI)."""
    context = agent_context(
        workspace,
        tmp_path,
        [[{"type": "read_file", "path": "new.txt"}, {"type": "read_file", "path": "../escape"}]],
    )
    outcome = await AcpBackend("fake").run(context, "Read")
    assert outcome.ok, outcome.error
    assert f"read {workspace.worktree}/new.txt:\n" in outcome.summary
    assert "escape failed" in outcome.summary, outcome.summary


async def test_an_explorer_cannot_write_whatever_the_agent_asks(
    workspace: Workspace, tmp_path: Path
) -> None:
    context = agent_context(
        workspace,
        tmp_path,
        [
            [
                {"type": "write_file", "path": "notes.txt", "content": "no\n"},
                {"type": "terminal", "command": "touch", "args": ["made-by-terminal"]},
                {"type": "read_file", "path": "README.md"},
            ]
        ],
        role=BUILTIN_ROLES["explorer"],
    )

    outcome = await AcpBackend("fake").run(context, "Look around")

    assert outcome.ok, outcome.error
    [initialized] = [entry for entry in trace(context) if entry["event"] == "initialize"]
    assert initialized["clientCapabilities"]["fs"]["writeTextFile"] is False
    assert initialized["clientCapabilities"]["terminal"] is False
    assert "notes.txt failed: write_file is not allowed" in outcome.summary
    assert "terminal touch failed" in outcome.summary
    assert "README.md:\n# sample" in outcome.summary
    assert not (workspace.repo / "notes.txt").exists()
    assert not (workspace.repo / "made-by-terminal").exists()


async def test_a_hostile_agent_writing_behind_the_client_reaches_nothing_outside(
    workspace: Workspace, tmp_path: Path
) -> None:
    outside = tmp_path / "outside.txt"
    context = agent_context(
        workspace,
        tmp_path,
        [
            [
                {"type": "write_outside", "path": str(outside)},
                {"type": "write_outside", "path": str(workspace.repo / "pwned.txt")},
            ]
        ],
    )

    outcome = await AcpBackend("fake").run(context, "Escape")

    assert outcome.ok, outcome.error
    assert not outside.exists()
    assert not (workspace.repo / "pwned.txt").exists()
    assert outcome.summary.count("failed") == 2, outcome.summary


@pytest.mark.parametrize(
    ("policy", "approval", "chosen"),
    [
        ("allow", "deny", "allow_once"),
        ("deny", "allow_once", "reject_once"),
        ("ask", "allow_for_agent", "allow_always"),
        ("ask", "deny", "reject_once"),
    ],
)
async def test_a_permission_request_is_answered_by_the_role_or_the_person(
    workspace: Workspace, tmp_path: Path, policy: str, approval: str, chosen: str
) -> None:
    role = BUILTIN_ROLES["worker"].model_copy(update={"policy": {"run_command": policy}})
    context = agent_context(
        workspace,
        tmp_path,
        [[{"type": "permission", "title": "Run make", "tool_kind": "execute"}]],
        role=role,
    )
    context.approval = approval  # type: ignore[assignment]

    outcome = await AcpBackend("fake").run(context, "Build it")

    assert outcome.ok, outcome.error
    assert outcome.summary.strip() == f"permission: {chosen}"


async def test_a_web_fetch_is_refused_whatever_the_role(
    workspace: Workspace, tmp_path: Path
) -> None:
    context = agent_context(
        workspace, tmp_path, [[{"type": "permission", "title": "Fetch", "tool_kind": "fetch"}]]
    )
    outcome = await AcpBackend("fake").run(context, "Browse")
    assert outcome.summary.strip() == "permission: reject_once"


async def test_a_terminal_runs_its_command_sandboxed_in_the_worktree(
    workspace: Workspace, tmp_path: Path
) -> None:
    context = agent_context(
        workspace,
        tmp_path,
        [[{"type": "terminal", "command": "sh", "args": ["-c", "pwd; echo made > made.txt"]}]],
    )

    outcome = await AcpBackend("fake").run(context, "Run it")

    assert outcome.ok, outcome.error
    assert f"exited 0:\n{workspace.worktree}" in outcome.summary
    assert (workspace.worktree / "made.txt").read_text() == "made\n"


async def test_garbage_on_stdout_is_logged_and_the_session_goes_on(
    workspace: Workspace, tmp_path: Path
) -> None:
    context = agent_context(
        workspace,
        tmp_path,
        [[{"type": "garbage", "text": "Welcome to FakeAgent!"}, {"type": "message", "text": "ok"}]],
    )
    outcome = await AcpBackend("fake").run(context, "Go")
    assert outcome.ok, outcome.error
    assert outcome.summary == "ok"
    assert "not ACP on the agent's stdout: Welcome to FakeAgent!" in context.log_text("error")


async def test_a_crash_mid_session_fails_the_run_with_its_stderr(
    workspace: Workspace, tmp_path: Path
) -> None:
    context = agent_context(
        workspace,
        tmp_path,
        [
            [
                {"type": "message", "text": "Starting."},
                {"type": "stderr", "text": "boom: out of cheese"},
                {"type": "crash"},
            ]
        ],
    )

    outcome = await AcpBackend("fake").run(context, "Go")

    assert not outcome.ok
    assert outcome.error is not None
    assert outcome.error.startswith("fake exited in the middle of its turn"), outcome.error
    assert "boom: out of cheese" in outcome.error
    assert "Starting." in context.log_text("assistant")


@pytest.mark.parametrize("stubborn", [False, True])
async def test_cancel_ends_the_turn_and_every_process(
    workspace: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stubborn: bool
) -> None:
    monkeypatch.setattr(acp_backend, "CANCEL_GRACE_SECONDS", 1.0)
    hang = {"type": "hang", "ignore_cancel": stubborn, "ignore_sigterm": stubborn}
    steps = [{"type": "stderr", "text": "hanging now"}, hang]
    context = agent_context(workspace, tmp_path, [steps])

    async with anyio.create_task_group() as group:
        group.start_soon(AcpBackend("fake").run, context, "Hang")
        with anyio.fail_after(30):
            while "hanging now" not in context.log_text("stderr"):
                await context.logged.wait()
                context.logged = anyio.Event()
        group.cancel_scope.cancel()

    assert await wait_until_no_processes_in(workspace.worktree) == []
    assert any(entry["event"] == "cancel" for entry in trace(context))


async def test_a_follow_up_resumes_the_session_when_the_agent_can_load_it(
    workspace: Workspace, tmp_path: Path
) -> None:
    turns = [[{"type": "message", "text": "first"}], [{"type": "message", "text": "second"}]]
    first = agent_context(workspace, tmp_path, turns, load_session=True)
    assert (await AcpBackend("fake").run(first, "Start")).ok
    again = agent_context(workspace, tmp_path, turns[1:], load_session=True)

    outcome = await AcpBackend("fake").run(again, "Go on")

    assert outcome.ok, outcome.error
    events = trace(again)
    [created] = [entry for entry in events if entry["event"] == "new_session"]
    [loaded] = [entry for entry in events if entry["event"] == "load_session"]
    assert loaded["sessionId"] == created["sessionId"]
    texts = [entry["text"] for entry in events if entry["event"] == "prompt"]
    assert texts == [f"{role_preamble(again)}\n\nStart", "Go on"]


async def test_without_load_a_new_session_is_told_what_happened(
    workspace: Workspace, tmp_path: Path
) -> None:
    first = agent_context(workspace, tmp_path, [[{"type": "message", "text": "first"}]])
    assert (await AcpBackend("fake").run(first, "Start")).ok
    again = agent_context(workspace, tmp_path, [[{"type": "message", "text": "second"}]])

    outcome = await AcpBackend("fake").run(again, "Go on")

    assert outcome.ok, outcome.error
    prompts = [entry["text"] for entry in trace(again) if entry["event"] == "prompt"]
    preamble = role_preamble(again)
    assert prompts == [f"{preamble}\n\nStart", f"{preamble}\n\n{LOST_SESSION_NOTE}\n\nGo on"]
    assert not any(entry["event"] == "load_session" for entry in trace(again))


async def test_follow_ups_sent_while_it_runs_are_prompts_on_the_same_session(
    workspace: Workspace, tmp_path: Path
) -> None:
    context = agent_context(
        workspace,
        tmp_path,
        [[{"type": "message", "text": "one"}], [{"type": "message", "text": "two"}]],
    )
    context.followups = ["and also this"]

    outcome = await AcpBackend("fake").run(context, "Do it")

    assert outcome.ok, outcome.error
    assert outcome.summary == "two"
    prompts = [e for e in trace(context) if e["event"] == "prompt"]
    assert [p["text"] for p in prompts] == [f"{role_preamble(context)}\n\nDo it", "and also this"]
    assert len({p["sessionId"] for p in prompts}) == 1


async def test_an_agent_that_never_answers_fails_after_the_setup_timeout(
    workspace: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(acp_backend, "SETUP_TIMEOUT_SECONDS", 1.0)
    context = agent_context(workspace, tmp_path, [])
    silent = ExternalBackendConfig(acp=["sh", "-c", "exec sleep 600"])
    context.settings = context.settings.model_copy(update={"backends": {"fake": silent}})

    outcome = await AcpBackend("fake").run(context, "Hello?")

    assert not outcome.ok
    assert outcome.error == "fake did not answer in 1 s"
    assert await wait_until_no_processes_in(workspace.worktree) == []


async def test_an_agent_of_another_protocol_version_is_refused_before_any_session(
    workspace: Workspace, tmp_path: Path
) -> None:
    context = agent_context(workspace, tmp_path, [[]], protocol_version=2)

    outcome = await AcpBackend("fake").run(context, "Hello")

    assert not outcome.ok
    assert outcome.error == "fake speaks ACP version 2; Forkyard speaks version 1"
    assert not any(entry["event"] == "new_session" for entry in trace(context))


async def test_an_agent_that_streams_without_end_is_kept_bounded(
    workspace: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hostile agent streaming one endless message (and endless titles) costs bounded
    memory and log: what is past the bound is cut, said once."""
    monkeypatch.setattr(acp_client, "MAX_MESSAGE_CHARS", 1000)
    steps = [
        {"type": "tool_call", "id": "t1", "title": "T" * 5000},
        {"type": "message", "text": "x" * 20_000, "chunks": 200},
    ]
    context = agent_context(workspace, tmp_path, [steps])

    outcome = await AcpBackend("fake").run(context, "Flood")

    assert outcome.ok, outcome.error
    assert len(outcome.summary) < 1100
    assert outcome.summary.endswith("[... cut: too long ...]")
    assert max(len(text) for _kind, text in context.logs) < 1100


async def test_a_terminal_keeps_the_end_of_its_output_within_its_limit() -> None:
    terminal = Terminal(command="yes", limit=100)
    for number in range(10_000):
        terminal.add(f"line {number}")
    assert len(terminal.output.encode()) <= 100
    assert terminal.output.endswith("line 9999\n")
    assert terminal.truncated
