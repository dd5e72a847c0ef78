"""The bubblewrap sandbox for agent commands.

A worker's command sees the system and the toolchains read-only, its own worktree
read-write, a private /tmp and HOME, and nothing else of the user's (`sandbox_paths`);
it has no network at all (a new network namespace: not even the host's 127.0.0.1, where
the user's databases and dev servers listen) and no capabilities, whoever runs the
server. Its environment is an allow-list, so API keys and tokens of the server's
environment never reach a command an agent wrote. Where bwrap is missing or cannot
create namespaces (some containers), the caller is told why once, and runs commands
unsandboxed only if the user allowed it.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache, partial
from pathlib import Path
from typing import Literal

import anyio
import anyio.to_thread

from forkyard.tools.sandbox_paths import (
    system_mounts,
    system_roots,
    toolchain_dirs,
    within,
)

#: Variables a command may see by default: what shells and build tools need to behave,
#: nothing that grants access to anything. Secrets (`*_KEY`, `*_TOKEN`, ...) pass only
#: when the user names them in the policy's allow-list.
DEFAULT_ENV_ALLOWLIST: frozenset[str] = frozenset(
    {"PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TERM", "USER", "LOGNAME", "SHELL", "TZ"}
)
#: HOME inside the sandbox: in its private /tmp, so tools that write caches or config
#: under ~ work, and nothing they write there outlives the command.
SANDBOX_HOME = "/tmp/home"
PRIVATE_TMP = Path("/tmp")
SHELL = "/bin/sh"
#: The user and group a server running as root appears as in a sandbox that makes
#: sandboxes of its own.
NESTED_SANDBOX_ID = 1000
#: The niceness of agents' commands at background priority.
BACKGROUND_NICE = 10

Priority = Literal["background", "normal"]
PROBE_TIMEOUT_SECONDS = 10.0
INSTALL_HINT = "bwrap not installed: apt-get install bubblewrap"


@dataclass
class SandboxPolicy:
    """What a sandboxed command may touch.

    `writable` paths (which must exist) are mounted read-write at the same place.
    `readable` ones are mounted read-only (missing ones are skipped): beyond the system
    and the toolchains on PATH the sandbox shows nothing, so this is how a command gets
    the repository's git directory, the installation of the program it runs, or a cache
    the user granted. `hidden` directories are replaced by empty ones, e.g. a worktree's
    copied secrets. Of nested paths, the innermost wins.
    `extra_env` is set for the command whatever the allow-list says: it is what the
    server itself hands to it (e.g. `FORKYARD_PORT`)."""

    writable: list[Path]
    network: bool = False
    env_allowlist: frozenset[str] = DEFAULT_ENV_ALLOWLIST
    extra_env: Mapping[str, str] = field(default_factory=dict)
    hidden: list[Path] = field(default_factory=list)
    readable: list[Path] = field(default_factory=list)
    #: Lets the command make user namespaces of its own, for a program that sandboxes
    #: what it runs in turn (codex). They give it capabilities only over what it
    #: creates: the kernel keeps this sandbox's mounts locked (read-only stays so,
    #: nothing can be unmounted to reveal what lies beneath).
    nested_sandbox: bool = False
    #: "background": the command and all it starts run at nice 10, idle I/O class.
    priority: Priority = "normal"
    #: (host path, sandbox path): single files shown read-only at a place of their own,
    #: e.g. the model gateway's socket, the one way out of a sandbox without network.
    ro_binds: list[tuple[Path, Path]] = field(default_factory=list)


@dataclass(frozen=True)
class SandboxStatus:
    available: bool
    reason: str


class _ProbeCache:
    """The probe's answer, once per process: whether namespaces work does not change
    while the server runs, and probing costs a process start."""

    status: SandboxStatus | None = None
    #: Whether this bwrap has `--disable-userns` (0.8 and later); assumed until probed.
    disable_userns: bool = True


@cache
def bwrap_path() -> str | None:
    """Absolute path of bwrap, or None when it is not installed. Looked up once, when
    this module is imported (at the server's start, before it serves), so that callers
    on the event loop never search PATH."""
    return shutil.which("bwrap")


def sandbox_available() -> tuple[bool, str]:
    """Whether commands can run sandboxed, and why not. Cheap and never blocks: until
    `probe_sandbox` has run it only knows whether bwrap is installed."""
    if _ProbeCache.status is not None:
        return _ProbeCache.status.available, _ProbeCache.status.reason
    path = bwrap_path()
    if path is None:
        return False, INSTALL_HINT
    return True, f"bwrap found at {path} (not probed yet)"


async def probe_sandbox() -> SandboxStatus:
    """Whether bwrap can run a command here with the options `sandboxed_argv` uses. Runs
    it once per process (`true` in an empty sandbox) and caches the answer."""
    if _ProbeCache.status is None:
        _ProbeCache.status = await _probe()
    return _ProbeCache.status


async def _probe() -> SandboxStatus:
    path = bwrap_path()
    if path is None:
        return SandboxStatus(False, INSTALL_HINT)
    try:
        with anyio.fail_after(PROBE_TIMEOUT_SECONDS):
            usage = await anyio.run_process([path, "--help"], check=False, env={})
        # Older bwraps (before 0.8) lack it; the rest of the sandbox holds without it.
        _ProbeCache.disable_userns = b"--disable-userns" in usage.stdout + usage.stderr
    except (OSError, TimeoutError):
        pass  # the probe below tells what is wrong
    # In an empty folder of its own, as an agent in its worktree: a probe in "/" would
    # bind the whole host, every mount on it included, and fail whenever one of them (an
    # overlay worktree being mounted or unmounted) changes under bwrap meanwhile.
    scratch = Path(await anyio.to_thread.run_sync(partial(tempfile.mkdtemp, prefix="fy-probe-")))
    try:
        argv = await anyio.to_thread.run_sync(
            lambda: sandboxed_argv("true", SandboxPolicy(writable=[]), cwd=scratch, env={})
        )
        with anyio.fail_after(PROBE_TIMEOUT_SECONDS):
            done = await anyio.run_process(
                argv, check=False, stdin=subprocess.DEVNULL, cwd=scratch, env={}
            )
    except TimeoutError:
        return SandboxStatus(False, f"bwrap did not finish in {PROBE_TIMEOUT_SECONDS:g} s")
    except OSError as error:
        return SandboxStatus(False, f"bwrap cannot be started: {error}")
    finally:
        await anyio.to_thread.run_sync(scratch.rmdir)
    if done.returncode != 0:
        detail = done.stderr.decode(errors="replace").strip() or f"exit {done.returncode}"
        return SandboxStatus(False, f"bwrap cannot create namespaces here: {detail}")
    return SandboxStatus(True, f"bwrap at {path} works")


def sandboxed_argv(
    command: str,
    policy: SandboxPolicy,
    *,
    cwd: Path,
    env: Mapping[str, str] | None = None,
) -> list[str]:
    """`/bin/sh -c command` wrapped in bwrap according to `policy`.

    With `env`, the command's environment is exactly `scrubbed_env(env, policy)`,
    whatever environment bwrap itself is started with. Without it, the command inherits
    bwrap's environment, so the caller must start bwrap with a scrubbed one. Either way
    HOME is the sandbox's private home.

    Whoever runs the server (root in containers and CI), the command runs in a new user
    namespace with every capability dropped and no way to make another one: it cannot
    remount a read-only path, unmount the private /tmp or its own /proc, nor gain
    capabilities back. Its file system is an allow-list (`sandbox_paths`). It has its
    own PID namespace, so killing the namespace's first process ends everything it
    started; `run_streaming` learns that process through `--info-fd`.
    Raises FileNotFoundError when bwrap is not installed."""
    bwrap = bwrap_path()
    if bwrap is None:
        raise FileNotFoundError(INSTALL_HINT)
    argv = [bwrap, "--unshare-all", "--unshare-user", "--cap-drop", "ALL"]
    if not policy.nested_sandbox:
        argv += ["--disable-userns"] if _ProbeCache.disable_userns else []
    elif os.geteuid() == 0:
        # Root inside may not map itself into a namespace of its own without
        # CAP_SETFCAP (the kernel's guard for file capabilities): be another user.
        argv += ["--uid", str(NESTED_SANDBOX_ID), "--gid", str(NESTED_SANDBOX_ID)]
    if policy.network:
        argv += ["--share-net"]
    argv += system_mounts()
    argv += [
        "--dev", "/dev",
        "--proc", "/proc",
        "--tmpfs", str(PRIVATE_TMP),
        "--dir", SANDBOX_HOME,
    ]  # fmt: skip
    environ = env if env is not None else os.environ
    homes = (environ.get("HOME", ""), os.environ.get("HOME", ""))
    toolchains = toolchain_dirs(environ.get("PATH", ""), homes)
    readable = [*toolchains, *policy.readable]
    if policy.network:
        readable += network_config_paths()
    argv += _mounts(dataclasses.replace(policy, readable=readable), cwd)
    for source, target in policy.ro_binds:
        argv += ["--ro-bind", str(source), str(target)]
    # The root is a tmpfs bwrap made to hold the mounts: read-only, so a write anywhere
    # but the worktree, /tmp and HOME fails instead of vanishing with the sandbox.
    argv += ["--remount-ro", "/"]
    argv += ["--die-with-parent", "--new-session", "--chdir", str(cwd.resolve())]
    if env is not None:
        argv += ["--clearenv"]
        for name, value in sorted(scrubbed_env(env, policy).items()):
            if name != "HOME":
                argv += ["--setenv", name, value]
    argv += ["--setenv", "HOME", SANDBOX_HOME]
    argv += ["--", *priority_prefix(policy.priority), SHELL, "-c", command]
    return argv


def priority_prefix(priority: Priority) -> list[str]:
    """What runs the shell at background priority: `nice` and `ionice` (util-linux) in
    front of it, so the whole tree inherits it. Nothing when they are not installed."""
    if priority != "background":
        return []
    prefix = []
    if nice := _tool("nice"):
        prefix += [nice, "-n", str(BACKGROUND_NICE)]
    if ionice := _tool("ionice"):
        prefix += [ionice, "-t", "-c", "3"]  # -t: run anyway where it cannot be set
    return prefix


@cache
def _tool(name: str) -> str | None:
    return shutil.which(name, path=os.defpath)


# Warm the lookups above at import (see `bwrap_path`).
bwrap_path()
_tool("nice")
_tool("ionice")


def _mounts(policy: SandboxPolicy, cwd: Path) -> list[str]:
    """Mount options for the policy's paths, outer paths first, so that the innermost
    wins: a worktree inside a hidden directory stays visible, a hidden directory (or a
    read-only `.git`) inside a worktree stays so. The working directory is always
    visible, read-only unless writable. Readable paths the system mounts already show
    are left out; missing ones are skipped."""
    writable = [path.resolve() for path in policy.writable]
    hidden = [path.resolve() for path in policy.hidden]
    system = system_roots()
    readable = [
        resolved
        for path in policy.readable
        if not within(resolved := path.resolve(), system) and resolved.exists()
    ]
    cwd = cwd.resolve()
    if not within(cwd, [*writable, *readable]) or within(cwd, hidden):
        readable.append(cwd)
    mounts = [(path, ["--bind", str(path), str(path)]) for path in writable]
    mounts += [(path, ["--ro-bind", str(path), str(path)]) for path in dict.fromkeys(readable)]
    mounts += [(path, ["--tmpfs", str(path)]) for path in hidden]
    options: list[str] = []
    for _, mount in sorted(mounts, key=lambda item: len(item[0].parts)):
        options += mount
    return options


def network_config_paths() -> list[Path]:
    """What name resolution reads outside /etc: /etc/resolv.conf is a link into /run
    where systemd-resolved (or NetworkManager) manages it."""
    resolv = Path("/etc/resolv.conf")
    if resolv.is_symlink():
        target = resolv.resolve()
        if target.exists():
            return [target]
    return []


def unsandboxed_argv(command: str, priority: Priority = "normal") -> list[str]:
    """`/bin/sh -c command`, for users who explicitly allowed unsandboxed commands."""
    return [*priority_prefix(priority), SHELL, "-c", command]


def scrubbed_env(environ: Mapping[str, str], policy: SandboxPolicy) -> dict[str, str]:
    """The environment a command gets: only the allow-listed variables of `environ`, then
    the policy's `extra_env`. Everything else, API keys and tokens in particular, stays
    with the server. HOME is kept for unsandboxed runs; `sandboxed_argv` replaces it."""
    env = {name: value for name, value in environ.items() if name in policy.env_allowlist}
    env.update(policy.extra_env)
    return env
