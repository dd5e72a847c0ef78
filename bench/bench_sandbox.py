"""The sandbox's cost per command: `true` through the process runner, unsandboxed, in
the sandbox as it was before the allow-list (the whole host read-only, capabilities kept
when root), and in today's sandbox (own user namespace, no capabilities, an allow-list
file system, the PID namespace ended through `--info-fd`). Prints median and p95.

    uv run python bench/bench_sandbox.py [--runs 50]
    uv run python bench/bench_sandbox.py --quick   # CI: 10 runs
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import anyio

from forkyard.tools.process import run_streaming
from forkyard.tools.sandbox import (
    SANDBOX_HOME,
    SandboxPolicy,
    bwrap_path,
    probe_sandbox,
    sandboxed_argv,
    scrubbed_env,
    unsandboxed_argv,
)


def previous_argv(command: str, worktree: Path, env: dict[str, str]) -> list[str]:
    """The sandbox's command line before the allow-list, for comparison."""
    bwrap = bwrap_path()
    assert bwrap is not None
    argv = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    argv += ["--tmpfs", "/tmp", "--dir", SANDBOX_HOME, "--bind", str(worktree), str(worktree)]
    argv += ["--unshare-all", "--die-with-parent", "--new-session", "--chdir", str(worktree)]
    argv += ["--clearenv", "--setenv", "PATH", env.get("PATH", ""), "--setenv", "HOME"]
    return [*argv, SANDBOX_HOME, "--", "/bin/sh", "-c", command]


async def timed(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    result = await run_streaming(argv, cwd=cwd, env=env, on_output=lambda _s, _l: None, timeout=30)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"`{argv[-1]}` failed: {result.stderr_tail.strip()}")
    return elapsed


def report(name: str, seconds: list[float]) -> None:
    ordered = sorted(seconds)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    print(
        f"{name:<34} median {statistics.median(ordered) * 1000:6.1f} ms   "
        f"p95 {p95 * 1000:6.1f} ms   ({len(ordered)} runs)"
    )


async def main(runs: int) -> None:
    status = await probe_sandbox()
    if not status.available:
        raise SystemExit(f"the sandbox is unavailable: {status.reason}")
    environ = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="forkyard-bench-sandbox-") as folder:
        worktree = Path(folder)
        policy = SandboxPolicy(writable=[worktree])
        env = scrubbed_env(environ, policy)
        variants: dict[str, Callable[[], list[str]]] = {
            "unsandboxed": lambda: unsandboxed_argv("true"),
            "sandbox before (whole host ro)": lambda: previous_argv("true", worktree, env),
            "sandbox now (allow-list)": lambda: sandboxed_argv(
                "true", policy, cwd=worktree, env=environ
            ),
        }
        build: list[float] = []
        for _ in range(runs):
            started = time.perf_counter()
            sandboxed_argv("true", policy, cwd=worktree, env=environ)
            build.append(time.perf_counter() - started)
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(runs):  # interleaved, so load on the machine hits all alike
            for name, argv in variants.items():
                times[name].append(await timed(argv(), worktree, env))
        for name, seconds in times.items():
            report(name, seconds)
        report("building today's argv (cached)", build)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="10 runs: for CI")
    args = parser.parse_args()
    anyio.run(main, 10 if args.quick else args.runs)
