"""Ending a bwrap sandbox and everything in it, however early or late the end comes.

Killing bwrap's process group is not enough: the sandbox's first process (its init, pid
1 of its PID namespace) sits in a session of its own, and its "die with parent" is set a
moment after it exists, so a cancel that lands right after the start used to leave the
command running under the host's init. bwrap tells, on `--info-fd`, the host pid of that
init and the namespace's inode before it lets the command start; killing the init
kills the whole namespace (the kernel's rule for a PID namespace whose init dies). So:
read that (waiting for it if the cancel came first), SIGTERM the namespace's processes
for the grace, then SIGKILL its init through a pidfd, which cannot hit a reused pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from pathlib import Path

import anyio
import anyio.to_thread

#: bwrap writes its info within milliseconds of starting; this only bounds a wedged one.
INFO_TIMEOUT_SECONDS = 10.0
#: After SIGKILL of the init, how long the kernel may take to empty the namespace.
KILL_WAIT_SECONDS = 5.0
_READ_CHUNK_BYTES = 4096


class SandboxInfo:
    """The read end of bwrap's `--info-fd`, and what it said once read to its end."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self._fd: int | None = fd
        self._data = b""
        self.child_pid: int | None = None
        self.pid_namespace: int | None = None

    async def read(self) -> None:
        """Read until bwrap closes its end (it does right after writing), bounded.
        Without the info (bwrap failed before making the namespace) the fields stay
        None: then there is no namespace to end."""
        with anyio.move_on_after(INFO_TIMEOUT_SECONDS):
            while self._fd is not None:
                try:
                    chunk = os.read(self._fd, _READ_CHUNK_BYTES)
                except BlockingIOError:
                    await anyio.wait_readable(self._fd)
                    continue
                if not chunk:
                    self.close()
                    break
                self._data += chunk
        self.close()
        try:
            info = json.loads(self._data or b"{}")
        except ValueError:
            return
        if isinstance(info, dict):
            pid, namespace = info.get("child-pid"), info.get("pid-namespace")
            self.child_pid = pid if isinstance(pid, int) and pid > 0 else None
            self.pid_namespace = namespace if isinstance(namespace, int) else None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


async def stop_sandbox(info: SandboxInfo, grace_seconds: float, bwrap_pid: int) -> bool:
    """End the sandbox's PID namespace: SIGTERM its processes, wait up to
    `grace_seconds` for its command to exit, then SIGKILL its init and wait (bounded)
    for the namespace to empty. False when there was no namespace to end (bwrap never
    made one, or it is gone already): the caller then falls back to the process group."""
    await info.read()
    if info.child_pid is None or info.pid_namespace is None:
        return False
    try:
        pidfd = os.pidfd_open(info.child_pid)
    except OSError:
        return False  # the init exited: the namespace died with it
    try:
        ours = await anyio.to_thread.run_sync(_ours, info.child_pid, info.pid_namespace, bwrap_pid)
        if not ours:
            return False  # the pid was reused: the namespace is long gone
        members = await anyio.to_thread.run_sync(_namespace_members, info.pid_namespace)
        if grace_seconds > 0 and any(pid != info.child_pid for pid in members):
            for pid in members:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGTERM)
            with anyio.move_on_after(grace_seconds):
                await anyio.wait_readable(pidfd)
                return True
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        with anyio.move_on_after(KILL_WAIT_SECONDS):
            await anyio.wait_readable(pidfd)
        return True
    finally:
        os.close(pidfd)


def _namespace_id(pid: int) -> int | None:
    try:
        link = os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None
    # "pid:[4026532182]"
    digits = link.partition("[")[2].rstrip("]")
    return int(digits) if digits.isdigit() else None


def _ours(pid: int, namespace: int, bwrap_pid: int) -> bool:
    """Whether `pid` is still the sandbox's init: in its namespace, or (where the link
    cannot be read) still the child of the bwrap we started, which we have not reaped,
    so its pid cannot have been reused."""
    if _namespace_id(pid) == namespace:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    fields = stat[stat.rindex(b")") + 2 :].split()
    return fields[0] not in (b"Z", b"X") and int(fields[1]) == bwrap_pid


def _namespace_members(namespace: int) -> list[int]:
    """Host pids of the processes in the PID namespace `namespace` (which reading
    /proc is the only way to learn). Blocking: run it in a worker thread."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _namespace_id(int(entry)) == namespace:
            members.append(int(entry))
    return members
