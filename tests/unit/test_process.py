"""Running agent commands with real processes: output arrives line by line and stays
bounded, exit codes come back, and nothing a command started survives its timeout, its
cancellation or its end."""

from __future__ import annotations

import os
import shlex
import sys
import tracemalloc
import uuid
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from forkyard.tools.process import (
    TAIL_TRUNCATED_MARKER,
    TRUNCATED_LINE,
    ProcessResult,
    run_streaming,
)

PYTHON = shlex.quote(sys.executable)


class Recorder:
    """Collects what `on_output` receives, and lets a test wait for a line."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []
        self._changed = anyio.Event()

    def __call__(self, stream: str, line: str) -> None:
        self.lines.append((stream, line))
        self._changed.set()
        self._changed = anyio.Event()

    def of(self, stream: str) -> list[str]:
        return [line for name, line in self.lines if name == stream]

    async def first_line(self, stream: str) -> str:
        while not self.of(stream):
            await self._changed.wait()
        return self.of(stream)[0]


async def run(
    command: str,
    *,
    recorder: Recorder | None = None,
    timeout: float | None = 20,
    max_output_bytes: int = 1_000_000,
    stdin: bytes | None = None,
    kill_grace_seconds: float = 2.0,
) -> ProcessResult:
    return await run_streaming(
        ["/bin/sh", "-c", command],
        cwd=Path.cwd(),
        env=os.environ,
        on_output=recorder or Recorder(),
        timeout=timeout,
        max_output_bytes=max_output_bytes,
        stdin=stdin,
        kill_grace_seconds=kill_grace_seconds,
    )


def sleeper(marker: str) -> str:
    """A shell word starting a long-running process recognisable by `marker`."""
    return f"{PYTHON} -c 'import time; time.sleep(1000)' {marker}"


def is_running(pid: int, marker: str) -> bool:
    """Whether `pid` is still our sleeper. A zombie no longer runs anything (some inits
    reap lazily), and a pid reused by another process is not ours."""
    try:
        os.kill(pid, 0)
        status = Path(f"/proc/{pid}/status").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (ProcessLookupError, FileNotFoundError):
        return False
    zombie = "\nState:\tZ" in status or "\nState:\tX" in status
    return not zombie and marker.encode() in cmdline.split(b"\0")


async def wait_until_running(pid: int, marker: str, seconds: float = 10) -> None:
    """The shell prints `$!` before the background job has exec'd the sleeper: wait for
    the marker to show in its command line (a loaded machine can take a while)."""
    with anyio.fail_after(seconds):
        while not is_running(pid, marker):  # noqa: ASYNC110 - no event for an exec
            await anyio.sleep(0.02)


async def wait_until_dead(pid: int, marker: str, seconds: float = 10) -> None:
    with anyio.fail_after(seconds):
        # Another process's death raises no event here: poll, boundedly.
        while is_running(pid, marker):  # noqa: ASYNC110
            await anyio.sleep(0.02)


async def test_lines_stream_in_order_per_stream_with_the_partial_last_line() -> None:
    recorder = Recorder()
    script = "for i in 1 2 3 4 5; do echo out$i; echo err$i >&2; done; printf 'no newline'"

    result = await run(script, recorder=recorder)

    assert recorder.of("stdout") == ["out1", "out2", "out3", "out4", "out5", "no newline"]
    assert recorder.of("stderr") == ["err1", "err2", "err3", "err4", "err5"]
    assert result.stdout_tail == "out1\nout2\nout3\nout4\nout5\nno newline\n"
    assert result.stderr_tail == "err1\nerr2\nerr3\nerr4\nerr5\n"
    assert (result.returncode, result.timed_out, result.truncated) == (0, False, False)


async def test_async_callback_receives_every_line() -> None:
    seen: list[str] = []

    async def on_output(stream: str, line: str) -> None:
        await anyio.lowlevel.checkpoint()
        seen.append(f"{stream}:{line}")

    await run_streaming(
        ["/bin/sh", "-c", "seq 1 300"],
        cwd=Path.cwd(),
        env=os.environ,
        on_output=on_output,
        timeout=20,
    )

    assert seen == [f"stdout:{n}" for n in range(1, 301)]


async def test_invalid_utf8_is_replaced_not_fatal() -> None:
    recorder = Recorder()

    await run(r"printf 'caf\351 ok\n'", recorder=recorder)

    assert recorder.of("stdout") == ["caf\ufffd ok"]


async def test_exit_status_and_signal_come_back() -> None:
    assert (await run("exit 3")).returncode == 3
    assert (await run("true")).returncode == 0
    assert (await run("kill -9 $$")).returncode == -9


async def test_stdin_is_fed_and_closed() -> None:
    recorder = Recorder()

    result = await run("cat; echo done", stdin=b"first\nsecond\n", recorder=recorder)

    assert recorder.of("stdout") == ["first", "second", "done"]
    assert result.returncode == 0


async def test_without_stdin_a_reader_sees_end_of_file_instead_of_hanging() -> None:
    result = await run("cat; echo after", timeout=10)

    assert result.timed_out is False
    assert result.stdout_tail == "after\n"


# The guard's own stack walks would count in the traced memory.
@pytest.mark.without_blocking_guard
async def test_ten_megabytes_of_output_stay_bounded_in_memory_and_in_the_log() -> None:
    recorder = Recorder()
    budget = 100_000
    line = "x" * 99
    script = f"{PYTHON} -c 'import sys; sys.stdout.write((\"{line}\\n\") * 100_000)'; echo last"

    tracemalloc.start()
    try:
        result = await run(script, recorder=recorder, max_output_bytes=budget)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak < 3_000_000, f"peak {peak} bytes while 10 MB went through"
    assert result.returncode == 0
    assert result.truncated is True
    forwarded = recorder.of("stdout")
    assert forwarded[-1] == TRUNCATED_LINE
    assert forwarded.count(TRUNCATED_LINE) == 1
    assert sum(len(text) + 1 for text in forwarded[:-1]) <= budget
    assert result.stdout_tail.startswith(TAIL_TRUNCATED_MARKER)
    assert result.stdout_tail.endswith(f"{line}\nlast\n")
    assert len(result.stdout_tail) <= budget + len(TAIL_TRUNCATED_MARKER)


async def test_a_huge_line_without_newline_is_cut_into_pieces() -> None:
    recorder = Recorder()

    result = await run("head -c 300000 /dev/zero | tr '\\0' y", recorder=recorder)

    pieces = recorder.of("stdout")
    assert len(pieces) > 1
    assert "".join(pieces) == "y" * 300_000
    assert result.truncated is False


async def test_timeout_kills_the_whole_process_group_including_a_grandchild() -> None:
    recorder = Recorder()
    marker = f"forkyard-test-{uuid.uuid4()}"

    result = await run(
        f"{sleeper(marker)} & echo $!; {sleeper(marker)}", timeout=1, recorder=recorder
    )

    assert result.timed_out is True
    assert result.returncode < 0
    assert 1 <= result.duration_seconds < 5
    grandchild = int(recorder.of("stdout")[0])
    await wait_until_dead(grandchild, marker)


async def test_a_grandchild_ignoring_sigterm_is_killed_after_the_grace() -> None:
    recorder = Recorder()
    marker = f"forkyard-test-{uuid.uuid4()}"
    script = f"trap '' TERM; {sleeper(marker)} & echo $!; wait"

    with anyio.fail_after(10):
        result = await run(script, timeout=1, recorder=recorder, kill_grace_seconds=0.3)

    assert result.timed_out is True
    await wait_until_dead(int(recorder.of("stdout")[0]), marker)


async def test_cancelling_the_caller_kills_the_group_and_propagates() -> None:
    recorder = Recorder()
    marker = f"forkyard-test-{uuid.uuid4()}"
    outcome: list[str] = []

    async def caller() -> None:
        try:
            await run(f"{sleeper(marker)} & echo $!; {sleeper(marker)}", recorder=recorder)
        except anyio.get_cancelled_exc_class():
            outcome.append("cancelled")
            raise
        outcome.append("returned")

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(caller)
            grandchild = int(await recorder.first_line("stdout"))
            await wait_until_running(grandchild, marker)
            tasks.cancel_scope.cancel()

    assert outcome == ["cancelled"]
    await wait_until_dead(grandchild, marker)


async def test_a_finished_command_does_not_wait_for_or_leave_its_background_jobs() -> None:
    recorder = Recorder()
    marker = f"forkyard-test-{uuid.uuid4()}"

    with anyio.fail_after(10):
        result = await run(f"{sleeper(marker)} & echo $!; echo finished", recorder=recorder)

    assert result.returncode == 0
    assert result.timed_out is False
    assert recorder.of("stdout")[1] == "finished"
    await wait_until_dead(int(recorder.of("stdout")[0]), marker)
