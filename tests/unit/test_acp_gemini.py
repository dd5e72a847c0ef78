"""Gemini CLI (`gemini --acp`, installed into `.agents/` by tests/fakes/install_agents.sh)
as the `gemini` acp backend, sandboxed, through the model gateway, against the fake
Gemini server on 127.0.0.1: it answers, its edits land in the worktree through
Forkyard's file and terminal services, every call is metered and the provider gets the
real key, never the token. Skipped when the install script could not install gemini."""

from __future__ import annotations

from pathlib import Path

import pytest

from forkyard.agents.acp import AcpBackend
from forkyard.agents.external_config import ExternalBackendConfig
from tests.fakes.agent_context import (
    FAKE_API_KEY,
    FakeAgentContext,
    Workspace,
    agents_dir,
    make_workspace,
    server_environ,
    settings_for,
)
from tests.fakes.gemini_server import THOUGHTS_TOKENS, FakeGeminiServer
from tests.fakes.model_server import Reply

pytestmark = pytest.mark.timeout(120)

MODEL = "gemini-fake-pro"
KEY_ENV = "FAKE_GEMINI_KEY"


@pytest.fixture
def gemini() -> FakeGeminiServer:
    return FakeGeminiServer()


def context_for(workspace: Workspace, server: FakeGeminiServer) -> FakeAgentContext:
    folder = agents_dir()
    if not (folder / "node_modules/.bin/gemini").exists():
        error = folder / "gemini.install-error"
        if error.exists():
            pytest.skip(f"gemini is not installed: {error.read_text().strip()}")
        pytest.fail("gemini is missing: run `bash tests/fakes/install_agents.sh`")
    config = ExternalBackendConfig(base_url=server.url, model=MODEL, api_key_env=KEY_ENV)
    return FakeAgentContext(
        cwd=workspace.worktree,
        repo_root=workspace.repo,
        settings=settings_for(workspace.state_dir, gemini=config),
        environ=server_environ(**{KEY_ENV: FAKE_API_KEY}),
    )


async def test_gemini_answers_through_the_gateway_and_is_metered(
    tmp_path: Path, gemini: FakeGeminiServer
) -> None:
    workspace = make_workspace(tmp_path)
    with gemini:
        gemini.script(Reply(text="hello"))
        context = context_for(workspace, gemini)

        outcome = await AcpBackend("gemini").run(context, "Say hello")

        assert outcome.ok, (outcome.error, context.logs)
        assert outcome.summary.endswith("hello")
        calls = [request for request in gemini.requests if not request.side_call]
        assert [call.model for call in calls] == [MODEL]
        assert "Say hello" in calls[0].text
        for request in gemini.requests:
            assert request.headers["x-goog-api-key"] == FAKE_API_KEY
        # Every answer is metered, side calls included, thinking tokens as output.
        reported = gemini.reported_usage
        assert [(u.input_tokens, u.output_tokens) for u in context.usage] == [
            (r.prompt, r.candidates + r.thoughts) for r in reported
        ]
        assert all(r.thoughts == THOUGHTS_TOKENS for r in reported)
        assert workspace.status() == []


async def test_gemini_edits_a_file_and_runs_a_command_in_the_worktree(
    tmp_path: Path, gemini: FakeGeminiServer
) -> None:
    """Its `replace` tool goes through Forkyard's file service (read, then write) and
    its shell command runs in the agent's sandbox, in the worktree."""
    workspace = make_workspace(tmp_path)
    app = workspace.worktree / "src/app.py"
    edit = {
        "file_path": str(app),
        "instruction": "Swap the operands of the sum in add.",
        "old_string": "return a + b",
        "new_string": "return b + a",
    }
    with gemini:
        gemini.script(
            Reply(tool_calls=[("replace", edit)]),
            Reply(tool_calls=[("run_shell_command", {"command": "echo ran > ran.txt"})]),
            # A new file: Gemini CLI reads it first, and must find it empty, not failing.
            Reply(
                tool_calls=[
                    (
                        "write_file",
                        {"file_path": str(workspace.worktree / "NOTES.md"), "content": "notes\n"},
                    )
                ]
            ),
            Reply(text="Swapped the operands."),
        )
        context = context_for(workspace, gemini)

        outcome = await AcpBackend("gemini").run(context, "Swap the operands in add")

    assert outcome.ok, (outcome.error, context.logs)
    assert outcome.summary.endswith("Swapped the operands.")
    assert app.read_text() == "def add(a, b):\n    return b + a\n"
    assert (workspace.worktree / "ran.txt").read_text() == "ran\n"
    assert (workspace.worktree / "NOTES.md").read_text() == "notes\n"
    assert sorted(workspace.status()) == [" M src/app.py", "?? NOTES.md", "?? ran.txt"]
    assert (workspace.repo / "src/app.py").read_text() == "def add(a, b):\n    return a + b\n"
