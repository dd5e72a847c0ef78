"""The generic `external` backend, and the set of external backends the settings define.

`external` runs a configured command template in the agent's directory, for agent
programs Forkyard has no dedicated backend for:

    [backends.my-agent]
    kind = "external"
    command = "my-agent run --model {model} --prompt {task}"
    env = ["MY_AGENT_TOKEN"]

`{task}`, `{worktree}`, `{model}` and `{base_url}` are replaced by shell-quoted values
(other braces are left alone); `{base_url}` is the model gateway's URL, which forwards to
the backend's configured `base_url` with the real key. It runs like the other external
programs: sandboxed without network (the gateway is its one way out), only the worktree
and a private HOME writable, only the named variables passed, the key's variable (and
FORKYARD_GATEWAY_TOKEN) holding a token of this run instead of the key; its output is
the log, its last lines the summary, its exit status the outcome.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import anyio.to_thread

from forkyard.agents.acp import AcpBackend
from forkyard.agents.aider import AiderBackend
from forkyard.agents.base import AgentContext, Availability, Backend, RunOutcome
from forkyard.agents.claude import ClaudeBackend
from forkyard.agents.codex import CodexBackend
from forkyard.agents.external_config import ACP_PRESET_NAMES, configured_backends
from forkyard.agents.external_output import PlainOutputReader
from forkyard.agents.external_runtime import (
    AgentHome,
    ExternalProgramBackend,
    Invocation,
    Launch,
    ProgramSpec,
    api_key,
    execute,
    gateway_access,
)
from forkyard.gateway.access import GATEWAY_TOKEN_ENV, GATEWAY_URL_ENV
from forkyard.settings import Settings
from forkyard.tools.sandbox import SHELL, probe_sandbox

PLACEHOLDER = re.compile(r"\{(task|worktree|model|base_url)\}")

#: The backends a kind of program gets, by the kind's name.
PROGRAM_BACKENDS: dict[str, type[ExternalProgramBackend]] = {
    "codex": CodexBackend,
    "claude": ClaudeBackend,
    "aider": AiderBackend,
}


def expand_command(template: str, values: Mapping[str, str]) -> str:
    """The template with each placeholder replaced by its shell-quoted value."""
    return PLACEHOLDER.sub(lambda match: shlex.quote(values[match.group(1)]), template)


class ExternalCommandBackend(ExternalProgramBackend):
    """Runs `command` from the backend's settings; see the module docstring."""

    spec: ClassVar[ProgramSpec] = ProgramSpec(
        kind="external",
        executable=SHELL,
        local_paths=(),
        install_hint="set backends.<name>.command",
        default_api_key_env=None,
    )

    async def availability(self, settings: Settings) -> Availability:
        if not self.config(settings).command:
            return Availability(
                False, f"backend {self.name!r} has no command: set backends.{self.name}.command"
            )
        status = await probe_sandbox()
        if not status.available and not settings.allow_unsandboxed_commands:
            return Availability(
                False,
                f"{self.name} runs sandboxed and the sandbox is unavailable "
                f"({status.reason}); install bubblewrap, or set "
                "allow_unsandboxed_commands = true",
            )
        return Availability(True)

    async def run(self, context: AgentContext, instruction: str) -> RunOutcome:
        config = self.config(context.settings)
        if not config.command:
            return RunOutcome(
                False, "", f"backend {self.name!r} has no command: set backends.{self.name}.command"
            )
        home = await anyio.to_thread.run_sync(AgentHome.for_agent, context, self.name)
        await anyio.to_thread.run_sync(home.prepare, context.environ)
        async with gateway_access(context, self.spec, config, self.name) as access:
            command = expand_command(
                config.command,
                {
                    "task": instruction,
                    "worktree": str(context.cwd),
                    "model": config.model or "",
                    "base_url": access.url,
                },
            )
            # The token stands in for the key, under the key's own name too.
            env = {GATEWAY_URL_ENV: access.url, GATEWAY_TOKEN_ENV: access.token}
            key_name, _ = api_key(self.spec, config, context.environ)
            if key_name:
                env[key_name] = access.token
            invocation = Invocation(
                argv=[SHELL, "-c", " ".join([command, *map(shlex.quote, config.args)])],
                env=env,
                output=PlainOutputReader(context, self.name),
            )
            launch = Launch(program=Path(SHELL), home=home, config=config, access=access)
            return await execute(context, launch, invocation)


def external_backends(settings: Settings) -> dict[str, Backend]:
    """Every external backend: `codex`, `claude` and `aider`, and the ACP presets
    `claude-acp`, `codex-acp` and `gemini`, always (available when the program is
    installed), plus one per `[backends.NAME]` table, driving its kind."""
    backends: dict[str, Backend] = {name: cls() for name, cls in PROGRAM_BACKENDS.items()}
    backends.update({name: AcpBackend(name) for name in ACP_PRESET_NAMES})
    for name, config in configured_backends(settings).items():
        kind = config.resolved_kind(name)
        if kind == "acp":
            backends[name] = AcpBackend(name)
            continue
        cls = PROGRAM_BACKENDS.get(kind, ExternalCommandBackend)
        backends[name] = cls(name)
    return backends
