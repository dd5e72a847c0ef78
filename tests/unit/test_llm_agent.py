"""The `llm` backend's agent loop against the fake model server, through the real openai
SDK over HTTP, on real worktrees with real sandboxed commands: what the agent does to
the worktree, what the model is shown, and how every kind of bad run ends."""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest

from forkyard.agents.base import RunOutcome
from forkyard.agents.budget import Budget
from forkyard.agents.llm import ELIDED, LlmBackend
from forkyard.settings import BUILTIN_ROLES, AgentLimits, RoleConfig, Settings
from forkyard.tools.agent_tools import ApprovalAnswer
from forkyard_protocol import Usage
from tests.fakes.agent_context import Metered
from tests.fakes.model_server import FakeModelServer, RecordedRequest, Reply
from tests.helpers import git

SECRET = "sk-test-llm-agent-secret"
MAX_CHARS = 4000


@dataclass
class FakeContext(Metered):
    """An `AgentContext` that records what the backend reports."""

    cwd: Path
    repo_root: Path
    role: RoleConfig
    settings: Settings
    agent_number: int = 1
    role_name: str = "worker"
    environ: dict[str, str] = field(
        default_factory=lambda: {**os.environ, "OPENAI_API_KEY": SECRET}
    )
    followups: list[str] = field(default_factory=list)
    answers: list[ApprovalAnswer] = field(default_factory=list)
    asked: list[tuple[str, str]] = field(default_factory=list)
    logs: list[tuple[str, str]] = field(default_factory=list)
    progress_lines: list[str] = field(default_factory=list)
    usage: list[Usage] = field(default_factory=list)
    limits: Budget = field(default_factory=Budget)

    @property
    def writable(self) -> bool:
        return self.role.worktree

    async def log(self, kind: str, text: str) -> None:
        self.logs.append((kind, text))

    def progress(self, message: str, percentage: int | None = None) -> None:
        self.progress_lines.append(message)

    def take_followups(self) -> list[str]:
        taken, self.followups[:] = list(self.followups), []
        return taken

    async def request_approval(self, tool: str, detail: str) -> ApprovalAnswer:
        self.asked.append((tool, detail))
        return self.answers.pop(0)


@pytest.fixture
def worktree(repo: Path, tmp_path: Path) -> Path:
    path = tmp_path / "worktrees" / "1-agent"
    git(repo, "worktree", "add", "-q", "-b", "forkyard/1-agent", str(path))
    return path


@pytest.fixture
async def backend() -> AsyncIterator[LlmBackend]:
    backend = LlmBackend()
    yield backend
    await backend.aclose()


def make_settings(server: FakeModelServer, **limits: Any) -> Settings:
    return Settings(
        models={"default": server.model_config("openai")},
        agent=AgentLimits(**{"max_tool_output_chars": MAX_CHARS, **limits}),
    )


def make_context(
    server: FakeModelServer,
    worktree: Path,
    repo: Path,
    *,
    role: RoleConfig | None = None,
    **limits: Any,
) -> FakeContext:
    return FakeContext(
        cwd=worktree,
        repo_root=repo,
        role=role or BUILTIN_ROLES["worker"],
        settings=make_settings(server, **limits),
    )


def tool_results(request: RecordedRequest) -> list[str]:
    return [m["content"] for m in request.messages if m["role"] == "tool"]


def last_tool_result(request: RecordedRequest) -> str:
    return tool_results(request)[-1]


@pytest.mark.usefixtures("working_bwrap")
async def test_agent_reads_edits_writes_runs_the_tests_and_finishes(
    fake_model_server: FakeModelServer, backend: LlmBackend, worktree: Path, repo: Path
) -> None:
    tests = (
        f"PYTHONDONTWRITEBYTECODE=1 {shlex.quote(sys.executable)} -m pytest -q -p no:cacheprovider"
    )
    fake_model_server.script(
        Reply(text="Let me read the code.", tool_calls=[("read_file", {"path": "src/app.py"})]),
        Reply(
            tool_calls=[
                (
                    "edit_file",
                    {
                        "path": "src/app.py",
                        "old_text": "def add(a, b):",
                        "new_text": "def add(a: int, b: int) -> int:",
                    },
                )
            ]
        ),
        Reply(
            tool_calls=[
                (
                    "write_file",
                    {"path": "src/mul.py", "content": "def mul(a, b):\n    return a * b\n"},
                )
            ]
        ),
        Reply(tool_calls=[("run_command", {"command": tests})]),
        Reply(text="Added type hints to add and a new mul function; the tests pass."),
    )
    context = make_context(fake_model_server, worktree, repo)

    outcome = await backend.run(context, "Add type hints to add, and a mul function.")

    assert outcome == RunOutcome(
        True, "Added type hints to add and a new mul function; the tests pass."
    )
    assert git(worktree, "status", "--porcelain").splitlines() == [" M src/app.py", "?? src/mul.py"]
    assert (worktree / "src/app.py").read_text().startswith("def add(a: int, b: int) -> int:")
    assert git(repo, "status", "--porcelain") == ""
    requests = fake_model_server.requests
    assert len(requests) == 5
    first = requests[0]
    system = first.messages[0]["content"]
    assert first.messages[0]["role"] == "system"
    assert "Task: Add type hints to add, and a mul function." in system
    assert str(worktree) in system
    assert "src/app.py" in system  # the repository layout
    assert [tool["function"]["name"] for tool in first.tools] == [
        "list_files",
        "read_file",
        "search",
        "write_file",
        "edit_file",
        "delete_file",
        "run_command",
        "finish",
    ]
    assert tool_results(requests[1]) == ["def add(a, b):\n    return a + b\n"]
    test_output = last_tool_result(requests[4])
    assert "1 passed" in test_output
    assert test_output.endswith("[exit status 0]")
    assert ("assistant", "Let me read the code.") in context.logs
    assert ("tool", 'read_file {"path": "src/app.py"}') in context.logs
    assert any(
        kind == "tool_result" and "created src/mul.py" in text for kind, text in context.logs
    )
    assert context.progress_lines[:3] == [
        "step 1: read_file src/app.py",
        "step 2: edit_file src/app.py",
        "step 3: write_file src/mul.py",
    ]
    assert context.progress_lines[3].startswith("step 4: run_command PYTHONDONTWRITEBYTECODE")


async def test_finish_ends_the_run_with_its_summary(
    fake_model_server: FakeModelServer, backend: LlmBackend, worktree: Path, repo: Path
) -> None:
    fake_model_server.script(
        Reply(text="All done.", tool_calls=[("finish", {"summary": "Nothing needed changing."})])
    )
    outcome = await backend.run(make_context(fake_model_server, worktree, repo), "Check it.")
    assert outcome == RunOutcome(True, "Nothing needed changing.")


async def test_invalid_json_arguments_then_a_corrected_call(
    fake_model_server: FakeModelServer, backend: LlmBackend, worktree: Path, repo: Path
) -> None:
    fake_model_server.script(
        Reply(tool_calls=[("read_file", '{"path": "src/app.py"')]),
        Reply(tool_calls=[("read_file", {"path": "src/app.py"})]),
        Reply(text="It adds two numbers."),
    )
    outcome = await backend.run(make_context(fake_model_server, worktree, repo), "What is add?")
    assert outcome.ok
    requests = fake_model_server.requests
    assert "not valid JSON" in last_tool_result(requests[1])
    assert last_tool_result(requests[2]).startswith("def add(a, b):")


async def test_an_unknown_tool_gets_an_error_result_and_the_run_goes_on(
    fake_model_server: FakeModelServer, backend: LlmBackend, worktree: Path, repo: Path
) -> None:
    fake_model_server.script(
        Reply(tool_calls=[("shell", {"cmd": "rm -rf /"})]),
        Reply(text="I will use the tools I have."),
    )
    outcome = await backend.run(make_context(fake_model_server, worktree, repo), "Clean up.")
    assert outcome == RunOutcome(True, "I will use the tools I have.")
    result = last_tool_result(fake_model_server.requests[1])
    assert "unknown tool 'shell'" in result
    assert "read_file" in result


async def test_the_same_failing_call_in_a_loop_fails_the_run(
    backend: LlmBackend, worktree: Path, repo: Path
) -> None:
    stuck = Reply(tool_calls=[("read_file", {"path": "missing.py"})])
    with FakeModelServer(default=stuck) as server:
        outcome = await backend.run(
            make_context(server, worktree, repo, repeated_failure_limit=3), "Read missing.py."
        )
        assert not outcome.ok
        assert outcome.error is not None
        assert "repeated the same failing call 3 times in a row" in outcome.error
        assert "missing.py does not exist" in outcome.error
        assert len(server.requests) == 3


@pytest.mark.usefixtures("working_bwrap")
async def test_ten_megabytes_of_tool_output_reach_the_model_truncated(
    fake_model_server: FakeModelServer, backend: LlmBackend, worktree: Path, repo: Path
) -> None:
    (worktree / "big.txt").write_text("y" * 10_000_000)
    fake_model_server.script(
        Reply(tool_calls=[("run_command", {"command": "head -c 10000000 /dev/zero | tr '\\0' x"})]),
        Reply(tool_calls=[("read_file", {"path": "big.txt"})]),
        Reply(text="Too much output."),
    )
    outcome = await backend.run(make_context(fake_model_server, worktree, repo), "Print a lot.")
    assert outcome.ok
    requests = fake_model_server.requests
    for result in (last_tool_result(requests[1]), last_tool_result(requests[2])):
        assert len(result) <= MAX_CHARS
        assert "truncated" in result
    assert len(requests[2].raw) < 4 * MAX_CHARS + 20_000


async def test_a_model_that_never_stops_calling_tools_exhausts_the_step_budget(
    backend: LlmBackend, worktree: Path, repo: Path
) -> None:
    with FakeModelServer(default=Reply(tool_calls=[("list_files", {})])) as server:
        outcome = await backend.run(make_context(server, worktree, repo, max_steps=4), "Loop.")
        assert outcome == RunOutcome(False, "", "step budget of 4 steps exhausted")
        assert len(server.requests) == 4


async def test_a_hanging_model_exhausts_the_time_budget(
    fake_model_server: FakeModelServer, backend: LlmBackend, worktree: Path, repo: Path
) -> None:
    (hanging,) = fake_model_server.script(Reply(hang=True))
    context = make_context(fake_model_server, worktree, repo, max_seconds=0.5)
    outcome = await backend.run(context, "Think hard.")
    assert not outcome.ok
    assert outcome.error == "time budget of 0.5 s exhausted after 1 step(s)"
    await hanging.client_disconnected()


async def test_token_budget(
    fake_model_server: FakeModelServer, backend: LlmBackend, worktree: Path, repo: Path
) -> None:
    fake_model_server.script(Reply(tool_calls=[("list_files", {})]))
    context = make_context(fake_model_server, worktree, repo, max_tokens=50)
    outcome = await backend.run(context, "Go.")
    assert not outcome.ok
    assert outcome.error is not None
    assert outcome.error.startswith("token budget of 50 tokens exhausted")


async def test_a_model_error_fails_the_run_with_its_message(
    fake_model_server: FakeModelServer, backend: LlmBackend, worktree: Path, repo: Path
) -> None:
    fake_model_server.script(Reply(status=500, error_message="the GPU caught fire"))
    outcome = await backend.run(make_context(fake_model_server, worktree, repo), "Go.")
    assert not outcome.ok
    assert outcome.error is not None
    assert "HTTP 500" in outcome.error
    assert "the GPU caught fire" in outcome.error


async def test_without_a_configured_model_the_backend_says_how_to_configure_one(
    backend: LlmBackend, worktree: Path, repo: Path
) -> None:
    availability = await backend.availability(Settings())
    assert not availability.available
    assert availability.reason is not None
    assert "[models.default]" in availability.reason
    context = FakeContext(cwd=worktree, repo_root=repo, role=RoleConfig(), settings=Settings())
    outcome = await backend.run(context, "Go.")
    assert not outcome.ok
    assert "[models.default]" in (outcome.error or "")


async def test_a_role_model_overrides_the_agent_model(
    fake_model_server: FakeModelServer, backend: LlmBackend, worktree: Path, repo: Path
) -> None:
    fake_model_server.script(Reply(text="done by the reviewer model"))
    settings = Settings(models={"reviewer": fake_model_server.model_config("openai", model="rev")})
    assert not (await backend.availability(settings)).available
    role = RoleConfig(model="reviewer")
    context = FakeContext(cwd=worktree, repo_root=repo, role=role, settings=settings)
    assert (await backend.run(context, "Review.")).ok
    assert fake_model_server.last_request.body["model"] == "rev"


async def test_an_explorer_reads_the_checkout_and_cannot_write(
    fake_model_server: FakeModelServer, backend: LlmBackend, repo: Path
) -> None:
    fake_model_server.script(
        Reply(tool_calls=[("write_file", {"path": "README.md", "content": "pwned"})]),
        Reply(tool_calls=[("search", {"pattern": "def add"})]),
        Reply(text="add is defined in src/app.py."),
    )
    context = make_context(fake_model_server, repo, repo, role=BUILTIN_ROLES["explorer"])
    outcome = await backend.run(context, "Where is add defined?")
    assert outcome == RunOutcome(True, "add is defined in src/app.py.")
    requests = fake_model_server.requests
    assert [tool["function"]["name"] for tool in requests[0].tools] == [
        "list_files",
        "read_file",
        "search",
        "finish",
    ]
    assert "read-only" in requests[0].messages[0]["content"]
    assert "not allowed for this agent's role" in last_tool_result(requests[1])
    assert last_tool_result(requests[2]) == "src/app.py:1:def add(a, b):"
    assert (repo / "README.md").read_text() == "# sample\n"
    assert git(repo, "status", "--porcelain") == ""


# --- approvals -------------------------------------------------------------------------


def ask_role(*tools: str) -> RoleConfig:
    return RoleConfig(policy=dict.fromkeys(tools, "ask"))


def write_calls(*paths: str) -> list[Reply]:
    return [Reply(tool_calls=[("write_file", {"path": p, "content": p})]) for p in paths]


async def test_approval_allow_once_asks_again_next_time(
    fake_model_server: FakeModelServer, backend: LlmBackend, worktree: Path, repo: Path
) -> None:
    fake_model_server.script(*write_calls("a.txt", "b.txt"), Reply(text="tried both"))
    context = make_context(fake_model_server, worktree, repo, role=ask_role("write_file"))
    context.answers = ["allow_once", "deny"]
    outcome = await backend.run(context, "Write two files.")
    assert outcome.ok
    assert context.asked == [("write_file", "a.txt"), ("write_file", "b.txt")]
    assert (worktree / "a.txt").exists()
    assert not (worktree / "b.txt").exists()
    assert "denied by the user" in last_tool_result(fake_model_server.requests[2])


async def test_approval_allow_for_agent_is_remembered_across_runs(
    fake_model_server: FakeModelServer, backend: LlmBackend, worktree: Path, repo: Path
) -> None:
    fake_model_server.script(
        *write_calls("a.txt", "b.txt"), Reply(text="first"), *write_calls("c.txt"), Reply("second")
    )
    context = make_context(fake_model_server, worktree, repo, role=ask_role("write_file"))
    context.answers = ["allow_for_agent"]
    assert (await backend.run(context, "Write files.")).ok
    assert (await backend.run(context, "One more.")).ok
    assert context.asked == [("write_file", "a.txt")]
    assert all((worktree / name).exists() for name in ("a.txt", "b.txt", "c.txt"))


@pytest.mark.usefixtures("working_bwrap")
async def test_approval_deny_refuses_the_exact_command(
    fake_model_server: FakeModelServer, backend: LlmBackend, worktree: Path, repo: Path
) -> None:
    command = "touch ran.txt && echo ran"
    fake_model_server.script(
        Reply(tool_calls=[("run_command", {"command": command})]), Reply(text="could not run it")
    )
    context = make_context(fake_model_server, worktree, repo, role=ask_role("run_command"))
    context.answers = ["deny"]
    outcome = await backend.run(context, "Run it.")
    assert outcome == RunOutcome(True, "could not run it")
    assert context.asked == [("run_command", command)]
    assert not (worktree / "ran.txt").exists()
    assert "denied by the user" in last_tool_result(fake_model_server.requests[1])


# --- follow-ups ------------------------------------------------------------------------


async def test_a_follow_up_run_continues_the_same_conversation(
    fake_model_server: FakeModelServer, backend: LlmBackend, worktree: Path, repo: Path
) -> None:
    fake_model_server.script(
        Reply(tool_calls=[("read_file", {"path": "README.md"})]),
        Reply(text="The README is one heading."),
        Reply(text="Added nothing: it was already fine."),
    )
    context = make_context(fake_model_server, worktree, repo)
    context.followups = ["Also mention the title."]
    assert (await backend.run(context, "Describe the README.")).ok
    outcome = await backend.run(context, "Now check the tests too.")
    assert outcome == RunOutcome(True, "Added nothing: it was already fine.")
    third = fake_model_server.requests[2]
    conversation = [
        (m["role"], m.get("content") or json.dumps(m.get("tool_calls", [{}])[0]["function"]))
        for m in third.messages[1:]
    ]
    assert conversation == [
        ("user", "Describe the README."),
        ("user", "Also mention the title."),
        ("assistant", json.dumps({"name": "read_file", "arguments": '{"path": "README.md"}'})),
        ("tool", "# sample\n"),
        ("assistant", "The README is one heading."),
        ("user", "Now check the tests too."),
    ]
    assert "Task: Describe the README." in third.messages[0]["content"]


async def test_a_run_cut_short_leaves_a_conversation_the_next_run_can_send(
    fake_model_server: FakeModelServer, backend: LlmBackend, worktree: Path, repo: Path
) -> None:
    # The token budget ends the first run between the model's answer and its tool calls;
    # the follow-up's request must still pair every call with a result, or real
    # endpoints reject it.
    fake_model_server.script(
        Reply(tool_calls=[("list_files", {}), ("read_file", {"path": "README.md"})]),
        Reply(text="done"),
    )
    tight = make_context(fake_model_server, worktree, repo, max_tokens=50)
    assert not (await backend.run(tight, "Look around.")).ok
    roomy = make_context(fake_model_server, worktree, repo)
    assert (await backend.run(roomy, "Continue.")).ok
    messages = fake_model_server.last_request.messages
    calls = [
        call["id"]
        for m in messages
        if m["role"] == "assistant"
        for call in m.get("tool_calls") or []
    ]
    answered = [m["tool_call_id"] for m in messages if m["role"] == "tool"]
    assert len(calls) == 2
    assert calls == answered
    assert all("not run" in m["content"] for m in messages if m["role"] == "tool")


async def test_old_tool_output_is_elided_to_fit_the_context_window(
    fake_model_server: FakeModelServer, backend: LlmBackend, worktree: Path, repo: Path
) -> None:
    (worktree / "one.txt").write_text("first big file\n" * 400)
    (worktree / "two.txt").write_text("second big file\n" * 400)
    fake_model_server.script(
        Reply(tool_calls=[("read_file", {"path": "one.txt"})]),
        Reply(tool_calls=[("read_file", {"path": "two.txt"})]),
        Reply(tool_calls=[("list_files", {"path": "src"})]),
        Reply(tool_calls=[("list_files", {"path": "tests"})]),
        Reply(text="read them"),
    )
    context = make_context(fake_model_server, worktree, repo)
    config = fake_model_server.model_config("openai", context_tokens=3200)
    context.settings = context.settings.model_copy(update={"models": {"default": config}})
    assert (await backend.run(context, "Read both.")).ok
    results = tool_results(fake_model_server.last_request)
    assert results[0] == ELIDED
    assert results[1].startswith("second big file\n")
    assert results[2:] == ["src/app.py", "tests/test_app.py"]
    # The agent's own record of the conversation keeps everything.
    kept = backend.conversation(repo, context.agent_number)
    assert kept is not None
    assert next(m.text for m in kept.messages if m.role == "tool").startswith("first big file")


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_the_loop_speaks_both_providers(
    fake_model_server: FakeModelServer,
    backend: LlmBackend,
    worktree: Path,
    repo: Path,
    provider: Literal["openai", "anthropic"],
) -> None:
    fake_model_server.script(
        Reply(tool_calls=[("read_file", {"path": "nope.py"})]),
        Reply(tool_calls=[("read_file", {"path": "README.md"})]),
        Reply(tool_calls=[("finish", {"summary": "README read"})]),
    )
    config = fake_model_server.model_config(provider, max_output_tokens=1000)
    settings = make_settings(fake_model_server).model_copy(update={"models": {"default": config}})
    context = FakeContext(cwd=worktree, repo_root=repo, role=RoleConfig(), settings=settings)
    assert await backend.run(context, "Read the README.") == RunOutcome(True, "README read")
    assert "# sample" in fake_model_server.last_request.text
    assert "nope.py does not exist" in fake_model_server.last_request.text


async def test_a_token_budget_stops_the_run_before_the_next_call_and_a_raised_one_goes_on(
    fake_model_server: FakeModelServer, backend: LlmBackend, worktree: Path, repo: Path
) -> None:
    """The budget is checked before each call on all the agent used so far: the call that
    crossed it runs, the next one does not, and a follow-up after a raise continues."""
    fake_model_server.script(
        Reply(tool_calls=[("write_file", {"path": "a.txt", "content": "a\n"})]),
        Reply(tool_calls=[("write_file", {"path": "b.txt", "content": "b\n"})]),
        Reply(tool_calls=[("finish", {"summary": "wrote a and b"})]),
    )
    context = make_context(fake_model_server, worktree, repo)
    context.limits = Budget(max_tokens=1)

    stopped = await backend.run(context, "write a.txt and b.txt")

    assert not stopped.ok and stopped.error is not None
    assert stopped.error.startswith("budget reached (")
    assert stopped.error.endswith(" of 1 tokens)")
    assert len(fake_model_server.requests) == 1
    assert (worktree / "a.txt").exists() and not (worktree / "b.txt").exists()

    context.limits = Budget(max_tokens=10_000_000)
    resumed = await backend.run(context, "go on")

    assert resumed == RunOutcome(True, "wrote a and b")
    assert (worktree / "b.txt").read_text() == "b\n"
    assert len(fake_model_server.requests) == 3
