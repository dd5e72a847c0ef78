"""Helpers shared by the tests: real git repositories in temporary directories."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

#: A git environment that ignores the machine's global and system config, so that tests
#: behave the same on a developer's machine and in CI.
GIT_ENV = {
    **os.environ,
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "Forkyard Tests",
    "GIT_AUTHOR_EMAIL": "tests@forkyard.invalid",
    "GIT_COMMITTER_NAME": "Forkyard Tests",
    "GIT_COMMITTER_EMAIL": "tests@forkyard.invalid",
}


def git(repo: Path, *args: str) -> str:
    """Run git in `repo` and return its stdout; raise with stderr on failure."""
    done = subprocess.run(
        ["git", *args], cwd=repo, env=GIT_ENV, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {done.stderr}")
    return done.stdout


def make_repo(root: Path, files: dict[str, str] | None = None) -> Path:
    """A git repository at `root` with one commit holding `files` (path -> text)."""
    root.mkdir(parents=True, exist_ok=True)
    git(root, "init", "-q", "-b", "main")
    for path, text in (files or {"README.md": "# sample\n"}).items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "initial")
    return root


async def process_running(pattern: str) -> bool:
    """Whether any process's command line matches `pattern` (pgrep -f)."""
    import anyio

    done = await anyio.run_process(["pgrep", "-f", pattern], check=False)
    return done.returncode == 0


async def wait_for_no_process(pattern: str, timeout: float = 10) -> bool:
    """Wait until no process matches `pattern`. The kernel offers no event for "some
    process exited" that we could wait on here, so this polls, every 50 ms."""
    import anyio

    with anyio.move_on_after(timeout):
        while await process_running(pattern):  # noqa: ASYNC110 - see docstring
            await anyio.sleep(0.05)
        return True
    return False


def processes_with(marker: str) -> list[int]:
    """Host pids of live processes whose command line holds `marker` anywhere (bwrap,
    the shell, the command): a sandbox's PID namespace hides them from the command,
    not from the host. Zombies run nothing and do not count. Blocking: reads /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path("/proc", entry, "cmdline").read_bytes()
            stat = Path("/proc", entry, "stat").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline and stat[stat.rindex(b")") + 2 :][:1] not in b"ZX":
            found.append(int(entry))
    return found


async def wait_for_processes_with(marker: str, count: int, seconds: float = 15) -> list[int]:
    """Wait (bounded) until exactly `count` live processes carry `marker`; return the
    pids seen last, so a failing assertion shows them. Processes of another PID
    namespace raise no event here, so this polls /proc, every 50 ms."""
    import anyio
    import anyio.to_thread

    with anyio.move_on_after(seconds):
        while len(await anyio.to_thread.run_sync(processes_with, marker)) != count:  # noqa: ASYNC110
            await anyio.sleep(0.05)
    return await anyio.to_thread.run_sync(processes_with, marker)


async def kill_daemon(env: dict[str, str]) -> int:
    """SIGKILL the daemon of the environment's state directory (as an OOM killer would)
    and return once it is gone (on its pidfd). Returns its pid."""
    import signal

    import anyio

    from forkyard.daemon.paths import DaemonPaths, read_pid

    pid = read_pid(DaemonPaths(Path(env["FORKYARD_STATE_DIR"])))
    assert pid is not None, "no daemon runs for this state directory"
    fd = os.pidfd_open(pid)
    try:
        os.kill(pid, signal.SIGKILL)
        with anyio.fail_after(10):
            await anyio.wait_readable(fd)
    finally:
        os.close(fd)
    return pid
