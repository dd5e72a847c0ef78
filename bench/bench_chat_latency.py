"""Is the conversation ever blocked? Round-trip latency of `forkyard/chat` and
`forkyard/agent/list`, idle and during a burst of 16 agents dispatched on a large
repository, and the event loop's largest stall during the burst (from the server's own
loop watch, `forkyard/server/stats`).

    uv run python bench/bench_chat_latency.py [--files 20000] [--samples 200] [--burst 16]
    uv run python bench/bench_chat_latency.py --quick   # CI: small sizes, seconds

An agent of the burst that does not end `done` exits non-zero.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import anyio

from bench_dispatch import make_repo, percentile, require_done
from forkyard.client import ForkyardClient


def describe(name: str, seconds: list[float]) -> str:
    ms = [s * 1000 for s in seconds]
    return (
        f"{name:<40} median {statistics.median(ms):7.2f} ms   p99 {percentile(ms, 0.99):7.2f} ms"
        f"   (n={len(ms)})"
    )


async def sample(client: ForkyardClient, samples: int, thread_id: str) -> dict[str, list[float]]:
    timings: dict[str, list[float]] = {"forkyard/chat": [], "forkyard/agent/list": []}
    for _ in range(samples):
        started = time.perf_counter()
        await client.request("forkyard/chat", {"text": "/help", "threadId": thread_id})
        timings["forkyard/chat"].append(time.perf_counter() - started)
        started = time.perf_counter()
        await client.request("forkyard/agent/list", {})
        timings["forkyard/agent/list"].append(time.perf_counter() - started)
    return timings


async def run(repo: Path, state: Path, samples: int, burst_size: int) -> None:
    env = {**os.environ, "FORKYARD_STATE_DIR": str(state)}
    client = await ForkyardClient.start(repo, env, initialization_options={"maxParallelAgents": 16})
    try:
        first = await client.request("forkyard/chat", {"text": "/help"})
        thread = first["threadId"]
        idle = await sample(client, samples, thread)
        await client.request("forkyard/server/stats", {"reset": True})
        ids: list[str] = []
        burst: dict[str, list[float]] = {}
        command = "for i in $(seq 200); do echo $i > out_$i.txt; done; git status --short | wc -l"

        async def dispatch_burst() -> None:
            for n in range(burst_size):
                agent = await client.dispatch(command, backend="command", title=f"burst {n}")
                ids.append(agent["id"])

        started = time.perf_counter()
        async with anyio.create_task_group() as group:
            group.start_soon(dispatch_burst)

            async def measure() -> None:
                burst.update(await sample(client, samples, thread))

            group.start_soon(measure)
        for agent_id in ids:
            require_done(await client.wait_for_agent(agent_id, timeout=600))
        elapsed = time.perf_counter() - started
        stats = await client.request("forkyard/server/stats", {})
    finally:
        await client.stop()
    for method in ("forkyard/chat", "forkyard/agent/list"):
        print(describe(f"{method} idle", idle[method]))
        print(describe(f"{method} during the burst", burst[method]))
    print(f"burst of {burst_size} agents finished in {elapsed:.1f} s")
    print(f"largest event-loop stall during the burst: {stats['maxLoopStallMs']:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--burst", type=int, default=16, help="agents dispatched at once")
    parser.add_argument(
        "--quick", action="store_true", help="500 files, 20 samples, 4 agents: for CI"
    )
    args = parser.parse_args()
    if args.quick:
        args.files, args.samples, args.burst = 500, 20, 4
    work = Path(tempfile.mkdtemp(prefix="forkyard-bench-"))
    try:
        make_repo(work / "repo", args.files, 2_000)
        anyio.run(run, work / "repo", work / "state", args.samples, args.burst)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
