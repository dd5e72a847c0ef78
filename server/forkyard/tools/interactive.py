"""A program the server talks with for as long as it runs (an ACP agent over stdio),
under the same guarantees as a command run to its end (`process.run_streaming`).

The caller gets the program's stdin and stdout as byte streams; its stderr goes line by
line to a callback, bounded. However the conversation ends (the caller leaves the
context, raises, or is cancelled), nothing the program started survives it: its sandbox's
PID namespace, then its process group, are ended, SIGTERM first.
"""

from __future__ import annotations

import codecs
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.abc
from anyio.abc import ByteReceiveStream, ByteSendStream, Process

from forkyard.tools.process import (
    DEFAULT_KILL_GRACE_SECONDS,
    Stopper,
    start_process,
    wait_for_exit,
)

LineCallback = Callable[[str], Awaitable[None]]

#: Of stderr, at most this much is passed on (the rest is read and dropped).
MAX_STDERR_BYTES = 1_000_000
MAX_STDERR_LINE_CHARS = 8192


@dataclass
class Conversation:
    """The running program: write to `stdin`, read `stdout`; `exited` is set when its
    main process is gone."""

    process: Process
    stdin: ByteSendStream
    stdout: ByteReceiveStream
    exited: anyio.Event = field(default_factory=anyio.Event)

    @property
    def returncode(self) -> int | None:
        return self.process.returncode


@asynccontextmanager
async def open_conversation(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    on_stderr: LineCallback,
    kill_grace_seconds: float = DEFAULT_KILL_GRACE_SECONDS,
) -> AsyncIterator[Conversation]:
    """Start `argv` in its own session and yield its conversation; end it on exit."""
    process, info = await start_process(argv, cwd=cwd, env=env, stdin=subprocess.PIPE)
    assert process.stdin is not None and process.stdout is not None
    assert process.stderr is not None
    conversation = Conversation(process, process.stdin, process.stdout)
    stop = Stopper(process, info, kill_grace_seconds)
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(_pump_lines, process.stderr, on_stderr)
            group.start_soon(_note_exit, conversation)
            try:
                yield conversation
            finally:
                group.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await stop()
            await process.aclose()


async def _note_exit(conversation: Conversation) -> None:
    await wait_for_exit(conversation.process)
    conversation.exited.set()


async def _pump_lines(stream: ByteReceiveStream, on_line: LineCallback) -> None:
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending, budget = "", MAX_STDERR_BYTES
    while True:
        try:
            chunk = await stream.receive(65536)
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            break
        pending += decoder.decode(chunk)
        *lines, pending = pending.split("\n")
        if len(pending) > MAX_STDERR_LINE_CHARS:
            lines.append(pending)
            pending = ""
        for raw in lines:
            line = raw.removesuffix("\r")[:MAX_STDERR_LINE_CHARS]
            budget -= len(line) + 1
            if budget >= 0:
                await on_line(line)
    if pending and budget > 0:
        await on_line(pending[:MAX_STDERR_LINE_CHARS])
