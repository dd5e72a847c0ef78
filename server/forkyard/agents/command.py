"""The `command` backend: the task is a shell command run in the agent's worktree,
sandboxed. It needs no model, which makes it what works out of the box."""

from __future__ import annotations

from functools import partial

import anyio.to_thread

from forkyard.agents.base import AgentContext, Availability, RunOutcome
from forkyard.settings import Settings
from forkyard.tools.process import run_streaming
from forkyard.tools.sandbox import (
    SandboxPolicy,
    probe_sandbox,
    sandboxed_argv,
    scrubbed_env,
    unsandboxed_argv,
)
from forkyard.workspace.sandbox_view import sandbox_read_paths

PROGRESS_LINE_CHARS = 120
SUMMARY_TAIL_LINES = 5


class CommandBackend:
    name = "command"

    async def availability(self, settings: Settings) -> Availability:
        status = await probe_sandbox()
        if status.available or settings.allow_unsandboxed_commands:
            return Availability(True)
        return Availability(
            False,
            f"commands run sandboxed and the sandbox is unavailable ({status.reason}); "
            "install bubblewrap, or set allow_unsandboxed_commands = true",
        )

    async def run(self, context: AgentContext, instruction: str) -> RunOutcome:
        status = await probe_sandbox()
        # The sandbox shows nothing of the user's but what the agent needs: for a
        # worktree agent the repository's git directory (read-only) and what `[worktree]
        # link` linked, never the rest of the checkout; an explorer's checkout
        # read-only. The server's own variables for the agent (its ports) pass as well.
        readable = await sandbox_read_paths(
            worktree=context.cwd if context.writable else None,
            checkout=context.repo_root,
            settings=context.settings,
            environ=context.environ,
        )
        policy = SandboxPolicy(
            writable=[context.cwd] if context.writable else [],
            readable=readable,
            extra_env=context.extra_env,
            priority=context.settings.agent_priority,
        )
        env = scrubbed_env(context.environ, policy)
        if status.available:
            argv = await anyio.to_thread.run_sync(
                partial(sandboxed_argv, instruction, policy, cwd=context.cwd)
            )
        elif context.settings.allow_unsandboxed_commands and context.writable:
            await context.log("system", "bubblewrap is unavailable: running unsandboxed")
            argv = unsandboxed_argv(instruction, policy.priority)
        else:
            return RunOutcome(
                ok=False,
                summary="",
                error=f"cannot run the command: the sandbox is unavailable ({status.reason})",
            )
        await context.log("command", f"$ {instruction}")
        context.progress(f"$ {instruction}"[:PROGRESS_LINE_CHARS])

        async def on_output(stream: str, line: str) -> None:
            await context.log(stream, line)
            if line.strip():
                context.progress(line.strip()[:PROGRESS_LINE_CHARS])

        result = await run_streaming(
            argv,
            cwd=context.cwd,
            env=env,
            on_output=on_output,
            timeout=context.settings.command_timeout_seconds,
        )
        # Many tools (unittest, compilers) report on stderr: fall back to it.
        tail = _last_lines(result.stdout_tail, SUMMARY_TAIL_LINES) or _last_lines(
            result.stderr_tail, SUMMARY_TAIL_LINES
        )
        if result.timed_out:
            return RunOutcome(
                ok=False,
                summary=tail,
                error=f"timed out after {context.settings.command_timeout_seconds:g} s",
            )
        if result.returncode != 0:
            reason = _last_lines(result.stderr_tail, SUMMARY_TAIL_LINES) or tail
            return RunOutcome(
                ok=False,
                summary=tail,
                error=f"exit status {result.returncode}" + (f": {reason}" if reason else ""),
            )
        summary = f"`{instruction}` exited 0"
        return RunOutcome(ok=True, summary=summary + (f"\n{tail}" if tail else ""))


def _last_lines(text: str, count: int) -> str:
    return "\n".join(line for line in text.strip().splitlines()[-count:])
