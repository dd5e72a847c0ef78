"""The aider backend driving the real `aider` program (installed by
tests/fakes/install_agents.sh into its own virtualenv) against a fake OpenAI-compatible
model on 127.0.0.1, in a real git worktree. Aider starts slowly (it imports litellm):
a few seconds per run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from forkyard.agents.aider import AiderBackend, aider_model
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
from tests.fakes.model_server import FakeModelServer, Reply
from tests.helpers import git
from tests.unit.test_host_git_planted import plant_fsmonitor


@pytest.fixture
def model() -> Iterator[FakeModelServer]:
    # Aider retries a failing model for a minute; a default reply keeps an unexpected
    # extra request from turning into that.
    with FakeModelServer(default=Reply(text="(unscripted reply)")) as server:
        yield server


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return make_workspace(tmp_path)


def aider_context(workspace: Workspace, model: FakeModelServer) -> FakeAgentContext:
    config = ExternalBackendConfig(
        program=str(installed_program("aider")),
        model="fake-model",
        base_url=model.openai_base_url,
        # The "whole" format: the model answers with a file's whole new text in a fence.
        args=["--edit-format", "whole"],
    )
    return FakeAgentContext(
        cwd=workspace.worktree,
        repo_root=workspace.repo,
        settings=settings_for(workspace.state_dir, aider=config),
        environ=server_environ(OPENAI_API_KEY=FAKE_API_KEY),
    )


def whole_file(path: str, text: str) -> Reply:
    return Reply(text=f"I will write {path}.\n\n{path}\n```\n{text}```\n")


async def test_aider_makes_the_scripted_edit_and_nothing_else(
    workspace: Workspace, model: FakeModelServer
) -> None:
    model.script(whole_file("notes.txt", "hello from aider\n"))
    context = aider_context(workspace, model)

    outcome = await AiderBackend().run(context, "Add a notes file")

    assert outcome.ok, outcome.error
    assert outcome.summary.startswith("I will write notes.txt.")
    assert outcome.summary.endswith("Applied edit to notes.txt")
    # No .aider* histories, no repository-map cache, no .gitignore change.
    assert workspace.status() == ["?? notes.txt"]
    assert (workspace.worktree / "notes.txt").read_text() == "hello from aider\n"
    assert git(workspace.repo, "status", "--porcelain") == ""
    (request,) = model.requests  # one reply, no second round
    assert request.api == "openai"
    assert request.headers["authorization"] == f"Bearer {FAKE_API_KEY}"
    assert request.body["model"] == "fake-model"
    assert "Add a notes file" in request.text
    assert "Applied edit to notes.txt" in context.log_text("stdout")


async def test_a_follow_up_continues_aiders_chat(
    workspace: Workspace, model: FakeModelServer
) -> None:
    model.script(Reply(text="The answer is 42."), Reply(text="Yes, 42 again."))
    context = aider_context(workspace, model)
    backend = AiderBackend()

    first = await backend.run(context, "What is the answer?")
    second = await backend.run(context, "Are you sure?")

    assert (first.ok, second.ok) == (True, True)
    assert second.summary == "Yes, 42 again."
    assert "The answer is 42." in model.last_request.text, "the chat history is restored"
    assert "--restore-chat-history" in context.log_text("command").splitlines()[-1]


async def test_a_follow_up_runs_nothing_the_agent_planted_in_its_worktree(
    workspace: Workspace, model: FakeModelServer, tmp_path: Path
) -> None:
    """Between runs the agent owned its worktree: a `.git` pointing at a repository of
    its own with an fsmonitor hook is ignored by the host's git of the follow-up (aider's
    private index). The hook may run in the sandbox: its marker is where only the host
    can write."""
    model.script(Reply(text="The answer is 42."), Reply(text="Yes, 42 again."))
    context = aider_context(workspace, model)
    backend = AiderBackend()
    assert (await backend.run(context, "What is the answer?")).ok
    host_only = tmp_path / "host-only"
    host_only.mkdir(mode=0o700)
    plant_fsmonitor(workspace.worktree, host_only / "ran")

    await backend.run(context, "Are you sure?")

    assert not (host_only / "ran").exists(), "the planted hook ran on the host"
    assert "--restore-chat-history" in context.log_text("command").splitlines()[-1]


async def test_an_explorer_aider_changes_nothing(
    workspace: Workspace, model: FakeModelServer
) -> None:
    # Aider adds a file the reply names to the chat and asks again: two replies.
    model.script(whole_file("README.md", "hacked\n"), whole_file("README.md", "hacked\n"))
    context = aider_context(workspace, model)
    context.role = BUILTIN_ROLES["explorer"]
    context.cwd = workspace.repo

    outcome = await AiderBackend().run(context, "Change the README")

    assert outcome.ok, outcome.error
    assert (workspace.repo / "README.md").read_text() == "# sample\n"
    assert git(workspace.repo, "status", "--porcelain") == ""
    assert "--dry-run" in context.log_text("command")
    assert "Did not apply edit to README.md (--dry-run)" in context.log_text("stdout")


async def test_a_model_error_fails_the_run_and_the_key_is_never_shown(
    workspace: Workspace, model: FakeModelServer
) -> None:
    # A 401 quotes the key back, as OpenAI's does; aider reports it and exits 0.
    model.script(Reply(status=401))
    context = aider_context(workspace, model)

    outcome = await AiderBackend().run(context, "Do something")

    assert not outcome.ok
    assert outcome.error is not None
    assert outcome.error.startswith("aider failed: the model could not be reached: ")
    assert "AuthenticationError" in outcome.error
    assert "[redacted]" in outcome.error
    assert FAKE_API_KEY not in outcome.error + outcome.summary + context.log_text()


async def test_cancelling_stops_aider_and_every_process_it_started(
    workspace: Workspace, model: FakeModelServer
) -> None:
    (hanging,) = model.script(Reply(hang=True))
    context = aider_context(workspace, model)
    await assert_cancel_kills_everything(AiderBackend(), context, workspace.worktree, hanging)


def test_a_bare_model_name_gets_litellms_openai_prefix_on_a_custom_endpoint() -> None:
    assert aider_model("qwen2.5-coder", "http://127.0.0.1:11434/v1") == "openai/qwen2.5-coder"
    assert aider_model("ollama_chat/qwen2.5", "http://127.0.0.1:11434") == "ollama_chat/qwen2.5"
    assert aider_model("gpt-4o", None) == "gpt-4o"
