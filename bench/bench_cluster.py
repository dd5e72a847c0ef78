"""Agents placed here or on a Ray cluster: the same burst of command agents (each a
short sleep and a file change) on the same repository, once with `placement = "local"`
and once on a single-node Ray started for the run (`ray start --head` on 127.0.0.1, on
this machine: what it shows is the cost of going through the cluster, not the speed of
more machines).

Printed for each: the wall time from the first dispatch to the last agent done, and
dispatch -> running (median, p95); for the cluster also the bytes shipped per agent (its
base bundle, once per node, and its work coming back).

    uv run python bench/bench_cluster.py [--files 20000] [--agents 32]
    uv run python bench/bench_cluster.py --quick   # CI: small sizes, a minute at most
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from bench_dispatch import describe, make_repo, require_done
from forkyard.client import ForkyardClient
from forkyard.daemon.control import stop_and_wait

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.ray_head import ray_head

SHIPPED = re.compile(r"its base was shipped \(([\d,]+) bytes\)")
CAME_BACK = re.compile(r"its work came back: ([\d,]+) bytes")


@dataclass
class Burst:
    wall_seconds: float
    to_running: list[float]
    logs: list[list[str]]


async def burst(repo: Path, state: Path, count: int, placement: str, address: str) -> Burst:
    """`count` dispatches at once; each timed from its request to `running`."""
    env = {**os.environ, "FORKYARD_STATE_DIR": str(state)}
    options: dict[str, Any] = {
        "maxParallelAgents": count,
        "cluster": {"address": address, "maxAgents": count},
        "roles": {"worker": {"numCpus": 0.5}},
    }
    client = await ForkyardClient.start(repo, env, initialization_options=options)
    to_running: dict[int, float] = {}
    ids: dict[int, str] = {}
    try:
        started = time.perf_counter()

        async def one(index: int) -> None:
            sent = time.perf_counter()
            agent = await client.dispatch(
                f"sleep 1 && echo {index} > out{index}.txt",
                backend="command",
                placement=placement,
                title=f"{placement} {index}",
            )
            ids[index] = agent["id"]
            await client.wait_for_agent(agent["id"], {"running", "done", "failed"}, timeout=900)
            to_running[index] = time.perf_counter() - sent
            require_done(await client.wait_for_agent(agent["id"], timeout=900))

        async with anyio.create_task_group() as group:
            for index in range(count):
                group.start_soon(one, index)
        wall = time.perf_counter() - started
        logs = []
        for index in range(count):
            read = await client.request("forkyard/agent/read", {"agentId": ids[index]})
            logs.append([entry["text"] for entry in read["log"]])
    finally:
        await client.stop()
        await stop_and_wait(state, now=True)  # the bench's own daemon goes too
    return Burst(wall, [to_running[index] for index in range(count)], logs)


def shipped_bytes(logs: list[list[str]]) -> tuple[int, int, list[int]]:
    """(bases shipped, their bytes, each agent's bytes both ways)."""
    bases, base_bytes, per_agent = 0, 0, []
    for lines in logs:
        total = 0
        for line in lines:
            if match := SHIPPED.search(line):
                bases += 1
                base_bytes += int(match[1].replace(",", ""))
                total += int(match[1].replace(",", ""))
            if match := CAME_BACK.search(line):
                total += int(match[1].replace(",", ""))
        per_agent.append(total)
    return bases, base_bytes, per_agent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--file-bytes", type=int, default=2_000)
    parser.add_argument("--agents", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="300 files, 4 agents: for CI")
    args = parser.parse_args()
    if args.quick:
        args.files, args.agents = 300, 4
    work = Path(tempfile.mkdtemp(prefix="forkyard-bench-"))
    try:
        repo = work / "repo"
        make_repo(repo, args.files, args.file_bytes)
        print(f"repository: {args.files} files; {args.agents} command agents at once")
        with ray_head(num_cpus=max(4, args.agents)) as head:
            results = {
                placement: anyio.run(
                    burst, repo, work / f"state-{placement}", args.agents, placement, head.address
                )
                for placement in ("local", "cluster")
            }
        for placement, result in results.items():
            name = f"{placement}: wall, first dispatch -> all done"
            print(f"{name:<34} {result.wall_seconds:8.1f} s")
            print(describe(f"{placement}: dispatch -> running", result.to_running))
        bases, base_bytes, per_agent = shipped_bytes(results["cluster"].logs)
        print(f"cluster: bases shipped {bases} ({base_bytes:,} bytes, once per node)")
        print(
            f"cluster: bytes shipped per agent: mean {statistics.mean(per_agent):,.0f}, "
            f"median {statistics.median(per_agent):,.0f}, max {max(per_agent):,}"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
