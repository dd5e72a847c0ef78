"""What every external agent program backend shares: finding the program, its private
home, its environment, the sandbox and the run (reading its output: `external_output`).

Forkyard's guarantees hold whatever the program does:

- It runs in the agent's directory under bubblewrap: the system, the toolchains and the
  program's installation read-only, writable only the worktree (nothing for explorers)
  and the program's private home, nothing else of the user's; no network at all. Its
  one way out is the model gateway (`forkyard.gateway`): a socket bound in, reached
  through a relay on the sandbox's own loopback, with a token of this run in place of
  the API key, which never enters the sandbox. Its own sandbox, where it has one, still
  applies inside (codex's keeps the commands it runs off even the gateway).
- Its environment is a short allow-list plus the variables the settings name: names in
  the config, values from the server's environment, never in argv (where `ps` shows them).
- Its private home (config, sessions, caches) lives in the state directory, one per agent,
  so sessions survive between runs and follow-ups resume them; nothing of the user's own
  configuration of that program leaks in.
- Cancellation and timeouts end the whole process tree (`run_streaming`, and bwrap's PID
  namespace).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import ClassVar

import anyio
import anyio.to_thread

import forkyard
from forkyard.agents.base import AgentContext, Availability, RunOutcome
from forkyard.agents.external_config import ExternalBackendConfig, backend_config
from forkyard.agents.external_output import OutputReader, Redactor
from forkyard.gateway.access import AgentAccess, open_access
from forkyard.settings import Settings, current_environ
from forkyard.tools.process import run_streaming
from forkyard.tools.sandbox import (
    SandboxPolicy,
    priority_prefix,
    probe_sandbox,
    sandboxed_argv,
)
from forkyard.tools.sandbox_paths import venv_base
from forkyard.workspace.sandbox_view import sandbox_read_paths

#: Variables every program gets (when the server has them): what a program needs to find
#: its tools and speak the user's language, nothing that grants access to anything.
BASE_ENV_NAMES: frozenset[str] = frozenset(
    {"PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "USER", "LOGNAME", "SHELL"}
)
#: Set for every program: no colours or terminal tricks in a log.
PLAIN_OUTPUT_ENV: Mapping[str, str] = {"TERM": "dumb", "NO_COLOR": "1"}
#: Inside the sandbox, a temporary directory outside the program's home. Codex refuses
#: to set up its own sandbox helper when its home lies under TMPDIR, and the home lies
#: under /tmp whenever the state directory does (in tests).
SANDBOX_TMPDIR = "/tmp/tmp"
#: Where the install script puts the programs, inside a Forkyard checkout.
LOCAL_INSTALL_DIRNAME = ".agents"
SESSION_FILE = "forkyard-session.json"
#: The git identity a program sees when the user's git configuration has none. Forkyard's
#: backends never let a program commit; this only keeps programs from writing their own
#: placeholder identity into the repository.
GIT_FALLBACK_NAME = "Forkyard agent"
GIT_FALLBACK_EMAIL = "agent@forkyard.invalid"


@dataclass(frozen=True)
class ProgramSpec:
    """How to find and name one kind of program."""

    kind: str
    executable: str
    #: Paths relative to a local install folder, e.g. "node_modules/.bin/codex".
    local_paths: tuple[str, ...]
    install_hint: str
    default_api_key_env: str | None
    #: The program sandboxes the commands it runs with user namespaces of its own.
    nested_sandbox: bool = False
    #: Its model speaks the Anthropic API (else an OpenAI one, or Gemini's).
    anthropic: bool = False
    gemini: bool = False


@dataclass
class Invocation:
    """One run of the program: argv (unsandboxed form), extra environment, stdin, and
    who reads its output."""

    argv: list[str]
    env: dict[str, str]
    output: OutputReader
    stdin: bytes | None = None
    #: Run after the program, however it ended (cleanup of its leftovers).
    after: Callable[[], Awaitable[None]] | None = None


# -- finding the program ------------------------------------------------------------------


#: `.agents/` beside the Forkyard checkout this server runs from, found once at import
#: (it does not move while the server runs, and resolving it touches the file system).
_CHECKOUT_INSTALL_DIR = Path(forkyard.__file__).resolve().parents[2] / LOCAL_INSTALL_DIRNAME


def local_install_dirs(environ: Mapping[str, str]) -> list[Path]:
    """Folders the install script may have filled: FORKYARD_AGENTS_DIR, then `.agents/`
    of the Forkyard checkout this server runs from."""
    dirs = []
    if configured := environ.get("FORKYARD_AGENTS_DIR"):
        dirs.append(Path(configured).expanduser())
    dirs.append(_CHECKOUT_INSTALL_DIR)
    return dirs


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_program(
    spec: ProgramSpec, config: ExternalBackendConfig, environ: Mapping[str, str]
) -> Path | None:
    """The configured program, else the usual name in PATH, else the local install.
    Stats files: call it from a worker thread."""
    search_path = environ.get("PATH", os.defpath)
    if config.program:
        if "/" in config.program:
            candidate = Path(config.program).expanduser()
            return candidate if _executable(candidate) else None
        found = shutil.which(config.program, path=search_path)
        return Path(found) if found else None
    if found := shutil.which(spec.executable, path=search_path):
        return Path(found)
    for folder in local_install_dirs(environ):
        for relative in spec.local_paths:
            if _executable(folder / relative):
                return folder / relative
    return None


def not_found_reason(
    spec: ProgramSpec, config: ExternalBackendConfig, environ: Mapping[str, str]
) -> str:
    if config.program:
        return (
            f"{spec.kind}: the configured program {config.program!r} was not found; "
            f"install it ({spec.install_hint}) or correct backends.<name>.program"
        )
    places = ", ".join(str(folder) for folder in local_install_dirs(environ))
    return (
        f"{spec.executable} not found in PATH nor in {places}; install it "
        f"({spec.install_hint}, or `bash tests/fakes/install_agents.sh` in a Forkyard "
        f"checkout) or set backends.<name>.program"
    )


def install_root(program: Path) -> Path:
    """The folder a program's installation lives in, which must stay readable in the
    sandbox: the `node_modules` that holds an npm program and its platform binary, the
    virtualenv of a Python one (`venv/bin/tool`), else the program's folder."""
    parts = program.parts
    if "node_modules" in parts:
        return Path(*parts[: parts.index("node_modules") + 1])
    if program.parent.name == "bin":
        return program.parent.parent
    return program.parent


# -- the agent's private home -------------------------------------------------------------


@dataclass(frozen=True)
class AgentHome:
    """The program's private, persistent HOME for one agent: its config, sessions and
    caches, and the id of the session that follow-ups resume."""

    path: Path

    @classmethod
    def for_agent(cls, context: AgentContext, backend_name: str) -> AgentHome:
        """Keyed by repository, directory and agent number: unique per agent, and the
        same again when the agent runs a follow-up or after a server restart. Resolves
        paths: call it from a worker thread."""
        identity = f"{context.repo_root.resolve()}\0{context.cwd.resolve()}\0"
        identity += str(context.agent_number)
        key = hashlib.sha256(identity.encode()).hexdigest()[:16]
        state_dir = context.settings.resolved_state_dir(context.environ)
        name = f"agent-{context.agent_number}-{key}"
        return cls(state_dir / "agent-homes" / _safe_name(backend_name) / name)

    def prepare(self, environ: Mapping[str, str]) -> None:
        """Create the home, with a git configuration that includes the user's own: the
        private HOME hides ~/.gitconfig, and programs that find no git identity write one
        into the repository's config (aider does), which the sandbox keeps read-only.
        Blocking: run in a worker thread."""
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        includes = [
            Path(environ["XDG_CONFIG_HOME"]) / "git" / "config"
            if environ.get("XDG_CONFIG_HOME")
            else None,
            Path(environ["HOME"]) / ".config" / "git" / "config" if environ.get("HOME") else None,
            Path(environ["HOME"]) / ".gitconfig" if environ.get("HOME") else None,
        ]
        lines = ["[user]", f"\tname = {GIT_FALLBACK_NAME}", f"\temail = {GIT_FALLBACK_EMAIL}"]
        for include in includes:
            if include is not None and include.resolve() != (self.path / ".gitconfig"):
                lines += ["[include]", f"\tpath = {_git_config_quote(str(include))}"]
        (self.path / ".gitconfig").write_text("\n".join(lines) + "\n", encoding="utf-8")

    def read_session(self) -> str | None:
        """Blocking: run in a worker thread."""
        try:
            data = json.loads((self.path / SESSION_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        session = data.get("session_id") if isinstance(data, dict) else None
        return session if isinstance(session, str) and session else None

    def write_session(self, session_id: str) -> None:
        """Blocking: run in a worker thread."""
        (self.path / SESSION_FILE).write_text(
            json.dumps({"session_id": session_id}), encoding="utf-8"
        )


def _git_config_quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "backend"


# -- environment -------------------------------------------------------------------------


def program_env(
    context: AgentContext,
    config: ExternalBackendConfig,
    home: AgentHome,
    extra: Mapping[str, str],
) -> dict[str, str]:
    """The program's whole environment: the base allow-list and the variables the
    settings name, taken from the server's environment; what the server hands every
    agent (its ports); then what the backend sets."""
    names = BASE_ENV_NAMES | set(config.env)
    env = {name: value for name, value in context.environ.items() if name in names}
    env.update(PLAIN_OUTPUT_ENV)
    # Contexts from before agents had their own ports have no `extra_env`.
    env.update(getattr(context, "extra_env", None) or {})
    env["HOME"] = str(home.path)
    env.update(extra)
    return env


def api_key(
    spec: ProgramSpec, config: ExternalBackendConfig, environ: Mapping[str, str]
) -> tuple[str | None, str | None]:
    """(variable name, value) of the API key; the value is None when it is not set."""
    name = config.api_key_env or spec.default_api_key_env
    if name is None:
        return None, None
    return name, environ.get(name) or None


# -- running --------------------------------------------------------------------------------


@dataclass
class Launch:
    """Everything `execute` needs besides the invocation."""

    program: Path
    home: AgentHome
    config: ExternalBackendConfig
    #: This run's grant on the model gateway: the program's base URL and "key".
    access: AgentAccess
    nested_sandbox: bool = False


def _shell_line(argv: Sequence[str], env: Mapping[str, str]) -> str:
    """The command the sandbox's shell runs: its own TMPDIR and the private home (the
    sandbox sets HOME to its throwaway one), then the program in place of the shell."""
    assignments = " ".join(
        f"{name}={shlex.quote(value)}"
        for name, value in (("HOME", env["HOME"]), ("TMPDIR", SANDBOX_TMPDIR))
    )
    return f"mkdir -p {SANDBOX_TMPDIR} && {assignments} exec {shlex.join(argv)}"


async def launch_argv(
    context: AgentContext, launch: Launch, invocation: Invocation, env: Mapping[str, str]
) -> list[str] | RunOutcome:
    """The argv that starts the invocation sandboxed (or unsandboxed where the user
    allowed it, for roles that write), or the failed outcome saying why it cannot run."""
    settings = context.settings
    status = await probe_sandbox()
    if status.available:
        readable = await sandbox_read_paths(
            worktree=context.cwd if context.writable else None,
            checkout=context.repo_root,
            settings=settings,
            environ=context.environ,
        )
        readable += await anyio.to_thread.run_sync(_program_paths, launch.program, context.environ)
        policy = SandboxPolicy(
            writable=[*([context.cwd] if context.writable else []), launch.home.path],
            network=False,
            ro_binds=launch.access.sandbox_binds(),
            env_allowlist=frozenset(env),
            readable=readable,
            nested_sandbox=launch.nested_sandbox,
            priority=settings.agent_priority,
        )
        # No `env=` here: bwrap inherits `env` from its runner, so API keys never
        # appear on bwrap's command line.
        program_argv = launch.access.wrap(invocation.argv, sandboxed=True)
        return await anyio.to_thread.run_sync(
            partial(sandboxed_argv, _shell_line(program_argv, env), policy, cwd=context.cwd)
        )
    if settings.allow_unsandboxed_commands and context.writable:
        await context.log("system", "bubblewrap is unavailable: running unsandboxed")
        program_argv = launch.access.wrap(invocation.argv, sandboxed=False)
        return [*priority_prefix(settings.agent_priority), *program_argv]
    return RunOutcome(
        False,
        "",
        f"cannot run {launch.program.name}: the sandbox is unavailable ({status.reason})",
    )


async def execute(context: AgentContext, launch: Launch, invocation: Invocation) -> RunOutcome:
    """Run the invocation (`launch_argv`) and return the reader's outcome; remember the
    program's session."""
    settings = context.settings
    env = program_env(context, launch.config, launch.home, invocation.env)
    argv = await launch_argv(context, launch, invocation, env)
    if isinstance(argv, RunOutcome):
        return argv
    await context.log("command", "$ " + shlex.join(invocation.argv))
    context.progress(f"starting {launch.program.name}")
    timeout = launch.config.timeout_seconds or settings.command_timeout_seconds
    redact = Redactor(env)

    async def on_output(stream: str, line: str) -> None:
        await invocation.output.line(stream, redact(line))

    result = None
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(_stop_when_refused, launch.access, group.cancel_scope)
            result = await run_streaming(
                argv,
                cwd=context.cwd,
                env=env,
                on_output=on_output,
                timeout=timeout,
                stdin=invocation.stdin,
            )
            group.cancel_scope.cancel()
    finally:
        if session := invocation.output.session_id:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(launch.home.write_session, session)
    if (refused := launch.access.grant.refused) is not None:
        # Stopped by a budget, however the program took the refusal: its work so far
        # is committed like any run's, and a follow-up resumes its session.
        return RunOutcome(False, "", refused)
    assert result is not None
    outcome = invocation.output.outcome(result)
    return RunOutcome(
        outcome.ok,
        redact(outcome.summary),
        redact(outcome.error) if outcome.error is not None else None,
    )


@asynccontextmanager
async def gateway_access(
    context: AgentContext, spec: ProgramSpec, config: ExternalBackendConfig, name: str
) -> AsyncIterator[AgentAccess]:
    """This run's grant on the model gateway, revoked when the run ends however it ends."""
    key_name, _ = api_key(spec, config, context.environ)
    access = await open_access(
        context,
        label=f"agent #{context.agent_number} ({name})",
        upstream=config.base_url,
        anthropic=spec.anthropic,
        key_env=key_name,
        gemini=spec.gemini,
    )
    try:
        yield access
    finally:
        access.revoke()


async def _stop_when_refused(access: AgentAccess, scope: anyio.CancelScope) -> None:
    """End the program as soon as the gateway refuses it a call: a program may retry
    (or wait) where it should stop."""
    await access.refused.wait()
    scope.cancel()


def _program_paths(program: Path, environ: Mapping[str, str]) -> list[Path]:
    """What the sandbox must show for the program to run: its installation, as typed
    and as resolved (npm's .bin entries are symlinks), and for a Python program the
    Python its virtualenv runs on. The system shows already; the rest of the user's
    files stays hidden: a program in `~/bin` or `~/.local/bin` brings its folder, not
    the home or `~/.local`. Blocking: run in a worker thread."""
    home = Path(environ["HOME"]).resolve() if environ.get("HOME") else None
    found: list[Path] = []
    for path in (program, program.resolve()):
        root = install_root(path).resolve()
        too_wide = root == Path("/") or (
            home is not None and (home.is_relative_to(root) or root == home / ".local")
        )
        found.append(path.parent.resolve() if too_wide else root)
        if (root / "pyvenv.cfg").is_file() and (base := venv_base(root / "pyvenv.cfg")):
            found.append(base)
    return [path for path in dict.fromkeys(found) if path.exists()]


class ExternalProgramBackend:
    """A backend that drives one external program. Subclasses say how to find it
    (`spec`) and how to invoke it and read it (`invocation`)."""

    spec: ClassVar[ProgramSpec]

    def __init__(self, name: str | None = None) -> None:
        self.name = name or self.spec.kind

    def config(self, settings: Settings) -> ExternalBackendConfig:
        return backend_config(settings, self.name)

    async def availability(self, settings: Settings) -> Availability:
        config = self.config(settings)
        environ = current_environ()
        program = await anyio.to_thread.run_sync(find_program, self.spec, config, environ)
        if program is None:
            return Availability(False, not_found_reason(self.spec, config, environ))
        status = await probe_sandbox()
        if not status.available and not settings.allow_unsandboxed_commands:
            return Availability(
                False,
                f"{self.name} runs sandboxed and the sandbox is unavailable "
                f"({status.reason}); install bubblewrap, or set "
                "allow_unsandboxed_commands = true",
            )
        return Availability(True, f"{self.spec.executable} at {program}")

    async def run(self, context: AgentContext, instruction: str) -> RunOutcome:
        config = self.config(context.settings)
        program = await anyio.to_thread.run_sync(find_program, self.spec, config, context.environ)
        if program is None:
            return RunOutcome(False, "", not_found_reason(self.spec, config, context.environ))
        home = await anyio.to_thread.run_sync(AgentHome.for_agent, context, self.name)
        await anyio.to_thread.run_sync(home.prepare, context.environ)
        session = await anyio.to_thread.run_sync(home.read_session)
        async with gateway_access(context, self.spec, config, self.name) as access:
            launch = Launch(
                program=program,
                home=home,
                config=config,
                access=access,
                nested_sandbox=self.spec.nested_sandbox,
            )
            invocation = await self.invocation(context, launch, instruction, session)
            try:
                return await execute(context, launch, invocation)
            finally:
                if invocation.after is not None:
                    with anyio.CancelScope(shield=True):
                        await invocation.after()

    async def invocation(
        self, context: AgentContext, launch: Launch, instruction: str, session: str | None
    ) -> Invocation:
        """How to run the program for `instruction`; `session` is the id of the session
        this agent's previous run left, to resume, or None for its first run."""
        raise NotImplementedError
