"""The bubblewrap sandbox for agent commands.

A worker's command runs with the whole system read-only, only its worktree writable, a
private /tmp and no network at all (a new network namespace: not even the host's
127.0.0.1, where the user's databases and dev servers listen). Its environment is an
allow-list, so API keys and tokens of the server's environment never reach a command an
agent wrote. Where bwrap is missing or cannot create namespaces (some containers), the
caller is told why once, and runs commands unsandboxed only if the user allowed it.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import anyio

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
PROBE_TIMEOUT_SECONDS = 10.0
INSTALL_HINT = "bwrap not installed: apt-get install bubblewrap"


@dataclass
class SandboxPolicy:
    """What a sandboxed command may touch.

    Every path must exist. `writable` paths are mounted read-write at the same place.
    `readable` ones are mounted read-only: the system is read-only anyway, this is for
    paths under /tmp, which the sandbox replaces (e.g. the repository that holds a
    worktree's git metadata). `hidden` directories are replaced by empty ones, e.g.
    ~/.ssh or a worktree's copied secrets. Of nested paths, the innermost wins.
    `extra_env` is set for the command whatever the allow-list says: it is what the
    server itself hands to it (e.g. `FORKYARD_PORT`)."""

    writable: list[Path]
    network: bool = False
    env_allowlist: frozenset[str] = DEFAULT_ENV_ALLOWLIST
    extra_env: Mapping[str, str] = field(default_factory=dict)
    hidden: list[Path] = field(default_factory=list)
    readable: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class SandboxStatus:
    available: bool
    reason: str


class _ProbeCache:
    """The probe's answer, once per process: whether namespaces work does not change
    while the server runs, and probing costs a process start."""

    status: SandboxStatus | None = None


@cache
def bwrap_path() -> str | None:
    """Absolute path of bwrap, or None when it is not installed."""
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
    argv = sandboxed_argv("true", SandboxPolicy(writable=[]), cwd=Path("/"), env={})
    try:
        with anyio.fail_after(PROBE_TIMEOUT_SECONDS):
            done = await anyio.run_process(
                argv, check=False, stdin=subprocess.DEVNULL, cwd="/", env={}
            )
    except TimeoutError:
        return SandboxStatus(False, f"bwrap did not finish in {PROBE_TIMEOUT_SECONDS:g} s")
    except OSError as error:
        return SandboxStatus(False, f"bwrap cannot be started: {error}")
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

    The sandbox dies with the server (`--die-with-parent`) and has its own PID namespace:
    killing bwrap kills everything the command started. Start it from the event loop's
    thread, as `run_streaming` does: the kernel ties "dies with parent" to the thread
    that started it, so a worker thread that ends would take the sandbox with it.
    Raises FileNotFoundError when bwrap is not installed."""
    bwrap = bwrap_path()
    if bwrap is None:
        raise FileNotFoundError(INSTALL_HINT)
    argv = [
        bwrap,
        "--ro-bind", "/", "/",
        "--dev", "/dev",
        "--proc", "/proc",
        "--tmpfs", str(PRIVATE_TMP),
        "--dir", SANDBOX_HOME,
    ]  # fmt: skip
    path_value = (env if env is not None else os.environ).get("PATH", "")
    toolchains = toolchain_dirs(path_value)
    if toolchains:
        policy = dataclasses.replace(policy, readable=[*policy.readable, *toolchains])
    argv += _mounts(policy, cwd)
    argv += ["--unshare-all"]
    if policy.network:
        argv += ["--share-net"]
    argv += ["--die-with-parent", "--new-session", "--chdir", str(cwd)]
    if env is not None:
        argv += ["--clearenv"]
        for name, value in sorted(scrubbed_env(env, policy).items()):
            if name != "HOME":
                argv += ["--setenv", name, value]
    argv += ["--setenv", "HOME", SANDBOX_HOME]
    argv += ["--", SHELL, "-c", command]
    return argv


def toolchain_dirs(path_value: str) -> list[Path]:
    """Directories on PATH that the private /tmp would hide, so that the commands the
    user's PATH promises still run in the sandbox (a project checked out under /tmp runs
    its tools from its own virtualenv there). A virtualenv's bin brings the whole
    virtualenv, which its interpreter needs."""
    found: list[Path] = []
    for entry in path_value.split(os.pathsep):
        if not entry:
            continue
        directory = Path(entry)
        if not _within(directory.resolve(), [PRIVATE_TMP]) or not directory.is_dir():
            continue
        if (directory.parent / "pyvenv.cfg").is_file():
            directory = directory.parent
        if directory not in found:
            found.append(directory)
    return found


def _mounts(policy: SandboxPolicy, cwd: Path) -> list[str]:
    """Mount options for the policy's paths, outer paths first, so that the innermost
    wins: a worktree inside a hidden directory stays visible, a hidden directory inside a
    worktree stays hidden. The working directory is always visible (read-only unless
    writable), even under /tmp, which the sandbox otherwise replaces."""
    writable = [path.resolve() for path in policy.writable]
    readable = [path.resolve() for path in policy.readable]
    hidden = [path.resolve() for path in policy.hidden]
    cwd = cwd.resolve()
    replaced = [PRIVATE_TMP, *hidden]
    if _within(cwd, replaced) and not _within(cwd, [*writable, *readable]):
        readable.append(cwd)
    mounts = [(path, ["--bind", str(path), str(path)]) for path in writable]
    mounts += [(path, ["--ro-bind", str(path), str(path)]) for path in readable]
    mounts += [(path, ["--tmpfs", str(path)]) for path in hidden]
    options: list[str] = []
    for _, mount in sorted(mounts, key=lambda item: len(item[0].parts)):
        options += mount
    return options


def _within(path: Path, roots: list[Path]) -> bool:
    return any(path.is_relative_to(root) for root in roots)


def unsandboxed_argv(command: str) -> list[str]:
    """`/bin/sh -c command`, for users who explicitly allowed unsandboxed commands."""
    return [SHELL, "-c", command]


def scrubbed_env(environ: Mapping[str, str], policy: SandboxPolicy) -> dict[str, str]:
    """The environment a command gets: only the allow-listed variables of `environ`, then
    the policy's `extra_env`. Everything else, API keys and tokens in particular, stays
    with the server. HOME is kept for unsandboxed runs; `sandboxed_argv` replaces it."""
    env = {name: value for name, value in environ.items() if name in policy.env_allowlist}
    env.update(policy.extra_env)
    return env
