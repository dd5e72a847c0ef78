"""The `acp` backend: any agent that speaks the Agent Client Protocol over stdio
(Gemini CLI, Claude Code and Codex through their adapters, Goose, OpenCode, ...).

One run is one process, in the agent's worktree, in the same sandbox as the other
external programs (no network; the model gateway, with a token of this run, is its way
out): `initialize` (the client capabilities we serve under the role, nothing more),
`session/new` with the worktree as `cwd` (or `session/load` of the agent's last session,
when the agent can), `session/prompt` with the task, then one more prompt on the same
session for each follow-up sent meanwhile (`acp_session`). Cancel is `session/cancel`,
then the whole process tree after a grace. What the agent reports becomes the log and
progress (`acp_client`); the worktree's diff stays the truth.
"""

from __future__ import annotations

import importlib
import shlex
from functools import partial
from typing import ClassVar

import anyio
import anyio.to_thread

from forkyard.agents.acp_presets import AcpPreset, preset_for
from forkyard.agents.base import AgentContext, Availability, RunOutcome
from forkyard.agents.external_config import ExternalBackendConfig
from forkyard.agents.external_output import Redactor
from forkyard.agents.external_runtime import (
    AgentHome,
    ExternalProgramBackend,
    Invocation,
    Launch,
    ProgramSpec,
    find_program,
    gateway_access,
    launch_argv,
    not_found_reason,
    program_env,
)
from forkyard.settings import Settings, current_environ
from forkyard.tools.process import ProcessResult
from forkyard.tools.sandbox import probe_sandbox


class AcpBackend(ExternalProgramBackend):
    """Drives one ACP agent program (a preset, or `acp = [...]`)."""

    spec: ClassVar[ProgramSpec] = ProgramSpec(
        kind="acp", executable="", local_paths=(), install_hint="", default_api_key_env=None
    )

    def preset(self, settings: Settings) -> tuple[AcpPreset, ExternalBackendConfig, ProgramSpec]:
        config = self.config(settings)
        preset = preset_for(self.name, config)
        program = preset.argv[0] if preset.argv else ""
        spec = ProgramSpec(
            kind="acp",
            executable=program,
            local_paths=preset.local_paths,
            install_hint=preset.install_hint,
            default_api_key_env=(
                "ANTHROPIC_API_KEY"
                if preset.anthropic
                else "GEMINI_API_KEY"
                if preset.gemini
                else "OPENAI_API_KEY"
            ),
            nested_sandbox=preset.nested_sandbox,
            anthropic=preset.anthropic,
            gemini=preset.gemini,
        )
        if "/" in program:
            config = config.model_copy(update={"program": program})
        return preset, config, spec

    async def availability(self, settings: Settings) -> Availability:
        preset, config, spec = self.preset(settings)
        if not preset.argv:
            return Availability(False, f"backend {self.name!r}: set backends.{self.name}.acp")
        environ = current_environ()
        program = await anyio.to_thread.run_sync(find_program, spec, config, environ)
        if program is None:
            return Availability(False, not_found_reason(spec, config, environ))
        status = await probe_sandbox()
        if not status.available and not settings.allow_unsandboxed_commands:
            return Availability(
                False,
                f"{self.name} runs sandboxed and the sandbox is unavailable ({status.reason})",
            )
        return Availability(True, f"{spec.executable} at {program}")

    async def run(self, context: AgentContext, instruction: str) -> RunOutcome:
        preset, config, spec = self.preset(context.settings)
        if not preset.argv:
            return RunOutcome(False, "", f"backend {self.name!r}: set backends.{self.name}.acp")
        program = await anyio.to_thread.run_sync(find_program, spec, config, context.environ)
        if program is None:
            return RunOutcome(False, "", not_found_reason(spec, config, context.environ))
        home = await anyio.to_thread.run_sync(AgentHome.for_agent, context, self.name)
        await anyio.to_thread.run_sync(home.prepare, context.environ)
        previous = await anyio.to_thread.run_sync(home.read_session)
        for name in preset.home_dirs:
            await anyio.to_thread.run_sync(partial((home.path / name).mkdir, exist_ok=True))
        async with gateway_access(context, spec, config, self.name) as access:
            args, extra_env = preset.extras(access, home, config, context.writable)
            argv = [str(program), *preset.argv[1:], *args, *config.args]
            launch = Launch(
                program=program,
                home=home,
                config=config,
                access=access,
                nested_sandbox=preset.nested_sandbox,
            )
            invocation = Invocation(argv=argv, env=extra_env, output=_NoOutput())
            env = program_env(context, config, home, extra_env)
            sandboxed = await launch_argv(context, launch, invocation, env)
            if isinstance(sandboxed, RunOutcome):
                return sandboxed
            await context.log("command", "$ " + shlex.join(argv))
            context.progress(f"starting {program.name}")
            # The SDK is imported on first use, off the loop (it is slow to import).
            sessions = await anyio.to_thread.run_sync(
                importlib.import_module, "forkyard.agents.acp_session"
            )
            session = sessions.Session(context, self.name, home, Redactor(env))
            outcome: RunOutcome = await session.run(
                sandboxed, env, instruction, previous, access.refused
            )
            return outcome


class _NoOutput:
    """`Invocation` wants an output reader; an ACP agent's stdout is the protocol,
    read by the connection, so nothing comes here."""

    session_id: str | None = None

    async def line(self, stream: str, text: str) -> None:
        return None

    def outcome(self, result: ProcessResult) -> RunOutcome:
        return RunOutcome(result.returncode == 0, "")
