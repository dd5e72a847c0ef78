"""Settings of the external agent-program backends (`[backends.NAME]` in TOML).

    [backends.codex]                       # the table's name is the backend's name
    model = "qwen2.5-coder:14b"
    base_url = "http://127.0.0.1:11434/v1"
    api_key_env = "OLLAMA_API_KEY"         # a variable NAME; the key stays in the env

    [backends.review-bot]                  # any name; `kind` says which program it drives
    kind = "external"
    command = "my-agent --task {task} --dir {worktree}"

    [backends.goose]                       # an ACP agent: the program and its arguments
    acp = ["goose", "acp"]

A backend named `codex`, `claude` or `aider` drives that program without any table: the
table only changes what differs from the defaults.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

BackendKind = Literal["codex", "claude", "aider", "external", "acp"]
#: The kinds a backend named after them drives without saying so.
KNOWN_KINDS: tuple[BackendKind, ...] = ("codex", "claude", "aider", "external")
#: ACP agents Forkyard knows how to start (`forkyard.agents.acp_presets`): a backend of
#: that name is an ACP backend without saying so.
ACP_PRESET_NAMES: tuple[str, ...] = ("claude-acp", "codex-acp", "gemini")

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ExternalBackendConfig(BaseModel):
    """One external backend. Secrets are never values here: `api_key_env` and `env` name
    variables of the server's environment, whose values are passed to the program."""

    model_config = ConfigDict(extra="forbid")

    #: Which program this drives; None: the backend's name if it is a known kind, else
    #: "external".
    kind: BackendKind | None = None
    #: The program: a path, or a name looked up in PATH. None: the kind's usual name in
    #: PATH, then in the project-local install folder (`.agents/`, FORKYARD_AGENTS_DIR).
    program: str | None = None
    #: Extra arguments, appended to the ones Forkyard passes (so they can override).
    args: list[str] = Field(default_factory=list)
    #: The model name as the program expects it; None: the program's default.
    model: str | None = None
    #: An OpenAI-compatible endpoint for codex and aider (".../v1"), an Anthropic one
    #: for claude; None: the program's default service.
    base_url: str | None = None
    #: Name of the variable holding the API key; None: the program's usual one
    #: (OPENAI_API_KEY for codex and aider, ANTHROPIC_API_KEY for claude).
    api_key_env: str | None = None
    #: Names of further variables of the server's environment the program may see.
    env: list[str] = Field(default_factory=list)
    #: For an ACP agent: the program and its arguments (`["gemini", "--experimental-acp"]`);
    #: setting it makes the backend an ACP one.
    acp: list[str] | None = Field(default=None, min_length=1)
    #: For `external`: the shell command run in the worktree. `{task}`, `{worktree}`,
    #: `{model}` and `{base_url}` are replaced by shell-quoted values.
    command: str | None = None
    #: Seconds before the program is stopped; None: `command_timeout_seconds`.
    timeout_seconds: float | None = Field(default=None, gt=0)

    @field_validator("env")
    @classmethod
    def _names_only(cls, names: list[str]) -> list[str]:
        for name in names:
            if not _ENV_NAME.match(name):
                raise ValueError(f"{name!r} is not an environment variable name")
        return names

    @field_validator("api_key_env")
    @classmethod
    def _key_name_only(cls, name: str | None) -> str | None:
        if name is not None and not _ENV_NAME.match(name):
            raise ValueError(f"{name!r} is not an environment variable name")
        return name

    def resolved_kind(self, name: str) -> BackendKind:
        if self.kind is not None:
            return self.kind
        if self.acp is not None or name in ACP_PRESET_NAMES:
            return "acp"
        for kind in KNOWN_KINDS:
            if kind == name:
                return kind
        return "external"


def configured_backends(settings: object) -> Mapping[str, ExternalBackendConfig]:
    """`settings.backends`, or nothing where the settings model has no such field yet."""
    backends = getattr(settings, "backends", None)
    if not isinstance(backends, Mapping):
        return {}
    return {
        name: config
        for name, config in backends.items()
        if isinstance(name, str) and isinstance(config, ExternalBackendConfig)
    }


def backend_config(settings: object, name: str) -> ExternalBackendConfig:
    """The configuration of backend `name`: its table, else all defaults."""
    return configured_backends(settings).get(name) or ExternalBackendConfig()
