"""An `AgentContext` for running one backend on its own, without the orchestrator, and
helpers for the external agent programs the install script puts in `.agents/`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydantic import Field

from forkyard.agents.base import ApprovalAnswer, Backend, RunOutcome
from forkyard.agents.budget import Budget
from forkyard.agents.external_config import ExternalBackendConfig
from forkyard.models.pricing import add_usage
from forkyard.settings import BUILTIN_ROLES, RoleConfig, Settings
from forkyard_protocol import Usage
from tests.helpers import git, make_repo

REPO_ROOT = Path(__file__).resolve().parents[2]
INSTALL_SCRIPT = "tests/fakes/install_agents.sh"
PROGRAM_PATHS = {
    "codex": "node_modules/.bin/codex",
    "claude": "node_modules/.bin/claude",
    "aider": "aider-venv/bin/aider",
}
#: A key the programs send to the fake model; tests check it never leaks.
FAKE_API_KEY = "sk-forkyard-test-0123456789"


class SettingsWithBackends(Settings):
    """Settings with the `backends` table, as the integrated settings model has it."""

    backends: dict[str, ExternalBackendConfig] = Field(default_factory=dict)


def settings_for(state_dir: Path, **backends: ExternalBackendConfig) -> Settings:
    return SettingsWithBackends(state_dir=state_dir, backends=backends)


def agents_dir() -> Path:
    return Path(os.environ.get("FORKYARD_AGENTS_DIR") or REPO_ROOT / ".agents")


def installed_program(kind: str) -> Path:
    """The program the install script installed; skips the test when the script ran but
    could not install it, fails it when the script never ran."""
    folder = agents_dir()
    program = folder / PROGRAM_PATHS[kind]
    if program.is_file() and os.access(program, os.X_OK):
        return program
    error = folder / f"{kind}.install-error"
    if error.is_file():
        pytest.skip(
            f"{kind} is not installed: {INSTALL_SCRIPT} could not install it: "
            + error.read_text().strip()
        )
    pytest.fail(f"{kind} is not installed in {folder}: run `bash {INSTALL_SCRIPT}` first")


class Metered:
    """What the fake contexts do with usage and budgets: each call's usage recorded,
    summed on demand, and the limits handed back as they are."""

    usage: list[Usage]
    limits: Budget

    def add_usage(self, usage: Usage) -> None:
        self.usage.append(usage)

    def spent(self) -> Usage | None:
        total: Usage | None = None
        for part in self.usage:
            total = add_usage(total, part)
        return total

    def budget(self) -> Budget:
        return self.limits


@dataclass
class FakeAgentContext(Metered):
    """Records what a backend reports; answers approvals with a fixed answer."""

    cwd: Path
    repo_root: Path
    settings: Settings
    environ: Mapping[str, str]
    role: RoleConfig = field(default_factory=lambda: BUILTIN_ROLES["worker"])
    role_name: str = "worker"
    agent_number: int = 1
    approval: ApprovalAnswer = "deny"
    extra_env: Mapping[str, str] = field(default_factory=lambda: {"FORKYARD_PORT_BASE": "20010"})
    logs: list[tuple[str, str]] = field(default_factory=list)
    progress_reports: list[tuple[str, int | None]] = field(default_factory=list)
    usage: list[Usage] = field(default_factory=list)
    followups: list[str] = field(default_factory=list)
    limits: Budget = field(default_factory=Budget)
    logged: anyio.Event = field(default_factory=anyio.Event)

    @property
    def writable(self) -> bool:
        return self.role.worktree

    async def log(self, kind: str, text: str) -> None:
        self.logs.append((kind, text))
        self.logged.set()

    def progress(self, message: str, percentage: int | None = None) -> None:
        self.progress_reports.append((message, percentage))

    def take_followups(self) -> list[str]:
        taken, self.followups = self.followups, []
        return taken

    async def request_approval(self, tool: str, detail: str) -> ApprovalAnswer:
        return self.approval

    def log_text(self, *kinds: str) -> str:
        return "\n".join(text for kind, text in self.logs if not kinds or kind in kinds)


@dataclass
class Workspace:
    """A real repository and an agent worktree of it on its own branch."""

    repo: Path
    worktree: Path
    state_dir: Path

    def status(self) -> list[str]:
        """`git status --porcelain` of the worktree, untracked files listed one by one."""
        out = git(self.worktree, "status", "--porcelain", "--untracked-files=all")
        return sorted(line for line in out.splitlines() if line)

    def diff(self) -> str:
        git(self.worktree, "add", "-A", "--intent-to-add")
        return git(self.worktree, "diff")


def make_workspace(tmp_path: Path, files: dict[str, str] | None = None) -> Workspace:
    repo = make_repo(
        tmp_path / "repo",
        files or {"README.md": "# sample\n", "src/app.py": "def add(a, b):\n    return a + b\n"},
    )
    worktree = tmp_path / "worktrees" / "agent-1"
    worktree.parent.mkdir()
    git(repo, "worktree", "add", "-q", "-b", "forkyard/1-test", str(worktree))
    return Workspace(repo=repo, worktree=worktree, state_dir=tmp_path / "state")


def server_environ(**extra: str) -> dict[str, str]:
    """A server environment: what a user's shell has, a key, and a secret that no
    program may see unless the settings name it."""
    return {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        "FORKYARD_TEST_SECRET": "do-not-leak",
        **extra,
    }


async def processes_in(directory: Path) -> list[int]:
    """Pids of live processes whose working directory is `directory` or below it, or
    whose command line names it: what an agent program and its children look like."""

    def scan() -> list[int]:
        target = str(directory.resolve())
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                stat = Path("/proc", entry, "stat").read_text()
                if stat[stat.rindex(")") + 2] in "ZX":
                    continue
                cwd = os.readlink(f"/proc/{entry}/cwd")
                cmdline = Path("/proc", entry, "cmdline").read_bytes().decode(errors="replace")
            except (OSError, ValueError):
                continue
            if cwd == target or cwd.startswith(target + "/") or target in cmdline:
                found.append(int(entry))
        return found

    return await anyio.to_thread.run_sync(scan)


async def wait_until_no_processes_in(directory: Path, timeout: float = 10) -> list[int]:
    """Wait until no process runs in `directory`; returns the ones left at the timeout.
    Polls: the kernel has no event for "a process elsewhere exited"."""
    left: list[int] = []
    with anyio.move_on_after(timeout):
        while left := await processes_in(directory):  # noqa: ASYNC110 - see docstring
            await anyio.sleep(0.05)
    return left


async def assert_cancel_kills_everything(
    backend: Backend, context: FakeAgentContext, worktree: Path, hanging: Any
) -> None:
    """Run `backend` against a model whose reply hangs, cancel it once the request is in
    and the program runs, and check that nothing it started survives and that the model
    sees the connection close. `hanging` is the scripted `Reply(hang=True)`."""
    outcomes: list[RunOutcome] = []

    async def run() -> None:
        outcomes.append(await backend.run(context, "Take forever"))

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(run)
        await hanging.started()
        assert await processes_in(worktree), f"{backend.name} should be running"
        tasks.cancel_scope.cancel()

    assert outcomes == [], "a cancelled run returns nothing"
    assert await wait_until_no_processes_in(worktree) == []
    await hanging.client_disconnected()
