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
import sys
import tempfile
import time
from pathlib import Path

import anyio

from bench_dispatch import make_repo, percentile, require_done
from forkyard.client import ForkyardClient
from forkyard.daemon.control import stop_and_wait

# The fake model server of the tests: real HTTP on 127.0.0.1, no key, no network.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.fakes.model_server import FakeModelServer, Reply


def describe(name: str, seconds: list[float]) -> str:
    ms = [s * 1000 for s in seconds]
    return (
        f"{name:<40} median {statistics.median(ms):7.2f} ms   p99 {percentile(ms, 0.99):7.2f} ms"
        f"   max {max(ms):7.2f} ms   (n={len(ms)})"
    )


async def first_chat_with_a_model(repo: Path, state: Path) -> None:
    """A fresh server with a model configured (a fake OpenAI server on 127.0.0.1): how
    long its first `forkyard/chat` takes to answer, to its first streamed word and to the
    end of the turn, and the loop's largest stall meanwhile (the SDK loads then)."""
    with FakeModelServer() as model:
        model.script(Reply(text="The first answer, streamed in a few pieces."))
        config = model.model_config("openai").model_dump(exclude_none=True)
        env = {**os.environ, "FORKYARD_STATE_DIR": str(state)}
        client = await ForkyardClient.start(
            repo, env, initialization_options={"models": {"default": config}}
        )
        try:
            started = time.perf_counter()
            result = await client.request("forkyard/chat", {"text": "hello"})
            answered = time.perf_counter() - started

            def streamed(method: str) -> bool:
                return any(
                    m == method and p.get("turnId") == result["turnId"]
                    for m, p in client.notifications
                )

            await client.wait_until(lambda: streamed("forkyard/chat/delta"), timeout=60)
            first_word = time.perf_counter() - started
            await client.wait_until(
                lambda: any(
                    m == "forkyard/chat/turn"
                    and p.get("turnId") == result["turnId"]
                    and p.get("state") in ("completed", "failed")
                    for m, p in client.notifications
                ),
                timeout=60,
            )
            ended = time.perf_counter() - started
            stats = await client.request("forkyard/server/stats", {})
        finally:
            await client.stop()
            await stop_and_wait(state, now=True)  # the bench's own daemon goes too
    print(
        f"first chat with a model: answered {answered * 1000:.1f} ms, first word "
        f"{first_word * 1000:.0f} ms, turn ended {ended * 1000:.0f} ms, largest loop stall "
        f"{stats['maxLoopStallMs']:.1f} ms"
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
        await stop_and_wait(state, now=True)  # the bench's own daemon goes too
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
        anyio.run(first_chat_with_a_model, work / "repo", work / "model-state")
        anyio.run(run, work / "repo", work / "state", args.samples, args.burst)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
