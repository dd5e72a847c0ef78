"""The generic `external` backend (a configured command template), the settings of the
external backends, and what every external backend guarantees: the worktree as the only
writable place, only the named variables, secrets redacted, cancellation and timeouts
ending every process, the sandbox's absence handled."""

from __future__ import annotations

import shlex
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from pydantic import ValidationError

from forkyard.agents import external_runtime
from forkyard.agents.acp import AcpBackend
from forkyard.agents.aider import AiderBackend
from forkyard.agents.claude import ClaudeBackend
from forkyard.agents.codex import CodexBackend
from forkyard.agents.external import ExternalCommandBackend, expand_command, external_backends
from forkyard.agents.external_config import ExternalBackendConfig
from forkyard.settings import BUILTIN_ROLES
from forkyard.tools.sandbox import SandboxStatus
from tests.fakes.agent_context import (
    FAKE_API_KEY,
    FakeAgentContext,
    Workspace,
    make_workspace,
    processes_in,
    server_environ,
    settings_for,
    wait_until_no_processes_in,
)
from tests.fakes.model_server import FakeModelServer, Reply
from tests.helpers import git


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return make_workspace(tmp_path)


def command_context(workspace: Workspace, command: str, **config: object) -> FakeAgentContext:
    backend = ExternalBackendConfig.model_validate({"command": command, **config})
    return FakeAgentContext(
        cwd=workspace.worktree,
        repo_root=workspace.repo,
        settings=settings_for(workspace.state_dir, mine=backend),
        environ=server_environ(MY_SETTING="visible", MY_TOKEN="tok-0123456789"),
    )


async def test_the_task_reaches_the_command_quoted_and_it_runs_in_the_worktree(
    workspace: Workspace,
) -> None:
    task = "say \"hi\" and 'bye'; $(touch /tmp/forkyard-pwned) `id`"
    context = command_context(
        workspace, "printf '%s\\n' {task} > task.txt && pwd && echo done with {worktree}"
    )

    outcome = await ExternalCommandBackend("mine").run(context, task)

    assert outcome.ok, outcome.error
    assert (workspace.worktree / "task.txt").read_text() == task + "\n"
    assert workspace.status() == ["?? task.txt"]
    assert not Path("/tmp/forkyard-pwned").exists()
    assert outcome.summary == f"{workspace.worktree}\ndone with {workspace.worktree}"
    assert context.log_text("stdout").splitlines()[0] == str(workspace.worktree)


async def test_the_program_sees_only_the_named_variables_and_secrets_are_redacted(
    workspace: Workspace,
) -> None:
    context = command_context(
        workspace,
        'echo "secret=$FORKYARD_TEST_SECRET setting=$MY_SETTING token=$MY_TOKEN home=$HOME"'
        ' "port=$FORKYARD_PORT_BASE"',
        env=["MY_SETTING", "MY_TOKEN"],
    )

    outcome = await ExternalCommandBackend("mine").run(context, "")

    assert outcome.ok, outcome.error
    line = context.log_text("stdout")
    assert "secret= " in line, "a variable the settings do not name must not pass"
    assert "setting=visible" in line
    assert "token=[redacted]" in line
    assert "port=20010" in line, "what the server hands every agent passes too"
    assert f"home={workspace.state_dir}/agent-homes/mine/" in line
    assert "tok-0123456789" not in outcome.summary


@pytest.fixture
def outside() -> Iterator[Path]:
    """A directory outside /tmp (which the sandbox replaces with its own): on the
    host's file system, which the sandbox does not show."""
    folder = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="forkyard-outside-"))
    yield folder
    shutil.rmtree(folder)


async def test_writing_outside_the_worktree_fails_with_the_stderr_tail(
    workspace: Workspace, outside: Path
) -> None:
    target = outside / "escaped.txt"
    context = command_context(workspace, f"echo started; echo x > {shlex.quote(str(target))}")

    outcome = await ExternalCommandBackend("mine").run(context, "")

    assert not outcome.ok
    assert outcome.error is not None
    assert outcome.error.startswith("mine exited with status ")
    # The sandbox shows no /var at all: the write fails for want of the directory.
    assert "stderr:" in outcome.error and "Directory nonexistent" in outcome.error
    assert outcome.summary == "started"
    assert not target.exists()


async def test_an_explorer_command_cannot_write_at_all(workspace: Workspace) -> None:
    context = command_context(workspace, "touch new-file")
    context.role = BUILTIN_ROLES["explorer"]
    context.cwd = workspace.repo

    outcome = await ExternalCommandBackend("mine").run(context, "")

    assert not outcome.ok
    assert not (workspace.repo / "new-file").exists()
    assert git(workspace.repo, "status", "--porcelain") == ""


async def test_cancelling_ends_the_command_and_what_it_left_in_the_background(
    workspace: Workspace,
) -> None:
    context = command_context(workspace, "sleep 300 & echo started; sleep 301")

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(ExternalCommandBackend("mine").run, context, "")
        await context.logged.wait()  # the command line
        context.logged = anyio.Event()
        await context.logged.wait()  # "started"
        assert len(await processes_in(workspace.worktree)) >= 2
        tasks.cancel_scope.cancel()

    assert await wait_until_no_processes_in(workspace.worktree) == []


async def test_a_command_that_outlives_its_timeout_fails(workspace: Workspace) -> None:
    context = command_context(workspace, "echo waiting; sleep 30", timeout_seconds=0.5)

    outcome = await ExternalCommandBackend("mine").run(context, "")

    assert not outcome.ok
    assert outcome.error is not None and outcome.error.startswith("mine timed out after")
    assert await wait_until_no_processes_in(workspace.worktree) == []


async def test_without_a_sandbox_only_roles_that_write_run_and_only_if_allowed(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def no_sandbox() -> SandboxStatus:
        return SandboxStatus(False, "bwrap cannot create namespaces here")

    monkeypatch.setattr(external_runtime, "probe_sandbox", no_sandbox)
    backend = ExternalCommandBackend("mine")
    refused = command_context(workspace, "echo ran")
    allowed = command_context(workspace, "echo ran")
    allowed.settings = allowed.settings.model_copy(update={"allow_unsandboxed_commands": True})
    explorer = command_context(workspace, "echo ran")
    explorer.settings = allowed.settings
    explorer.role = BUILTIN_ROLES["explorer"]

    refused_outcome = await backend.run(refused, "")
    allowed_outcome = await backend.run(allowed, "")
    explorer_outcome = await backend.run(explorer, "")

    assert not refused_outcome.ok
    assert refused_outcome.error is not None
    assert "sandbox is unavailable (bwrap cannot create namespaces here)" in refused_outcome.error
    assert allowed_outcome.ok and allowed_outcome.summary == "ran"
    assert "running unsandboxed" in allowed.log_text("system")
    assert not explorer_outcome.ok


async def test_an_external_backend_without_a_command_is_unavailable(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, mine=ExternalBackendConfig(kind="external"))

    availability = await ExternalCommandBackend("mine").availability(settings)
    configured = settings_for(tmp_path, mine=ExternalBackendConfig(command="true"))

    assert not availability.available
    assert availability.reason == "backend 'mine' has no command: set backends.mine.command"
    assert (await ExternalCommandBackend("mine").availability(configured)).available


@pytest.mark.parametrize("backend_class", [CodexBackend, ClaudeBackend, AiderBackend])
async def test_a_program_that_is_not_installed_is_unavailable_with_an_install_hint(
    tmp_path: Path, backend_class: type[CodexBackend]
) -> None:
    settings = settings_for(
        tmp_path, **{backend_class.spec.kind: ExternalBackendConfig(program="no-such-agent-cli")}
    )
    default_settings = settings_for(tmp_path)

    missing = await backend_class().availability(settings)

    assert not missing.available
    assert missing.reason == (
        f"{backend_class.spec.kind}: the configured program 'no-such-agent-cli' was not found; "
        f"install it ({backend_class.spec.install_hint}) or correct backends.<name>.program"
    )
    hint = external_runtime.not_found_reason(
        backend_class.spec, ExternalBackendConfig(), {"PATH": "/nonexistent"}
    )
    assert backend_class.spec.install_hint in hint
    assert "install_agents.sh" in hint
    assert (await backend_class().availability(default_settings)).reason is not None


def test_placeholders_are_quoted_and_other_braces_left_alone() -> None:
    command = expand_command(
        "awk '{print $1}' {task} | tee {worktree}/out {unknown}",
        {"task": "a b; rm -rf /", "worktree": "/w t", "model": "", "base_url": ""},
    )

    assert command == "awk '{print $1}' 'a b; rm -rf /' | tee '/w t'/out {unknown}"


def test_configured_backends_drive_their_kind_and_the_usual_three_always_exist(
    tmp_path: Path,
) -> None:
    settings = settings_for(
        tmp_path,
        codex=ExternalBackendConfig(model="m"),
        local_codex=ExternalBackendConfig(kind="codex"),
        bot=ExternalBackendConfig(command="bot {task}"),
        goose=ExternalBackendConfig(acp=["goose", "acp"]),
    )

    backends = external_backends(settings)

    assert sorted(backends) == [
        *["aider", "bot", "claude", "claude-acp", "codex", "codex-acp", "gemini", "goose"],
        "local_codex",
    ]
    assert isinstance(backends["goose"], AcpBackend)
    assert isinstance(backends["gemini"], AcpBackend)
    assert isinstance(backends["local_codex"], CodexBackend)
    assert backends["local_codex"].name == "local_codex"
    assert isinstance(backends["bot"], ExternalCommandBackend)
    assert isinstance(backends["claude"], ClaudeBackend)


def test_the_config_takes_variable_names_never_values() -> None:
    with pytest.raises(ValidationError, match="is not an environment variable name"):
        ExternalBackendConfig(env=["OPENAI_API_KEY=sk-123"])
    with pytest.raises(ValidationError, match="is not an environment variable name"):
        ExternalBackendConfig(api_key_env="sk-live-123 456")
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        ExternalBackendConfig.model_validate({"api_key": "sk-123"})


#: A command that calls its model itself: a chat completion through the gateway's URL,
#: with the token it was given as its key, printing the reply and what it was given.
CALLS_ITS_MODEL = r"""python3 -c '
import json, os, sys, urllib.request
request = urllib.request.Request(
    sys.argv[1] + "/chat/completions",
    data=json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode(),
    headers={"authorization": "Bearer " + os.environ["MY_KEY"], "content-type": "application/json"},
)
reply = json.load(urllib.request.urlopen(request, timeout=20))
print("key given:", os.environ["MY_KEY"][:6], os.environ["FORKYARD_GATEWAY_TOKEN"][:6])
print(reply["choices"][0]["message"]["content"])
' {base_url}"""


@pytest.mark.parametrize("sandboxed", [True, False])
async def test_a_command_reaches_its_model_only_through_the_gateway_with_a_token(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch, sandboxed: bool
) -> None:
    if not sandboxed:

        async def no_sandbox() -> SandboxStatus:
            return SandboxStatus(False, "bwrap cannot create namespaces here")

        monkeypatch.setattr(external_runtime, "probe_sandbox", no_sandbox)
    with FakeModelServer() as model:
        model.script(Reply(text="hello from the model"))
        context = command_context(
            workspace, CALLS_ITS_MODEL, base_url=model.openai_base_url, api_key_env="MY_KEY"
        )
        context.environ = {**context.environ, "MY_KEY": FAKE_API_KEY}
        if not sandboxed:
            update = {"allow_unsandboxed_commands": True}
            context.settings = context.settings.model_copy(update=update)

        outcome = await ExternalCommandBackend("mine").run(context, "")

        assert outcome.ok, outcome.error
        assert outcome.summary.splitlines() == ["key given: fy-gw- fy-gw-", "hello from the model"]
        (request,) = model.requests
        assert request.headers["authorization"] == f"Bearer {FAKE_API_KEY}"
        [reported] = model.reported_usage
        assert [(u.input_tokens, u.output_tokens) for u in context.usage] == [
            (reported.input_tokens, reported.output_tokens)
        ]
