"""A hostile command agent against the real bwrap sandbox, as the server builds it for a
worktree agent: whoever runs the server (root here, as in containers and CI), it gains
no capability, cannot remount or unmount anything, sees no host process, and reads
nothing of the user's but its worktree and the repository's git directory, which it
cannot write. Each test checks the host afterwards, as a user would."""

from __future__ import annotations

import contextlib
import os
import random
import shlex
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from forkyard.agents.command import CommandBackend
from forkyard.settings import BUILTIN_ROLES, SandboxSettings, Settings, WorktreeSettings
from forkyard.tools.process import ProcessResult, run_streaming
from forkyard.tools.sandbox import (
    SandboxPolicy,
    sandboxed_argv,
    scrubbed_env,
)
from forkyard.tools.sandbox_paths import toolchain_dirs
from forkyard.workspace.setup import bring_ignored_files
from tests.fakes.agent_context import FakeAgentContext, Workspace, make_workspace, server_environ
from tests.helpers import GIT_ENV, git, processes_with, wait_for_processes_with

pytestmark = pytest.mark.usefixtures("working_bwrap")


SECRET = "forkyard-attack-secret-2718"


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    """The user's checkout (with an ignored `.env`) and an agent's worktree of it inside
    a state directory that also holds another agent's worktree and the database."""
    workspace = make_workspace(tmp_path)
    (workspace.repo / ".gitignore").write_text(".env\n")
    (workspace.repo / ".env").write_text(f"TOKEN={SECRET}\n")
    state = workspace.state_dir
    (state / "worktrees" / "agent-2").mkdir(parents=True)
    (state / "worktrees" / "agent-2" / "their-work.txt").write_text(SECRET)
    (state / "forkyard.sqlite3").write_text(SECRET)
    return workspace


@pytest.fixture
def secret_in_home() -> Iterator[Path]:
    """A credentials file in the real home, as ~/.aws/credentials would be."""
    folder = Path.home() / f".forkyard-attack-{uuid.uuid4().hex}"
    folder.mkdir()
    (folder / "credentials").write_text(SECRET)
    yield folder / "credentials"
    (folder / "credentials").unlink()
    folder.rmdir()


def context_for(workspace: Workspace, **sandbox: list[str]) -> FakeAgentContext:
    settings = Settings(state_dir=workspace.state_dir, sandbox=SandboxSettings(**sandbox))
    return FakeAgentContext(
        cwd=workspace.worktree,
        repo_root=workspace.repo,
        settings=settings,
        environ=server_environ(),
    )


async def run_agent(context: FakeAgentContext, script: str) -> str:
    """Run `script` as a command agent; return everything it printed."""
    await CommandBackend().run(context, script)
    return context.log_text("stdout", "stderr")


def attempts(named: dict[str, str]) -> str:
    """A script that tries each command and prints `BROKE: name` for each that worked."""
    return "\n".join(
        f"if ( {command} ) >/dev/null 2>&1; then echo {shlex.quote('BROKE: ' + name)}; fi"
        for name, command in named.items()
    )


def host_files(workspace: Workspace) -> dict[str, bytes]:
    git_dir = workspace.repo / ".git"
    return {
        "config": (git_dir / "config").read_bytes(),
        "worktree .git": (workspace.worktree / ".git").read_bytes(),
        "hooks": b"\n".join(sorted(p.name.encode() for p in (git_dir / "hooks").iterdir())),
        "HEAD": git(workspace.repo, "rev-parse", "HEAD").encode(),
        "branch": git(workspace.repo, "symbolic-ref", "HEAD").encode(),
    }


async def test_root_gets_no_capability_and_no_namespace_of_its_own(
    workspace: Workspace,
) -> None:
    output = await run_agent(
        context_for(workspace),
        "grep -E '^Cap(Eff|Prm|Bnd|Amb)' /proc/self/status\n"
        + attempts(
            {
                "new user namespace": "unshare -U true",
                "new user namespace as root": "unshare -r true",
                "new mount namespace": "unshare -m true",
                "new pid namespace": "unshare -p -f true",
            }
        ),
    )

    capabilities = [line for line in output.splitlines() if line.startswith("Cap")]
    assert len(capabilities) == 4, output
    assert all(line.split()[1] == "0000000000000000" for line in capabilities), output
    assert "BROKE" not in output


async def test_nothing_can_be_remounted_writable_or_unmounted(workspace: Workspace) -> None:
    git_dir = workspace.repo / ".git"
    before = host_files(workspace)

    output = await run_agent(
        context_for(workspace),
        attempts(
            {
                "remount /usr": "mount -o remount,rw /usr",
                "remount the git directory": f"mount -o remount,rw {git_dir}",
                "remount the .git file": "mount -o remount,rw .git",
                "remount the root": "mount -o remount,rw /",
                "bind over the git directory": f"mount --bind /tmp {git_dir}",
                "unmount /tmp": "umount /tmp",
                "unmount /proc": "umount /proc",
                "lazily unmount /proc": "umount -l /proc",
                "unmount the .git file": "umount .git",
                "unmount the git directory": f"umount {git_dir}",
                "write a hook": f"echo 'touch /tmp/pwned' > {git_dir}/hooks/post-checkout",
                "plant fsmonitor": "git config core.fsmonitor 'touch /tmp/pwned'",
                "append to the config": f"echo '[core] fsmonitor = x' >> {git_dir}/config",
                "replace .git": f"rm -f .git && echo 'gitdir: {git_dir}' > .git",
                "move .git away": "mv .git moved",
                "write the worktree's git dir": f"echo x > {git_dir}/worktrees/agent-1/HEAD",
            }
        )
        + "\ngit status --short && git log --oneline -1 && echo GIT-WORKS",
    )

    assert "BROKE" not in output, output
    assert "GIT-WORKS" in output, output
    assert host_files(workspace) == before
    assert not (git_dir / "hooks" / "post-checkout").exists()
    assert not (workspace.worktree / "moved").exists()


async def test_unmounting_proc_shows_no_host_process(workspace: Workspace) -> None:
    marker = f"forkyard-host-{uuid.uuid4().hex}"
    host = await anyio.open_process([sys.executable, "-c", "import time; time.sleep(1000)", marker])
    try:
        assert marker.encode() in Path(f"/proc/{host.pid}/cmdline").read_bytes()
        output = await run_agent(
            context_for(workspace),
            "umount /proc; umount -l /proc; ls /proc | grep -c '^[0-9]'; "
            "cat /proc/[0-9]*/cmdline | tr '\\0' ' '",
        )
    finally:
        host.kill()
        await host.aclose()

    assert marker not in output
    count = next(line for line in output.splitlines() if line.strip().isdigit())
    assert int(count) < 10, output  # the shell, cat, ls: not the host's hundreds


async def test_a_program_that_sandboxes_in_turn_still_cannot_remount(tmp_path: Path) -> None:
    """codex makes user namespaces inside ours: in them it has capabilities, but over
    nothing of ours; the kernel keeps our mounts locked."""
    worktree = tmp_path / "worktree"
    worktree.mkdir()
    policy = SandboxPolicy(writable=[worktree], nested_sandbox=True)
    script = attempts(
        {
            "remount /usr in a nested namespace": "unshare -rm mount -o remount,rw /usr",
            "unmount /proc in a nested namespace": "unshare -rm umount /proc",
            "unmount /tmp in a nested namespace": "unshare -rm umount /tmp",
            "write /usr in a nested namespace": "unshare -rm touch /usr/forkyard-pwned",
        }
    )

    result = await sandboxed(script + "\nunshare -r true && echo NESTING-WORKS", policy, worktree)

    assert "BROKE" not in result.stdout_tail, result.stdout_tail
    assert "NESTING-WORKS" in result.stdout_tail, result.stderr_tail
    assert not Path("/usr/forkyard-pwned").exists()


async def test_the_sandbox_shows_nothing_of_the_user_but_the_worktree(
    workspace: Workspace, secret_in_home: Path, tmp_path: Path
) -> None:
    other_repo = tmp_path / "other-repo"
    other_repo.mkdir()
    (other_repo / "private.txt").write_text(SECRET)
    state = workspace.state_dir
    paths = {
        "a credentials file in the home": secret_in_home,
        "the checkout's ignored .env": workspace.repo / ".env",
        "the checkout's files": workspace.repo / "README.md",
        "another repository": other_repo / "private.txt",
        "another agent's worktree": state / "worktrees" / "agent-2" / "their-work.txt",
        "the database": state / "forkyard.sqlite3",
    }
    script = attempts({name: f"cat {shlex.quote(str(path))}" for name, path in paths.items()})

    output = await run_agent(
        context_for(workspace),
        f"{script}\nls -A {shlex.quote(str(Path.home()))}\ncat README.md\ngit diff --stat HEAD",
    )

    assert "BROKE" not in output, output
    assert SECRET not in output
    assert secret_in_home.parent.name not in output
    assert "# sample" in output  # its own worktree it reads


async def test_an_explorer_reads_the_checkout_it_explores_and_writes_nothing(
    workspace: Workspace, tmp_path: Path
) -> None:
    context = context_for(workspace)
    context.role = BUILTIN_ROLES["explorer"]
    context.cwd = workspace.repo

    output = await run_agent(
        context,
        attempts({"write the checkout": "touch new.txt", "write .git": "touch .git/pwned"})
        + f"\ncat README.md; cat {workspace.state_dir}/forkyard.sqlite3",
    )

    assert "# sample" in output
    assert "BROKE" not in output
    assert SECRET not in output
    assert not (workspace.repo / "new.txt").exists()


async def test_read_paths_grant_a_cache_read_only(workspace: Workspace, tmp_path: Path) -> None:
    cache = tmp_path / "toolchain-cache"
    cache.mkdir()
    (cache / "index").write_text("cached\n")

    output = await run_agent(
        context_for(workspace, read_paths=[str(cache)]),
        f"cat {cache}/index\n" + attempts({"write the cache": f"touch {cache}/pwned"}),
    )

    assert "cached" in output
    assert "BROKE" not in output
    assert sorted(p.name for p in cache.iterdir()) == ["index"]


def test_toolchains_on_path_bring_what_they_need_and_never_a_home(tmp_path: Path) -> None:
    base = tmp_path / "pythons" / "3.12"
    (base / "bin").mkdir(parents=True)
    venv = tmp_path / "project" / ".venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text(f"home = {base / 'bin'}\nversion = 3.12\n")
    manager = tmp_path / "home" / ".pyenv"
    (manager / "versions").mkdir(parents=True)
    (manager / "shims").mkdir()
    home = tmp_path / "home"
    (home / "versions").mkdir()  # a home that looks like a version manager's root
    (home / "bin").mkdir()
    path = os.pathsep.join(
        [
            *(str(venv / "bin"), str(manager / "shims"), str(home / "bin")),
            *(str(home), "/", "relative/bin", "/usr/bin"),
        ]
    )

    found = toolchain_dirs(path, (str(home),))

    assert found == (venv, base, manager, home / "bin")


async def sandboxed(command: str, policy: SandboxPolicy, cwd: Path) -> ProcessResult:
    environ = dict(os.environ)
    return await run_streaming(
        sandboxed_argv(command, policy, cwd=cwd, env=environ),
        cwd=cwd,
        env=scrubbed_env(environ, policy),
        on_output=lambda _stream, _line: None,
        timeout=60,
    )


@pytest.mark.timeout(180)
async def test_fifty_commands_stopped_right_after_they_start_leave_nothing(
    tmp_path: Path,
) -> None:
    """Cancels and timeouts at random moments in the first 50 ms: before bwrap has made
    its namespace, while it sets it up, as the command starts. The command also starts
    a process in a session of its own, which a process group kill would miss."""
    marker = str(random.randrange(10**8, 10**9))
    worktree = tmp_path / "worktree"
    worktree.mkdir()
    policy = SandboxPolicy(writable=[worktree])
    environ = dict(os.environ)
    stopped = 0
    for round_number in range(50):
        seconds = f"{marker}{round_number:02d}"
        argv = sandboxed_argv(
            f"setsid sleep {seconds} & sleep {seconds}", policy, cwd=worktree, env=environ
        )
        moment = random.uniform(0, 0.05)
        by_timeout = round_number % 2 == 1
        with anyio.move_on_after(None if by_timeout else moment) as scope:
            result = await run_streaming(
                argv,
                cwd=worktree,
                env=scrubbed_env(environ, policy),
                on_output=lambda _stream, _line: None,
                timeout=moment if by_timeout else None,
                kill_grace_seconds=0.5,
            )
            assert result.timed_out
        stopped += 1 if by_timeout or scope.cancelled_caught else 0

    assert stopped == 50
    assert await wait_for_processes_with(marker, 0, seconds=10) == []


def nice_and_io_class(pid: int) -> tuple[int, str]:
    """The niceness (field 19 of /proc/PID/stat) and the I/O class `ionice` reports."""
    stat = Path(f"/proc/{pid}/stat").read_bytes()
    nice = int(stat[stat.rindex(b")") + 2 :].split()[16])
    io_class = subprocess.run(
        ["ionice", "-p", str(pid)], capture_output=True, text=True, check=True
    ).stdout.strip()
    return nice, io_class


async def wait_for_sleep(marker: str) -> int:
    """The host pid of `sleep MARKER` once it runs (no event announces an exec)."""
    wanted = f"sleep\0{marker}\0".encode()
    with anyio.fail_after(15):
        while True:
            for pid in await anyio.to_thread.run_sync(processes_with, marker):
                with contextlib.suppress(OSError):
                    if Path(f"/proc/{pid}/cmdline").read_bytes() == wanted:
                        return pid
            await anyio.sleep(0.02)


@pytest.mark.parametrize(
    ("priority", "expected"), [("background", (10, "idle")), ("normal", (0, "none: prio 0"))]
)
async def test_agents_commands_run_at_background_priority_unless_told_otherwise(
    workspace: Workspace, priority: str, expected: tuple[int, str]
) -> None:
    if os.getpriority(os.PRIO_PROCESS, 0) != 0:
        pytest.skip("the test runner itself runs niced")
    marker = str(random.randrange(10**8, 10**9))
    context = context_for(workspace)
    context.settings = context.settings.model_copy(update={"agent_priority": priority})

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(CommandBackend().run, context, f"sleep {marker}")
        pid = await wait_for_sleep(marker)
        seen = await anyio.to_thread.run_sync(nice_and_io_class, pid)
        tasks.cancel_scope.cancel()

    assert seen == expected


async def test_linked_folders_are_readable_through_their_links_and_nothing_beside(
    workspace: Workspace,
) -> None:
    """`[worktree] link` links the user's node_modules: the agent reads it through the
    links, cannot write it, and still sees nothing else of the checkout."""
    checkout = workspace.repo
    for tree in (checkout, workspace.worktree):
        (tree / ".gitignore").write_text(".env\nnode_modules/\n")
    package = checkout / "node_modules" / "left-pad"
    package.mkdir(parents=True)
    (package / "index.js").write_text("module.exports = 1\n")
    brought = await bring_ignored_files(
        checkout, workspace.worktree, copy=[], link=["node_modules"], env=GIT_ENV
    )
    assert brought.linked == ["node_modules"]
    context = context_for(workspace)
    context.settings = context.settings.model_copy(
        update={"worktree": WorktreeSettings(link=["node_modules"])}
    )

    output = await run_agent(
        context,
        "cat node_modules/left-pad/index.js\n"
        + attempts(
            {
                "write the user's package": "echo x > node_modules/left-pad/index.js",
                "read the checkout's .env": f"cat {checkout}/.env",
            }
        ),
    )

    assert "module.exports = 1" in output
    assert "BROKE" not in output, output
    assert SECRET not in output
    assert (package / "index.js").read_text() == "module.exports = 1\n"


async def test_a_sandboxed_command_ignoring_sigterm_is_killed_after_the_grace(
    tmp_path: Path,
) -> None:
    marker = str(random.randrange(10**8, 10**9))
    worktree = tmp_path / "worktree"
    worktree.mkdir()
    policy = SandboxPolicy(writable=[worktree])
    environ = dict(os.environ)
    script = f"trap '' TERM; setsid sh -c \"trap '' TERM; sleep {marker}\" & sleep {marker}; wait"

    with anyio.fail_after(20):
        result = await run_streaming(
            sandboxed_argv(script, policy, cwd=worktree, env=environ),
            cwd=worktree,
            env=scrubbed_env(environ, policy),
            on_output=lambda _stream, _line: None,
            timeout=1,
            kill_grace_seconds=0.3,
        )

    assert result.timed_out
    assert result.duration_seconds < 10
    assert await wait_for_processes_with(marker, 0, seconds=10) == []
