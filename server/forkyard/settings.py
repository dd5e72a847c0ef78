"""One typed settings model, layered from several sources (PROTOCOL.md, "Configuration").

Sources, later wins: defaults, the user file, the repository's `.forkyard.toml`, the
client's `initializationOptions`, `workspace/didChangeConfiguration`. A bad key never
throws the whole configuration away: it is dropped, reported by name and source, and the
rest still applies.

The repository's file is someone else's until the user trusts the repository
(`forkyard trust`): until then only the harmless keys of trust.py's allow-list apply from
it; a key that reaches the network, runs a command, picks a secret or weakens the
sandbox is ignored and reported once. Its USER_ONLY_KEYS never come from it at all.
"""

from __future__ import annotations

import copy
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from forkyard.agents.external_config import ExternalBackendConfig
from forkyard.cluster.config import ClusterSettings, Placement
from forkyard.models.config import ModelConfig
from forkyard.trust import ignored_summary, read_trust, split_repository_values

ToolPolicy = Literal["allow", "ask", "deny"]

READ_TOOLS = ("list_files", "read_file", "search", "finish")
WRITE_TOOLS = ("write_file", "edit_file", "delete_file", "run_command")


class RoleConfig(BaseModel):
    """A role: which tools its agents get, whether they get a worktree, and per-tool
    policy. `worktree = false` makes an explorer: it reads the user's checkout and may
    never write, whatever its tools say."""

    model_config = ConfigDict(extra="forbid")

    description: str = ""
    tools: list[str] = Field(default_factory=lambda: [*READ_TOOLS, *WRITE_TOOLS])
    worktree: bool = True
    policy: dict[str, ToolPolicy] = Field(default_factory=dict)
    #: Name of a `[models.NAME]` table for this role's llm agents; None: `agent_model`.
    model: str | None = None
    #: Folders this role works in: its worktrees are sparse (git's cone mode) and hold
    #: only these, the files at the top level, and their parents' files. A dispatch that
    #: names `paths` overrides them. None: whole worktrees.
    paths: list[str] | None = None
    #: Limits of each of this role's agents' model calls (docs/protocol.md "Usage and
    #: budgets"): the agent stops `failed`, "budget reached", once its cost (when known)
    #: or its input+output tokens reach them. None: no limit. A dispatch may override.
    budget_usd: float | None = Field(default=None, ge=0)
    max_tokens: int | None = Field(default=None, ge=1)
    #: Where this role's agents run ("Cluster" in docs/protocol.md); a dispatch may
    #: override. A cluster agent gets `num_cpus` and `memory_mb` reserved on its node.
    placement: Placement = "local"
    num_cpus: float = Field(default=1.0, gt=0, le=1024)
    memory_mb: int | None = Field(default=None, ge=64)
    #: A command run sandboxed in the agent's worktree when it finishes and after a
    #: rebase (`check = "pytest -q"`): `Agent.check` says whether it passed. It runs a
    #: command, so an untrusted `.forkyard.toml` cannot set it.
    check: str | None = None


BUILTIN_ROLES: dict[str, RoleConfig] = {
    "explorer": RoleConfig(
        description="reads the user's checkout, never writes",
        tools=list(READ_TOOLS),
        worktree=False,
    ),
    "worker": RoleConfig(description="writes in its own worktree; sandboxed commands"),
    "default": RoleConfig(description="as worker"),
}


class AgentLimits(BaseModel):
    """Budgets of the built-in agent loop, so a confused model cannot run forever."""

    model_config = ConfigDict(extra="forbid")

    max_steps: int = Field(default=50, ge=1)
    max_seconds: float = Field(default=1800.0, gt=0)
    max_tokens: int = Field(default=2_000_000, ge=1)
    max_tool_output_chars: int = Field(default=30_000, ge=1000)
    #: The same failing tool call this many times in a row ends the run as failed.
    repeated_failure_limit: int = Field(default=3, ge=1)


class WorktreeSettings(BaseModel):
    """How agents' worktrees are made, set up and cleaned up (`[worktree]`).

    Starting an agent must feel instant even on a big repository, a new worktree must
    have what the user's checkout has beyond git (`.env`, installed dependencies), agents
    running dev servers side by side must not fight over ports, and old worktrees must
    not fill the disk, without ever losing work."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    #: Worktrees kept checked out in advance, per repository; a dispatch takes one and
    #: only moves it to its exact base. 0 turns the pool off (each costs a checkout's
    #: disk space).
    pool_size: int = Field(default=2, ge=0, le=16)
    #: "overlay": each agent sees one shared read-only checkout of its base through an
    #: overlay of its own, so it costs the disk of its changes and starts in
    #: milliseconds; used where the machine allows it, else "full" (a checkout per
    #: agent), which `forkyard status` says with the reason (`workspace/overlay.py`).
    mode: Literal["overlay", "full"] = "overlay"
    #: `checkout.workers` for the checkouts Forkyard makes: 0 is one per core, 1 is
    #: git's sequential checkout.
    checkout_workers: int = Field(default=0, ge=0, le=64)
    #: Ignored files of the user's checkout copied into every new worktree (`.env`,
    #: `config/*.local`): gitignore-style globs relative to the repository root.
    copy_files: list[str] = Field(default_factory=list, alias="copy")
    #: Like `copy`, for large directories (`node_modules`, `.venv`): linked instead of
    #: copied, so agents read the user's copy and cannot change it.
    link: list[str] = Field(default_factory=list)
    #: Read `.worktreeinclude` (gitignore syntax, the files to copy) when the repository
    #: has one.
    worktreeinclude: bool = True
    #: A shell command run in each new worktree before its agent starts (`uv sync`),
    #: sandboxed like agents' commands; its failure fails the agent.
    setup: str | None = None
    setup_timeout_seconds: float = Field(default=900.0, gt=0)
    #: The setup step gets the network (to download dependencies) only when the user's
    #: own config says so: never from a repository's `.forkyard.toml` (USER_ONLY_KEYS).
    setup_network: bool = False
    #: Each agent gets `ports_per_agent` ports of its own from `port_base` up, exported
    #: as FORKYARD_PORT_BASE (also FORKYARD_PORT) and FORKYARD_PORTS.
    port_base: int = Field(default=20_000, ge=1024, le=60_000)
    ports_per_agent: int = Field(default=10, ge=1, le=100)
    #: Worktrees of applied or discarded agents are removed this long after that
    #: (their work kept in a ref); other agents' only when the user says so.
    gc_grace_seconds: float = Field(default=3 * 24 * 3600.0, ge=0)
    #: How often the server collects them; 0: only `forkyard gc`.
    gc_interval_seconds: float = Field(default=3600.0, ge=0)


class SandboxSettings(BaseModel):
    """What the sandbox shows agents' commands beyond the system, the toolchains and
    their own worktree (`[sandbox]`). It hides the rest of the user's files, so a path a
    build needs (a toolchain cache) must be granted here."""

    model_config = ConfigDict(extra="forbid")

    #: Paths shown read-only inside the sandbox (`~` expanded); missing ones are skipped.
    read_paths: list[str] = Field(default_factory=list)

    def resolved_read_paths(self, environ: Mapping[str, str]) -> list[Path]:
        """`read_paths` with `~` expanded against `environ`'s HOME (not the process's)."""
        home = environ.get("HOME")
        paths = []
        for entry in self.read_paths:
            at_home = home is not None and (entry == "~" or entry.startswith("~/"))
            paths.append(Path(f"{home}{entry[1:]}") if at_home else Path(entry).expanduser())
        return paths


class GatewaySettings(BaseModel):
    """The model gateway every external agent program reaches its model through
    (`[gateway]`)."""

    model_config = ConfigDict(extra="forbid")

    #: Log each call's prompt (the request body, clipped) in the daemon's log. Off: the
    #: log holds who called, what it cost and how long it took, never what was said.
    log_prompts: bool = False
    #: Seconds an upstream may take to start answering, and between two streamed chunks,
    #: before the agent gets a timeout error of its API.
    upstream_timeout_seconds: float = Field(default=600.0, gt=0)


class BudgetSettings(BaseModel):
    """The person's own limits across agents (`[budget]`); per agent: the roles'."""

    model_config = ConfigDict(extra="forbid")

    #: USD all model calls of a day (UTC) may cost together: chat, agents, every backend.
    daily_usd: float | None = Field(default=None, ge=0)
    #: USD the chat and the agents of one thread may cost together.
    thread_usd: float | None = Field(default=None, ge=0)


class Settings(BaseModel):
    """Everything a user can configure. Field names are the TOML keys."""

    model_config = ConfigDict(extra="forbid")

    max_parallel_agents: int = Field(default=6, ge=1, le=64)
    state_dir: Path | None = None
    models: dict[str, ModelConfig] = Field(default_factory=dict)
    roles: dict[str, RoleConfig] = Field(default_factory=dict)
    command_timeout_seconds: float = Field(default=3600.0, gt=0)
    max_log_entries_per_agent: int = Field(default=20_000, ge=100)
    allow_unsandboxed_commands: bool = False
    #: The `[models.NAME]` the llm backend uses unless the role names another.
    agent_model: str = "default"
    agent: AgentLimits = Field(default_factory=AgentLimits)
    #: External agent programs (`[backends.NAME]`: codex, claude, aider, or a command).
    backends: dict[str, ExternalBackendConfig] = Field(default_factory=dict)
    worktree: WorktreeSettings = Field(default_factory=WorktreeSettings)
    sandbox: SandboxSettings = Field(default_factory=SandboxSettings)
    #: "background": agents' commands run at nice 10 in the idle I/O class, so builds
    #: and test runs of agents never make the editor or the user's own work stutter;
    #: "normal": at the server's priority.
    agent_priority: Literal["background", "normal"] = "background"
    #: How long `forkyard daemon` runs on with no front connected and no agent running
    #: before it exits; 0: it exits as soon as that happens.
    daemon_idle_seconds: float = Field(default=900.0, ge=0)
    #: How long an approval (a tool use the role's policy asks about) waits for the
    #: person's answer; no answer by then is Deny.
    approval_timeout_seconds: float = Field(default=600.0, gt=0)
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    budget: BudgetSettings = Field(default_factory=BudgetSettings)
    cluster: ClusterSettings = Field(default_factory=ClusterSettings)
    #: The severity of the diagnostics over agents' hunks: editors draw a hint as
    #: almost nothing ("…" at column 1 in VS Code), so Information is the default.
    diagnostic_severity: Literal["hint", "information", "warning"] = "information"

    def role(self, name: str) -> RoleConfig | None:
        """A configured role, else a built-in one, else None. A configured role named like
        a built-in one changes only the keys it sets: `[roles.explorer] budget_usd = 1`
        (which an untrusted repository may set) must not turn the explorer into a writer."""
        configured, builtin = self.roles.get(name), BUILTIN_ROLES.get(name)
        if configured is None or builtin is None:
            return configured or builtin
        changed = {key: getattr(configured, key) for key in configured.model_fields_set}
        return builtin.model_copy(update=changed)

    def role_names(self) -> list[str]:
        return sorted({*BUILTIN_ROLES, *self.roles})

    def resolved_state_dir(self, environ: Mapping[str, str]) -> Path:
        """Configured value, else `FORKYARD_STATE_DIR`, else the platform's state dir."""
        if self.state_dir is not None:
            return self.state_dir.expanduser()
        if env_dir := environ.get("FORKYARD_STATE_DIR"):
            return Path(env_dir).expanduser()
        return Path(platformdirs.user_state_dir("forkyard"))


@dataclass
class SettingsProblem:
    source: str
    key: str
    message: str
    #: A complete one-line message to show instead of the generic one.
    summary: str | None = None

    def __str__(self) -> str:
        if self.summary is not None:
            return self.summary
        return f"Forkyard setting '{self.key}' in {self.source}: {self.message}"


@dataclass
class LoadedSettings:
    settings: Settings
    problems: list[SettingsProblem] = field(default_factory=list)
    #: Whether the user trusts the repository (trust.py); True with no repository.
    trusted: bool = True
    #: Keys of the repository's file that were not applied for want of trust.
    ignored_keys: list[str] = field(default_factory=list)


@dataclass
class SettingsSource:
    name: str
    values: dict[str, Any]


_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])([A-Z])")
# Keys under these are names the user chose (model and role names), not field names.
_NAMED_TABLES = {"models", "roles", "policy", "backends"}


def _snake(key: str) -> str:
    return _CAMEL_BOUNDARY.sub(r"_\1", key).lower()


def normalise_keys(values: Mapping[str, Any], *, names_level: bool = False) -> dict[str, Any]:
    """camelCase JSON keys to the TOML's snake_case, leaving user-chosen names alone."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        new_key = key if names_level else _snake(key)
        if isinstance(value, Mapping):
            out[new_key] = normalise_keys(
                value, names_level=(not names_level and new_key in _NAMED_TABLES)
            )
        else:
            out[new_key] = value
    return out


def user_config_file(environ: Mapping[str, str]) -> Path:
    base = environ.get("XDG_CONFIG_HOME") or str(Path(environ.get("HOME", "~")) / ".config")
    return Path(base).expanduser() / "forkyard" / "config.toml"


def read_toml_source(path: Path, problems: list[SettingsProblem]) -> SettingsSource | None:
    """A TOML file as a source; a missing file is no source, a broken one a problem.

    Blocking file I/O: callers run it in a worker thread."""
    if not path.is_file():
        return None
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        problems.append(SettingsProblem(str(path), "(file)", f"cannot be read: {exc}"))
        return None
    return SettingsSource(str(path), values)


def _deep_merge(into: dict[str, Any], values: Mapping[str, Any]) -> None:
    for key, value in values.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        elif isinstance(value, Mapping):
            into[key] = {}
            _deep_merge(into[key], value)
        else:
            into[key] = value


def _has_path(values: Mapping[str, Any], path: tuple[str, ...]) -> bool:
    node: Any = values
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def _drop_deepest(values: dict[str, Any], path: tuple[str, ...]) -> tuple[str, ...]:
    """Remove the deepest existing key along `path`; return the path removed."""
    depth = len(path)
    while depth > 0 and not _has_path(values, path[:depth]):
        depth -= 1
    if depth == 0:
        depth = 1
    node: Any = values
    for part in path[: depth - 1]:
        node = node[part]
    node.pop(path[depth - 1], None)
    return path[:depth]


def merge_sources(sources: list[SettingsSource]) -> LoadedSettings:
    """Apply the sources in order; a bad key of one source is dropped and reported, and
    the value an earlier source gave it still holds."""
    accepted: dict[str, Any] = {}
    problems: list[SettingsProblem] = []
    for source in sources:
        values = normalise_keys(source.values)
        # Each round drops every key the validation named, so it ends: at the latest
        # when the source has no key left.
        while True:
            candidate = copy.deepcopy(accepted)
            _deep_merge(candidate, values)
            try:
                Settings.model_validate(candidate)
            except ValidationError as exc:
                dropped = False
                for error in exc.errors():
                    loc = tuple(str(part) for part in error["loc"])
                    if not _has_path(values, loc[:1]):
                        continue  # a key an earlier drop of this round already removed
                    removed = _drop_deepest(values, loc)
                    message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
                    problems.append(
                        SettingsProblem(source.name, ".".join(removed), f"{message}; ignored")
                    )
                    dropped = True
                if not dropped:
                    # Earlier sources were valid, so this cannot happen; if it does, the
                    # whole source is ignored, and said so, rather than loop.
                    error = exc.errors()[0]
                    problems.append(
                        SettingsProblem(
                            source.name,
                            ".".join(str(part) for part in error["loc"]),
                            f"{error['msg']}; this source is ignored",
                        )
                    )
                    break
                continue
            accepted = candidate
            break
    return LoadedSettings(Settings.model_validate(accepted), problems)


def load_settings(
    repo_root: Path | None,
    environ: Mapping[str, str],
    initialization_options: Mapping[str, Any] | None = None,
    client_settings: Mapping[str, Any] | None = None,
) -> LoadedSettings:
    """All sources in order. Reads files: call it from a worker thread."""
    problems: list[SettingsProblem] = []
    sources: list[SettingsSource] = []
    if source := read_toml_source(user_config_file(environ), problems):
        sources.append(source)
    repo = _repository_source(repo_root, environ, problems) if repo_root else None
    if repo is not None and repo.source is not None:
        sources.append(repo.source)
    for name, values in (
        ("initializationOptions", initialization_options),
        ("workspace/didChangeConfiguration", client_settings),
    ):
        if values is None:
            continue
        if isinstance(values, Mapping):
            sources.append(SettingsSource(name, dict(values)))
        else:
            problems.append(SettingsProblem(name, "(all)", "must be an object; ignored"))
    loaded = merge_sources(sources)
    loaded.problems[:0] = problems
    if repo is not None:
        loaded.trusted = repo.trusted
        loaded.ignored_keys = repo.ignored
        if not repo.trusted and loaded.settings.worktree.worktreeinclude and repo.worktreeinclude:
            # `.worktreeinclude` picks ignored files (`.env`) to copy, like `copy`.
            worktree = loaded.settings.worktree.model_copy(update={"worktreeinclude": False})
            loaded.settings = loaded.settings.model_copy(update={"worktree": worktree})
            loaded.ignored_keys.append(".worktreeinclude")
        if loaded.ignored_keys:
            loaded.problems.append(
                SettingsProblem(
                    repo.name,
                    ", ".join(loaded.ignored_keys),
                    "ignored until you trust this repository",
                    summary=ignored_summary(loaded.ignored_keys),
                )
            )
    return loaded


def _known_key(path: str) -> bool:
    """Whether a dotted key names a setting (anything under a table of names does)."""
    model: type[BaseModel] | None = Settings
    for part in path.split("."):
        if model is None:
            return True
        fields = model.model_fields
        found = fields.get(part) or next((f for f in fields.values() if f.alias == part), None)
        if found is None:
            return False
        kind = found.annotation
        model = kind if isinstance(kind, type) and issubclass(kind, BaseModel) else None
    return True


@dataclass
class _RepositorySource:
    name: str
    source: SettingsSource | None
    trusted: bool
    ignored: list[str]
    worktreeinclude: bool


def _repository_source(
    root: Path, environ: Mapping[str, str], problems: list[SettingsProblem]
) -> _RepositorySource:
    """The repository's `.forkyard.toml`, cut down to what its trust allows."""
    path = root / ".forkyard.toml"
    trust = read_trust(environ)
    if trust.problem is not None:
        problems.append(
            SettingsProblem(
                str(trust.path),
                "(file)",
                "unusable",
                summary=f"Forkyard trusts no repository: {trust.problem}"[:200],
            )
        )
    trusted = trust.trusts(root)
    result = _RepositorySource(str(path), None, trusted, [], (root / ".worktreeinclude").is_file())
    source = read_toml_source(path, problems)
    if source is None:
        return result
    split = split_repository_values(
        normalise_keys(source.values), trusted=trusted, known=_known_key
    )
    result.source = SettingsSource(source.name, split.kept)
    result.ignored = split.untrusted
    for key in split.user_only:
        problems.append(
            SettingsProblem(
                source.name,
                key,
                "only your own config can set it",
                summary=f".forkyard.toml: {key} ignored, only your own config can turn it on",
            )
        )
    return result


def current_environ() -> Mapping[str, str]:
    """The process environment, read-only: Forkyard never mutates it."""
    return os.environ
