"""Run an agent's command to its end without ever losing control of it.

An agent's command may print gigabytes, hang, or leave daemons behind (`npm run dev &`).
The server must keep answering the chat meanwhile, keep memory flat, and leave nothing
running once the command is over, timed out or cancelled. So every command gets its own
process group (session): when it ends, for whatever reason, the whole group is
terminated, SIGTERM first so well-behaved tools can clean up, SIGKILL after a grace.
A sandboxed command (bwrap) is ended through its PID namespace instead (`sandbox_stop`),
which also holds what the command started in sessions of its own.
"""

from __future__ import annotations

import codecs
import inspect
import os
import signal
import subprocess
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread
from anyio.abc import ByteReceiveStream, ByteSendStream, Process

from forkyard.tools.sandbox_stop import SandboxInfo, stop_sandbox

OutputCallback = Callable[[str, str], Awaitable[None] | None]

#: The one line forwarded once the output budget is spent.
TRUNCATED_LINE = "[output truncated]"
#: Prefixed to a tail that lost its beginning.
TAIL_TRUNCATED_MARKER = "[... earlier output truncated ...]\n"

DEFAULT_KILL_GRACE_SECONDS = 2.0
#: A line longer than this (a progress bar drawn with \r, a minified file) is forwarded
#: in pieces, so a single line can never grow without bound in memory.
MAX_LINE_CHARS = 64 * 1024
#: After the command's main process exits, how long its output may keep draining. Only a
#: process that escaped the group (its own `setsid`) can hold the pipes open that long.
DRAIN_SECONDS = 2.0
_READ_CHUNK_BYTES = 64 * 1024
_GROUP_POLL_SECONDS = 0.02


@dataclass(frozen=True)
class ProcessResult:
    """How a command ended. A negative `returncode` is the signal that ended it."""

    returncode: int
    timed_out: bool
    stdout_tail: str
    stderr_tail: str
    truncated: bool
    duration_seconds: float


async def run_streaming(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    on_output: OutputCallback,
    timeout: float | None,
    max_output_bytes: int = 1_000_000,
    stdin: bytes | None = None,
    kill_grace_seconds: float = DEFAULT_KILL_GRACE_SECONDS,
) -> ProcessResult:
    """Run `argv` in its own process group, streaming its output line by line.

    `on_output(stream, line)` (stream: "stdout" or "stderr", line without its newline)
    sees lines in order within each stream, until `max_output_bytes` of both streams
    together have been forwarded; then it gets one `TRUNCATED_LINE` and nothing more,
    while the output keeps being drained so the command never blocks on a full pipe. The
    result keeps the last `max_output_bytes` of each stream.

    Whatever ends the run, the main process exiting, the timeout or the cancellation of
    the calling task, nothing of the process group survives it. Cancellation is re-raised
    once the group is gone. An exception raised by `on_output` stops the command the same
    way and propagates (inside an ExceptionGroup, as anyio task groups do).
    """
    started = anyio.current_time()
    output = _OutputCollector(on_output, max_output_bytes)
    stdin_mode = subprocess.PIPE if stdin is not None else subprocess.DEVNULL
    process, info = await start_process(argv, cwd=cwd, env=env, stdin=stdin_mode)
    stop = Stopper(process, info, kill_grace_seconds)
    try:
        with anyio.move_on_after(timeout) as deadline:
            await _supervise(process, output, stdin, stop)
    finally:
        with anyio.CancelScope(shield=True):
            await stop()
            await process.aclose()
    returncode = process.returncode
    return ProcessResult(
        returncode=returncode if returncode is not None else -signal.SIGKILL,
        timed_out=deadline.cancelled_caught,
        stdout_tail=output.tails["stdout"].text(),
        stderr_tail=output.tails["stderr"].text(),
        truncated=output.truncated,
        duration_seconds=anyio.current_time() - started,
    )


async def start_process(
    argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], stdin: int
) -> tuple[Process, SandboxInfo | None]:
    """`argv` started in its own session, stdout and stderr piped; for a sandboxed
    command, with bwrap's `--info-fd`, which says which host process is its PID
    namespace's init (so that the whole sandbox can be ended)."""
    argv = list(argv)
    info: SandboxInfo | None = None
    pass_fds: tuple[int, ...] = ()
    if is_bwrap(argv):
        read_end, write_end = os.pipe()
        info = SandboxInfo(read_end)
        argv[1:1] = ["--info-fd", str(write_end)]
        pass_fds = (write_end,)
    try:
        # Shielded: a cancel landing while the process is being created would leave it
        # running without a handle (asyncio kills only bwrap itself, not its sandbox).
        # The cancel takes effect right after, with the process under supervision.
        with anyio.CancelScope(shield=True):
            process = await anyio.open_process(
                argv,
                cwd=cwd,
                env=dict(env),
                stdin=stdin,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                pass_fds=pass_fds,
            )
    except BaseException:
        if info is not None:
            info.close()
        raise
    finally:
        for fd in pass_fds:
            os.close(fd)
    return process, info


def is_bwrap(argv: Sequence[str]) -> bool:
    return bool(argv) and Path(argv[0]).name == "bwrap"


class Stopper:
    """Ends what the command started, once or as often as asked: its sandbox's PID
    namespace when it has one, then its process group."""

    def __init__(self, process: Process, info: SandboxInfo | None, grace: float) -> None:
        self._process = process
        self._info = info
        self._grace = grace

    async def __call__(self) -> None:
        grace = self._grace
        if self._info is not None and await stop_sandbox(self._info, grace, self._process.pid):
            grace = 0  # the namespace had its grace; what is left is bwrap itself
        await terminate_process_group(self._process.pid, grace)


async def terminate_process_group(
    pgid: int, grace_seconds: float = DEFAULT_KILL_GRACE_SECONDS
) -> None:
    """SIGTERM every process of the group, wait up to `grace_seconds` for the group to
    empty, then SIGKILL whatever is left. Returns at once if the group is already gone.

    Waiting polls the group (in a worker thread, it reads /proc): Unix offers no
    notification for a group emptying, and the members are not our children."""
    if not _signal_group(pgid, signal.SIGTERM):
        return
    with anyio.move_on_after(grace_seconds):
        # No event exists for a group emptying (see above): polling is the only way.
        while await anyio.to_thread.run_sync(_group_has_live_members, pgid):  # noqa: ASYNC110
            await anyio.sleep(_GROUP_POLL_SECONDS)
        return
    _signal_group(pgid, signal.SIGKILL)


def _group_has_live_members(pgid: int) -> bool:
    """Whether a process of the group is still running. Dead members the kernel still
    counts (zombies waiting for an init that reaps lazily, as in many containers) do not
    count: they run nothing and hold nothing open."""
    if not _signal_group(pgid, 0):
        return False
    try:
        entries = os.listdir("/proc")
    except OSError:
        return True  # no procfs: only the kernel's answer is left
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_bytes()
        except OSError:
            continue  # exited meanwhile
        # "pid (comm) state ppid pgrp ...": comm may contain anything, even ") ".
        state, _ppid, pgrp = stat[stat.rindex(b")") + 2 :].split(b" ", 3)[:3]
        if int(pgrp) == pgid and state not in (b"Z", b"X"):
            return True
    return False


def _signal_group(pgid: int, signum: int) -> bool:
    """Send `signum` to the group; False when the group no longer exists."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    except PermissionError:
        # A member changed its credentials (setuid); it is not ours to stop, but the
        # group still exists.
        return True
    return True


async def _supervise(
    process: Process,
    output: _OutputCollector,
    stdin: bytes | None,
    stop: Callable[[], Awaitable[None]],
) -> None:
    """Pump the output until the main process has exited and its output is drained.

    The main process exiting ends the run even if background processes it left hold the
    pipes open: those are terminated, and their output drained for a bounded time."""
    assert process.stdout is not None
    assert process.stderr is not None
    stdout, stderr = process.stdout, process.stderr
    drained = anyio.Event()

    async def read_both_streams() -> None:
        async with anyio.create_task_group() as readers:
            readers.start_soon(output.pump, "stdout", stdout)
            readers.start_soon(output.pump, "stderr", stderr)
        drained.set()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(read_both_streams)
        if stdin is not None and process.stdin is not None:
            tasks.start_soon(_feed_stdin, process.stdin, stdin)
        await wait_for_exit(process)
        await stop()
        with anyio.move_on_after(DRAIN_SECONDS):
            await drained.wait()
        tasks.cancel_scope.cancel()


async def wait_for_exit(process: Process) -> None:
    """Wait for the main process to exit, without waiting for its pipes to close as
    `Process.wait()` does on asyncio (a leftover background process would hold them)."""
    try:
        pidfd = os.pidfd_open(process.pid)
    except ProcessLookupError:
        return  # already exited and reaped
    except (AttributeError, OSError):
        # No pidfd (not Linux, or a kernel before 5.3): the return code appears as soon
        # as the child watcher has reaped the process.
        while process.returncode is None:  # noqa: ASYNC110 (no event to wait for)
            await anyio.sleep(_GROUP_POLL_SECONDS)
        return
    try:
        await anyio.wait_readable(pidfd)
    finally:
        os.close(pidfd)


async def _feed_stdin(stream: ByteSendStream, data: bytes) -> None:
    """Write `data` and close stdin; a command that exits without reading is fine."""
    try:
        await stream.send(data)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
        pass
    finally:
        await stream.aclose()


class _Tail:
    """The last `limit` bytes of a stream's lines, for the result and error messages."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._lines: deque[tuple[str, int]] = deque()
        self._size = 0
        self.dropped = False

    def add(self, line: str) -> None:
        size = len(line.encode("utf-8", errors="replace")) + 1
        self._lines.append((line, size))
        self._size += size
        while self._size > self._limit and len(self._lines) > 1:
            _, dropped_size = self._lines.popleft()
            self._size -= dropped_size
            self.dropped = True
        if self._size > self._limit:
            # One line longer than the whole budget: keep its end.
            keep = max(self._limit - 1, 0)
            cut = line[-keep:] if keep else ""
            self._lines[0] = (cut, len(cut.encode("utf-8", errors="replace")) + 1)
            self._size = self._lines[0][1]
            self.dropped = True

    def text(self) -> str:
        body = "".join(line + "\n" for line, _ in self._lines)
        return TAIL_TRUNCATED_MARKER + body if self.dropped else body


class _OutputCollector:
    """Splits both streams into lines, forwards them within one shared byte budget,
    and keeps a bounded tail of each."""

    def __init__(self, on_output: OutputCallback, max_output_bytes: int) -> None:
        self._on_output = on_output
        self._budget = max_output_bytes
        self._forwarding = True
        self.tails = {name: _Tail(max_output_bytes) for name in ("stdout", "stderr")}

    @property
    def truncated(self) -> bool:
        return not self._forwarding or any(tail.dropped for tail in self.tails.values())

    async def pump(self, name: str, stream: ByteReceiveStream) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pending = ""
        while True:
            try:
                chunk = await stream.receive(_READ_CHUNK_BYTES)
            except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
                break
            pending += decoder.decode(chunk)
            *lines, pending = pending.split("\n")
            for line in lines:
                await self._line(name, line)
            while len(pending) > MAX_LINE_CHARS:
                await self._line(name, pending[:MAX_LINE_CHARS])
                pending = pending[MAX_LINE_CHARS:]
        pending += decoder.decode(b"", final=True)
        if pending:
            await self._line(name, pending)

    async def _line(self, name: str, line: str) -> None:
        line = line.removesuffix("\r")
        self.tails[name].add(line)
        if not self._forwarding:
            return
        size = len(line.encode("utf-8", errors="replace")) + 1
        if size > self._budget:
            self._forwarding = False
            line = TRUNCATED_LINE
        else:
            self._budget -= size
        delivered = self._on_output(name, line)
        if inspect.isawaitable(delivered):
            await delivered
