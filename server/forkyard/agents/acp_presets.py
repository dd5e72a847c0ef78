"""The ACP agents Forkyard knows how to start, and how any ACP agent reaches its model.

A preset says which program to run, where the install script puts it, which API its
model speaks and what it must be told to use the model gateway (its base URL and this
run's token in place of a key) and to keep its state in the agent's private home. A
`[backends.NAME] acp = [...]` of the person's own overrides the program; everything
else of the preset still applies.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

from forkyard.agents.claude import QUIET_ENV as CLAUDE_QUIET_ENV
from forkyard.agents.codex import PROVIDER_ID, QUIET_CONFIG
from forkyard.agents.external_config import ExternalBackendConfig
from forkyard.agents.external_runtime import AgentHome
from forkyard.gateway.access import GATEWAY_TOKEN_ENV, GATEWAY_URL_ENV, AgentAccess

#: What a preset adds for one run of an agent that may write or not: (extra arguments,
#: extra environment).
Extras = Callable[
    [AgentAccess, AgentHome, ExternalBackendConfig, bool], tuple[list[str], dict[str, str]]
]


def _generic(
    access: AgentAccess, _home: AgentHome, _config: ExternalBackendConfig, _writable: bool
) -> tuple[list[str], dict[str, str]]:
    """Any ACP agent: the gateway under the names OpenAI's and Anthropic's SDKs read."""
    return [], {
        GATEWAY_URL_ENV: access.url,
        GATEWAY_TOKEN_ENV: access.token,
        "OPENAI_BASE_URL": access.url,
        "OPENAI_API_KEY": access.token,
        "ANTHROPIC_BASE_URL": access.url,
        "ANTHROPIC_API_KEY": access.token,
    }


def _claude(
    access: AgentAccess, home: AgentHome, config: ExternalBackendConfig, _writable: bool
) -> tuple[list[str], dict[str, str]]:
    env = {
        **CLAUDE_QUIET_ENV,
        "ANTHROPIC_BASE_URL": access.url,
        "ANTHROPIC_API_KEY": access.token,
        "CLAUDE_CONFIG_DIR": str(home.path / ".claude"),
    }
    if config.model:
        env["ANTHROPIC_MODEL"] = config.model
    return [], env


def _codex(
    access: AgentAccess, home: AgentHome, config: ExternalBackendConfig, writable: bool
) -> tuple[list[str], dict[str, str]]:
    """As the `codex` backend sets codex up; its own sandbox writes only for writers."""
    provider = f"model_providers.{PROVIDER_ID}"
    settings = [
        *QUIET_CONFIG,
        f'sandbox_mode="{"workspace-write" if writable else "read-only"}"',
        f"model_provider={json.dumps(PROVIDER_ID)}",
        f"{provider}.name={json.dumps(PROVIDER_ID)}",
        f"{provider}.base_url={json.dumps(access.url)}",
        f'{provider}.wire_api="responses"',
        f'{provider}.env_key="OPENAI_API_KEY"',
    ]
    if config.model:
        settings.append(f"model={json.dumps(config.model)}")
    args = [part for setting in settings for part in ("-c", setting)]
    return args, {"CODEX_HOME": str(home.path / ".codex"), "OPENAI_API_KEY": access.token}


def _gemini(
    access: AgentAccess, home: AgentHome, config: ExternalBackendConfig, _writable: bool
) -> tuple[list[str], dict[str, str]]:
    env = {
        "GEMINI_API_KEY": access.token,
        "GOOGLE_GEMINI_BASE_URL": access.url,
        "GEMINI_CLI_HOME": str(home.path),
        "GEMINI_TELEMETRY_ENABLED": "false",
        "GEMINI_CLI_NO_RELAUNCH": "true",
        "GEMINI_CLI_TRUST_WORKSPACE": "true",
    }
    return (["--model", config.model] if config.model else []), env


@dataclass(frozen=True)
class AcpPreset:
    argv: tuple[str, ...]
    #: Where the install script puts the program, relative to its folder.
    local_paths: tuple[str, ...]
    install_hint: str
    #: Its model speaks the Anthropic API (else an OpenAI one, or with `gemini` Google's).
    anthropic: bool = False
    gemini: bool = False
    #: It sandboxes what it runs with user namespaces of its own (codex does).
    nested_sandbox: bool = False
    extras: Extras = field(default=_generic)
    #: Folders of its private home it needs before it starts.
    home_dirs: tuple[str, ...] = ()


PRESETS: dict[str, AcpPreset] = {
    "claude-acp": AcpPreset(
        argv=("claude-agent-acp",),
        local_paths=("node_modules/.bin/claude-agent-acp",),
        install_hint="npm install -g @zed-industries/claude-agent-acp",
        anthropic=True,
        extras=_claude,
    ),
    "codex-acp": AcpPreset(
        # The native program, not its node wrapper (which does not pass signals on).
        argv=("codex-acp-linux-x64",),
        local_paths=("node_modules/.bin/codex-acp-linux-x64", "node_modules/.bin/codex-acp"),
        install_hint="npm install -g @zed-industries/codex-acp",
        nested_sandbox=True,
        extras=_codex,
        home_dirs=(".codex",),
    ),
    "gemini": AcpPreset(
        argv=("gemini", "--acp"),
        local_paths=("node_modules/.bin/gemini",),
        install_hint="npm install -g @google/gemini-cli",
        gemini=True,
        extras=_gemini,
    ),
}
#: An ACP agent of the person's own (`acp = [...]` under any other name).
CUSTOM = AcpPreset(argv=(), local_paths=(), install_hint="set backends.<name>.acp")


def preset_for(name: str, config: ExternalBackendConfig) -> AcpPreset:
    """The backend's preset, with the person's program when `acp` names one."""
    preset = PRESETS.get(name, CUSTOM)
    if config.acp:
        return AcpPreset(
            argv=tuple(config.acp),
            local_paths=preset.local_paths if preset is not CUSTOM else (),
            install_hint=preset.install_hint,
            anthropic=preset.anthropic,
            gemini=preset.gemini,
            nested_sandbox=preset.nested_sandbox,
            extras=preset.extras,
            home_dirs=preset.home_dirs,
        )
    return preset
