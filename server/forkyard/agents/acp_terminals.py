"""The terminals an ACP agent asks us for (`terminal/*`): each a command run in the
background, sandboxed exactly as the built-in agent's `run_command` (`prepare_command`),
its output kept bounded for the agent to read.

A terminal lives in the agent run's task group: releasing or killing it, the run
ending, or the agent being cancelled, ends its command and all it started.
"""

from __future__ import annotations

import itertools
import shlex
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import anyio
import anyio.to_thread
from acp import RequestError
from acp.schema import TerminalExitStatus, TerminalOutputResponse, WaitForTerminalExitResponse
from anyio.abc import TaskGroup

from forkyard.agents.base import AgentContext
from forkyard.tools.command_tool import PreparedCommand, prepare_command
from forkyard.tools.process import run_streaming
from forkyard.tools.sandbox import probe_sandbox

#: Output kept per terminal when the agent names no limit.
DEFAULT_OUTPUT_BYTES = 1_000_000
MAX_TERMINALS = 16
INVALID_PARAMS = -32602


@dataclass
class Terminal:
    command: str
    limit: int
    #: The output's last lines, and their size in bytes (kept within `limit`).
    lines: deque[str] = field(default_factory=deque)
    size: int = 0
    truncated: bool = False
    exit_code: int | None = None
    signal: str | None = None
    done: anyio.Event = field(default_factory=anyio.Event)
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)

    def add(self, line: str) -> None:
        """Keep the end of the output: older lines go once the limit is passed (each
        line costs its own size, never the whole output's)."""
        line = line + "\n"
        if len(line) > self.limit:
            line = line[-self.limit :]
        self.lines.append(line)
        self.size += len(line.encode(errors="replace"))
        while self.size > self.limit and len(self.lines) > 1:
            self.size -= len(self.lines.popleft().encode(errors="replace"))
            self.truncated = True

    @property
    def output(self) -> str:
        return "".join(self.lines)


class Terminals:
    """One agent run's terminals."""

    def __init__(self, context: AgentContext, root: Path, group: TaskGroup) -> None:
        self.context = context
        self.root = root
        self.group = group
        self._terminals: dict[str, Terminal] = {}
        self._ids = itertools.count(1)

    async def create(
        self, command: str, args: list[str], cwd: str | None, limit: int | None
    ) -> str:
        if len(self._terminals) >= MAX_TERMINALS:
            raise RequestError(INVALID_PARAMS, f"at most {MAX_TERMINALS} terminals at once")
        if cwd is not None and not PurePosixPath(cwd).is_relative_to(self.root):
            resolved = await anyio.to_thread.run_sync(self.root.resolve)
            if not PurePosixPath(cwd).is_relative_to(resolved):
                raise RequestError(INVALID_PARAMS, f"{cwd} is outside this agent's directory")
        line = shlex.join([command, *args]) if args else command
        settings = self.context.settings
        prepared = await prepare_command(
            line,
            root=self.root,
            repo_root=self.context.repo_root,
            writable=self.context.writable,
            environ=self.context.environ,
            allow_unsandboxed=settings.allow_unsandboxed_commands,
            probe=probe_sandbox,
            settings=settings,
        )
        if isinstance(prepared, str):
            raise RequestError(INVALID_PARAMS, prepared)
        terminal_id = f"term-{next(self._ids)}"
        terminal = Terminal(line, limit or DEFAULT_OUTPUT_BYTES)
        self._terminals[terminal_id] = terminal
        self.group.start_soon(self._run, terminal, prepared)
        return terminal_id

    async def _run(self, terminal: Terminal, prepared: PreparedCommand) -> None:
        try:
            with terminal.scope:
                result = await run_streaming(
                    prepared.argv,
                    cwd=self.root,
                    env=prepared.env,
                    on_output=lambda _stream, line: terminal.add(line),
                    timeout=self.context.settings.command_timeout_seconds,
                    max_output_bytes=terminal.limit,
                )
                if result.returncode < 0:
                    terminal.signal = f"signal {-result.returncode}"
                else:
                    terminal.exit_code = result.returncode
            if terminal.scope.cancelled_caught:
                terminal.signal = "SIGKILL"
        finally:
            terminal.done.set()

    def _get(self, terminal_id: str) -> Terminal:
        terminal = self._terminals.get(terminal_id)
        if terminal is None:
            raise RequestError(INVALID_PARAMS, f"no terminal {terminal_id!r}")
        return terminal

    def output(self, terminal_id: str) -> TerminalOutputResponse:
        terminal = self._get(terminal_id)
        status = (
            TerminalExitStatus(exit_code=terminal.exit_code, signal=terminal.signal)
            if terminal.done.is_set()
            else None
        )
        return TerminalOutputResponse(
            output=terminal.output, truncated=terminal.truncated, exit_status=status
        )

    async def wait(self, terminal_id: str) -> WaitForTerminalExitResponse:
        terminal = self._get(terminal_id)
        await terminal.done.wait()
        return WaitForTerminalExitResponse(exit_code=terminal.exit_code, signal=terminal.signal)

    def kill(self, terminal_id: str) -> None:
        self._get(terminal_id).scope.cancel()

    def release(self, terminal_id: str) -> None:
        self._get(terminal_id).scope.cancel()
        del self._terminals[terminal_id]
