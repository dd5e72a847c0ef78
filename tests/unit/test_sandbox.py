"""The bubblewrap sandbox, with real bwrap: an agent's command writes its worktree and
nothing else, sees a private /tmp, reaches no network, not even the host's 127.0.0.1,
and never sees the server's secrets."""

from __future__ import annotations

import os
import shlex
import socket
import sys
import uuid
from collections.abc import Iterator, Mapping
from functools import partial
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from forkyard.tools.process import ProcessResult, run_streaming
from forkyard.tools.sandbox import (
    DEFAULT_ENV_ALLOWLIST,
    SANDBOX_HOME,
    SandboxPolicy,
    sandboxed_argv,
    scrubbed_env,
    unsandboxed_argv,
)
from tests.helpers import git, make_repo

pytestmark = pytest.mark.usefixtures("working_bwrap")


PYTHON = shlex.quote(sys.executable)
SECRET = "sk-test-secret"


@pytest.fixture
def worktree(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "worktree", {"README.md": "# agent's copy\n"})


@pytest.fixture
def localhost_server() -> Iterator[int]:
    """A port on the host's 127.0.0.1 that accepts connections (the kernel completes
    them from the listen backlog)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server.getsockname()[1]


class Output:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, stream: str, line: str) -> None:
        self.lines.append(f"{stream}: {line}")


async def sandboxed(
    command: str,
    policy: SandboxPolicy,
    *,
    cwd: Path,
    environ: Mapping[str, str] | None = None,
) -> ProcessResult:
    """Run `command` sandboxed the way the server does: argv built with the environment
    to pass, bwrap itself started with the scrubbed one."""
    environ = os.environ if environ is None else environ
    return await run_streaming(
        sandboxed_argv(command, policy, cwd=cwd, env=environ),
        cwd=cwd,
        env=scrubbed_env(environ, policy),
        on_output=Output(),
        timeout=30,
    )


async def test_a_command_writes_in_its_writable_worktree(worktree: Path) -> None:
    policy = SandboxPolicy(writable=[worktree])

    result = await sandboxed("echo written > out.txt && pwd", policy, cwd=worktree)

    assert result.returncode == 0, result.stderr_tail
    assert result.stdout_tail == f"{worktree}\n"
    assert (worktree / "out.txt").read_text() == "written\n"


async def test_writes_outside_the_worktree_fail_and_leave_nothing(
    worktree: Path, tmp_path: Path
) -> None:
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / "app.py").write_text("original\n")
    in_home = Path.home() / f"forkyard-sandbox-{uuid.uuid4()}"
    policy = SandboxPolicy(writable=[worktree])
    try:
        attempts = {
            "new file in the user's checkout": f"echo x > {checkout}/evil.py",
            "overwrite in the user's checkout": f"echo x > {checkout}/app.py",
            "file in the real home": f"echo x > {in_home}",
        }
        for what, command in attempts.items():
            result = await sandboxed(command, policy, cwd=worktree)
            assert result.returncode != 0, f"{what}: the write succeeded"

        assert sorted(path.name for path in checkout.iterdir()) == ["app.py"]
        assert (checkout / "app.py").read_text() == "original\n"
        assert not in_home.exists()
    finally:
        in_home.unlink(missing_ok=True)


async def test_tmp_is_private_to_the_sandbox(worktree: Path, tmp_path: Path) -> None:
    inside = Path("/tmp") / f"forkyard-sandbox-{uuid.uuid4()}"
    host_note = tmp_path / "host-note.txt"
    host_note.write_text("another agent's scratch\n")
    policy = SandboxPolicy(writable=[worktree])

    written = await sandboxed(f"echo scratch > {inside} && cat {inside}", policy, cwd=worktree)
    peeked = await sandboxed(f"cat {host_note}", policy, cwd=worktree)

    assert written.returncode == 0, written.stderr_tail
    assert written.stdout_tail == "scratch\n"
    assert not inside.exists()
    assert peeked.returncode != 0
    assert "another agent's scratch" not in peeked.stdout_tail


async def test_home_inside_is_writable_for_caches(worktree: Path) -> None:
    policy = SandboxPolicy(writable=[worktree])

    result = await sandboxed(
        'mkdir -p "$HOME/.cache/tool" && echo ok > "$HOME/.cache/tool/x" && echo "$HOME"',
        policy,
        cwd=worktree,
    )

    assert result.returncode == 0, result.stderr_tail
    assert result.stdout_tail == f"{SANDBOX_HOME}\n"


async def test_no_network_not_even_the_hosts_loopback(
    worktree: Path, localhost_server: int
) -> None:
    connect = (
        f'{PYTHON} -c "import socket; '
        f"socket.create_connection(('127.0.0.1', {localhost_server}), 2).close()\""
    )
    policy = SandboxPolicy(writable=[worktree])

    unsandboxed = await run_streaming(
        unsandboxed_argv(connect), cwd=worktree, env=os.environ, on_output=Output(), timeout=30
    )
    inside = await sandboxed(connect, policy, cwd=worktree)
    allowed = await sandboxed(connect, SandboxPolicy([worktree], network=True), cwd=worktree)

    assert unsandboxed.returncode == 0, unsandboxed.stderr_tail
    assert inside.returncode != 0
    assert "Error" in inside.stderr_tail
    assert allowed.returncode == 0, allowed.stderr_tail


async def test_secrets_in_the_server_environment_never_reach_the_command(
    worktree: Path,
) -> None:
    environ = {
        **os.environ,
        "OPENAI_API_KEY": SECRET,
        "ANTHROPIC_API_KEY": SECRET,
        "GITHUB_TOKEN": SECRET,
        "AWS_SECRET_ACCESS_KEY": SECRET,
    }
    policy = SandboxPolicy(writable=[worktree], extra_env={"FORKYARD_PORT": "41000"})

    # Both ways of building the sandbox: the environment given to sandboxed_argv, and
    # bwrap inheriting the scrubbed environment it is started with.
    explicit = await run_streaming(
        sandboxed_argv("env", policy, cwd=worktree, env=environ),
        cwd=worktree,
        env=environ,
        on_output=Output(),
        timeout=30,
    )
    inherited = await run_streaming(
        sandboxed_argv("env", policy, cwd=worktree),
        cwd=worktree,
        env=scrubbed_env(environ, policy),
        on_output=Output(),
        timeout=30,
    )

    for result in (explicit, inherited):
        assert result.returncode == 0, result.stderr_tail
        assert SECRET not in result.stdout_tail
        variables = dict(line.split("=", 1) for line in result.stdout_tail.splitlines())
        assert variables["PATH"] == os.environ["PATH"]
        assert variables["HOME"] == SANDBOX_HOME
        assert variables["FORKYARD_PORT"] == "41000"


async def test_a_secret_the_user_allow_lists_does_pass(worktree: Path) -> None:
    environ = {"PATH": os.environ["PATH"], "OPENAI_API_KEY": SECRET, "NPM_TOKEN": SECRET}
    policy = SandboxPolicy(
        writable=[worktree], env_allowlist=DEFAULT_ENV_ALLOWLIST | {"OPENAI_API_KEY"}
    )

    result = await sandboxed(
        'echo "$OPENAI_API_KEY/$NPM_TOKEN"', policy, cwd=worktree, environ=environ
    )

    assert result.stdout_tail == f"{SECRET}/\n"


def test_scrubbed_env_keeps_only_the_allow_list_and_the_servers_own_values() -> None:
    environ = {
        "PATH": "/usr/bin",
        "HOME": "/home/user",
        "LANG": "C.UTF-8",
        "OPENAI_API_KEY": SECRET,
        "GITLAB_TOKEN": SECRET,
        "DATABASE_URL": "postgres://user:password@db/prod",
        "FORKYARD_PORT": "1",
    }
    policy = SandboxPolicy(writable=[], extra_env={"FORKYARD_PORT": "41000"})

    assert scrubbed_env(environ, policy) == {
        "PATH": "/usr/bin",
        "HOME": "/home/user",
        "LANG": "C.UTF-8",
        "FORKYARD_PORT": "41000",
    }


async def test_hidden_directories_inside_the_worktree_are_empty(worktree: Path) -> None:
    secrets = worktree / ".secrets"
    secrets.mkdir()
    (secrets / "token").write_text(SECRET)
    policy = SandboxPolicy(writable=[worktree], hidden=[secrets])

    result = await sandboxed(
        "ls -A .secrets; echo planted > .secrets/planted; echo visible > kept.txt",
        policy,
        cwd=worktree,
    )

    assert result.returncode == 0, result.stderr_tail
    assert result.stdout_tail == ""
    assert sorted(path.name for path in secrets.iterdir()) == ["token"]
    assert (worktree / "kept.txt").read_text() == "visible\n"


def running_with_marker(marker: str) -> list[int]:
    """Host pids of live processes with `marker` as an argument (the shell and bwrap
    only have it inside a longer one): the sandbox has its own PID namespace, so the
    command cannot tell us its pids."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path("/proc", entry, "cmdline").read_bytes()
            status = Path("/proc", entry, "status").read_text()
        except OSError:
            continue
        if marker.encode() in cmdline.split(b"\0") and "\nState:\tZ" not in status:
            pids.append(int(entry))
    return pids


async def wait_for_marker_count(marker: str, count: int, seconds: float) -> None:
    with anyio.fail_after(seconds):
        # Processes in another PID namespace raise no event here: poll, boundedly.
        while len(await anyio.to_thread.run_sync(running_with_marker, marker)) != count:  # noqa: ASYNC110
            await anyio.sleep(0.02)


async def test_cancelling_a_sandboxed_command_kills_everything_it_started(
    worktree: Path,
) -> None:
    marker = f"forkyard-test-{uuid.uuid4()}"
    sleeper = f"{PYTHON} -c 'import time; time.sleep(1000)' {marker}"
    policy = SandboxPolicy(writable=[worktree])
    argv = sandboxed_argv(f"{sleeper} & {sleeper}", policy, cwd=worktree, env=os.environ)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(
            partial(run_streaming, argv, cwd=worktree, env={}, on_output=Output(), timeout=None)
        )
        await wait_for_marker_count(marker, 2, seconds=10)
        tasks.cancel_scope.cancel()

    await wait_for_marker_count(marker, 0, seconds=10)


async def test_a_read_only_run_sees_its_directory_even_under_tmp(repo: Path) -> None:
    """An explorer's command: cwd is the user's checkout, nothing writable."""
    policy = SandboxPolicy(writable=[])

    read = await sandboxed("cat README.md", policy, cwd=repo)
    write = await sandboxed("echo x > new.txt", policy, cwd=repo)

    assert read.returncode == 0, read.stderr_tail
    assert read.stdout_tail == "# sample\n"
    assert write.returncode != 0
    assert not (repo / "new.txt").exists()


async def test_git_works_in_a_worktree_given_its_repository_read_only(
    repo: Path, tmp_path: Path
) -> None:
    worktree = tmp_path / "agent-worktree"
    git(repo, "worktree", "add", "-q", "-b", "agent", str(worktree))
    head = git(repo, "rev-parse", "HEAD")
    command = "git rev-parse HEAD && git status --short"

    without = await sandboxed(command, SandboxPolicy(writable=[worktree]), cwd=worktree)
    given = await sandboxed(
        command, SandboxPolicy(writable=[worktree], readable=[repo / ".git"]), cwd=worktree
    )

    assert without.returncode != 0
    assert given.returncode == 0, given.stderr_tail
    assert given.stdout_tail == head
