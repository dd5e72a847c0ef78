"""Dispatch latency: from `forkyard/agent/dispatch` to the agent's `running` state.

Generates a repository of N files (20,000 by default), starts the real server over stdio,
dispatches agents one after another and times each from the request to the
`forkyard/agent/changed` notification saying `running`; then times a plain
`git worktree add` of the same repository, in the same run, for comparison.

    uv run python bench/bench_dispatch.py [--files 20000] [--runs 20]
    uv run python bench/bench_dispatch.py --quick   # CI: small sizes, seconds
    uv run python bench/bench_dispatch.py --burst 16  # 16 at once, right after initialize

With `--burst N`, a fresh server gets N dispatches at once the moment `initialize` has
been answered, while its warm pool is still filling: each agent is timed from its own
request to `running`; the first dispatched, and the median and p95 of all N, are printed.

An agent that does not end `done` exits non-zero.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from forkyard.client import ForkyardClient
from forkyard.daemon.control import stop_and_wait

GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@forkyard.invalid",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@forkyard.invalid",
}


def make_repo(root: Path, files: int, file_bytes: int) -> None:
    root.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=root, check=True, env=GIT_ENV)
    line = "x = 'forkyard benchmark line of reasonably ordinary source code'\n"
    body = line * max(1, file_bytes // len(line))
    for index in range(files):
        directory = root / f"pkg{index // 500:03d}"
        directory.mkdir(exist_ok=True)
        (directory / f"module_{index:05d}.py").write_text(f"# file {index}\n{body}")
    subprocess.run(["git", "add", "-A"], cwd=root, check=True, env=GIT_ENV)
    subprocess.run(["git", "commit", "-q", "-m", "bench"], cwd=root, check=True, env=GIT_ENV)


def require_done(agent: dict[str, Any]) -> None:
    """A benchmark of agents that fail measures nothing: stop with the reason."""
    if agent["state"] != "done":
        raise SystemExit(
            f"agent {agent['id']} ended {agent['state']}: {agent.get('error') or agent}"
        )


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))
    return ordered[index]


def describe(name: str, seconds: list[float]) -> str:
    ms = [s * 1000 for s in seconds]
    return (
        f"{name:<34} median {statistics.median(ms):8.1f} ms   p95 {percentile(ms, 0.95):8.1f} ms"
        f"   (n={len(ms)})"
    )


async def time_dispatches(repo: Path, state: Path, runs: int, dirty: bool) -> list[float]:
    env = {**os.environ, "FORKYARD_STATE_DIR": str(state)}
    client = await ForkyardClient.start(repo, env, initialization_options={"maxParallelAgents": 64})
    timings = []
    try:
        for _ in range(runs):
            started = time.perf_counter()
            agent = await client.dispatch("true", backend="command", includeUncommitted=dirty)
            await client.wait_for_agent(agent["id"], {"running", "done", "failed"}, timeout=120)
            timings.append(time.perf_counter() - started)
            ended = await client.wait_for_agent(agent["id"], timeout=120)
            require_done(ended)
    finally:
        await client.stop()
        await stop_and_wait(state, now=True)  # the bench's own daemon goes too
    return timings


async def time_burst(repo: Path, state: Path, count: int) -> tuple[float, list[float]]:
    """N dispatches sent together right after `initialize` (no wait for the pool): the
    first dispatched's dispatch -> running, and everyone's."""
    env = {**os.environ, "FORKYARD_STATE_DIR": str(state)}
    options = {"maxParallelAgents": count}
    client = await ForkyardClient.start(repo, env, initialization_options=options)
    timings: dict[int, float] = {}
    ids: list[str] = []
    try:

        async def one(index: int, sent: anyio.Event) -> None:
            started = time.perf_counter()
            agent = await client.dispatch("true", backend="command", title=f"burst {index}")
            sent.set()
            ids.append(agent["id"])
            await client.wait_for_agent(agent["id"], {"running", "done", "failed"}, timeout=600)
            timings[index] = time.perf_counter() - started

        async with anyio.create_task_group() as group:
            for index in range(count):
                sent = anyio.Event()
                group.start_soon(one, index, sent)
                if index == 0:
                    await sent.wait()  # the first is the first the server numbers
        for agent_id in ids:
            require_done(await client.wait_for_agent(agent_id, timeout=600))
    finally:
        await client.stop()
        await stop_and_wait(state, now=True)  # the bench's own daemon goes too
    return timings[0], [timings[index] for index in range(count)]


def time_worktree_adds(repo: Path, target: Path, runs: int) -> list[float]:
    timings = []
    for index in range(runs):
        path = target / f"wt{index}"
        started = time.perf_counter()
        subprocess.run(
            ["git", "worktree", "add", "-q", "-b", f"bench-{index}", str(path), "HEAD"],
            cwd=repo,
            check=True,
            env=GIT_ENV,
        )
        timings.append(time.perf_counter() - started)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--file-bytes", type=int, default=2_000)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="500 files, 3 runs: for CI")
    parser.add_argument(
        "--burst", type=int, default=0, help="only: N dispatches at once right after start"
    )
    args = parser.parse_args()
    if args.quick:
        args.files, args.runs = 500, 3
        args.burst = min(args.burst, 4)
    work = Path(tempfile.mkdtemp(prefix="forkyard-bench-"))
    try:
        repo = work / "repo"
        started = time.perf_counter()
        make_repo(repo, args.files, args.file_bytes)
        size = subprocess.run(["du", "-sh", str(repo)], capture_output=True, text=True, check=True)
        print(
            f"repository: {args.files} files, {size.stdout.split()[0]} "
            f"(made in {time.perf_counter() - started:.1f} s)"
        )
        if args.burst:
            first, everyone = anyio.run(time_burst, repo, work / "state-burst", args.burst)
            print(f"{'burst: the first dispatched -> running':<34} {first * 1000:8.1f} ms")
            print(describe(f"burst: all {args.burst} -> running", everyone))
            return
        clean = anyio.run(time_dispatches, repo, work / "state-clean", args.runs, False)
        (repo / "pkg000" / "module_00000.py").write_text("# edited by the user\n")
        (repo / "untracked.txt").write_text("new\n")
        dirty = anyio.run(time_dispatches, repo, work / "state-dirty", args.runs, True)
        plain = time_worktree_adds(repo, work / "plain", args.runs)
        print(describe("dispatch -> running (clean)", clean))
        print(describe("dispatch -> running (dirty, snapshot)", dirty))
        print(describe("plain git worktree add", plain))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
