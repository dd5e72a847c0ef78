"""`run_command` for the built-in agent: a shell command in the agent's worktree, in the
same sandbox as the `command` backend (only the worktree writable, no network, scrubbed
environment), its output bounded so that `cat` of a huge log cannot flood the model.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import anyio.to_thread

from forkyard.settings import Settings
from forkyard.tools.process import run_streaming
from forkyard.tools.sandbox import (
    SandboxPolicy,
    SandboxStatus,
    sandboxed_argv,
    scrubbed_env,
    unsandboxed_argv,
)
from forkyard.tools.sandbox_paths import git_read_paths
from forkyard.tools.truncate import truncate_output
from forkyard.workspace.sandbox_view import sandbox_read_paths

SandboxProbe = Callable[[], Awaitable[SandboxStatus]]


@dataclass(frozen=True)
class PreparedCommand:
    """A command ready to run: its argv (sandboxed unless allowed otherwise), its
    scrubbed environment, and a note for the model when it runs unsandboxed."""

    argv: list[str]
    env: dict[str, str]
    note: str = ""


async def prepare_command(
    command: str,
    *,
    root: Path,
    repo_root: Path,
    writable: bool,
    environ: Mapping[str, str],
    allow_unsandboxed: bool,
    probe: SandboxProbe,
    settings: Settings | None = None,
) -> PreparedCommand | str:
    """How `command` runs in `root`, or why it cannot (the sandbox is unavailable and
    unsandboxed commands are not allowed).

    The sandbox shows the repository's git directory read-only and, with `settings`,
    the folders `[worktree] link` linked and the `[sandbox] read_paths`; nothing else of
    the user's. Even unsandboxed, the environment is scrubbed."""
    status = await probe()
    worktree = root if writable else None
    if settings is not None:
        readable = await sandbox_read_paths(
            worktree=worktree, checkout=repo_root, settings=settings, environ=environ
        )
    else:
        readable = await anyio.to_thread.run_sync(git_read_paths, repo_root, worktree)
    policy = SandboxPolicy(
        writable=[root] if writable else [],
        readable=readable,
        priority=settings.agent_priority if settings is not None else "background",
    )
    env = scrubbed_env(environ, policy)
    if status.available:
        argv = await anyio.to_thread.run_sync(partial(sandboxed_argv, command, policy, cwd=root))
        return PreparedCommand(argv, env)
    if allow_unsandboxed and writable:
        note = "[ran unsandboxed: the sandbox is unavailable]\n"
        return PreparedCommand(unsandboxed_argv(command, policy.priority), env, note)
    return (
        f"run_command is unavailable: commands run sandboxed and the sandbox is "
        f"unavailable ({status.reason}); the user can install bubblewrap or set "
        f"allow_unsandboxed_commands = true"
    )


async def run_command(
    command: str,
    *,
    root: Path,
    repo_root: Path,
    writable: bool,
    environ: Mapping[str, str],
    timeout_seconds: float,
    allow_unsandboxed: bool,
    probe: SandboxProbe,
    max_chars: int,
    settings: Settings | None = None,
) -> tuple[str, bool]:
    """Run `command` in `root` (`prepare_command`); returns (text for the model,
    whether it failed)."""
    prepared = await prepare_command(
        command,
        root=root,
        repo_root=repo_root,
        writable=writable,
        environ=environ,
        allow_unsandboxed=allow_unsandboxed,
        probe=probe,
        settings=settings,
    )
    if isinstance(prepared, str):
        return prepared, True
    argv, env, note = prepared.argv, prepared.env, prepared.note
    collected: list[str] = []

    def collect(_stream: str, line: str) -> None:
        collected.append(line)

    result = await run_streaming(
        argv,
        cwd=root,
        env=env,
        on_output=collect,
        timeout=timeout_seconds,
        max_output_bytes=max_chars,
    )
    if result.truncated:
        # The forwarded lines are the output's beginning; its end (usually where the
        # error is) comes from the tails the process runner kept.
        head = "\n".join(collected)[: max_chars // 2]
        tail = result.stdout_tail[-(max_chars // 3) :]
        if result.stderr_tail.strip():
            tail += "\n[stderr, last lines]\n" + result.stderr_tail[-(max_chars // 6) :]
        body = head + "\n[... output truncated: the middle was not shown ...]\n" + tail
    else:
        body = "\n".join(collected)
    if result.timed_out:
        status_line = f"[timed out after {timeout_seconds:g} s; the command was stopped]"
    else:
        status_line = f"[exit status {result.returncode}]"
    failed = result.timed_out or result.returncode != 0
    text = f"{note}{body.rstrip()}\n{status_line}" if body.strip() else note + status_line
    return truncate_output(text, max_chars), failed
