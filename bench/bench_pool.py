"""The warm worktree pool: dispatch to `running`, pooled and unpooled, on a large and a
small generated repository, next to a plain `git worktree add`; and the disk each
agent's worktree takes.

Each dispatch is timed by the client, from the `forkyard/agent/dispatch` request to the
`forkyard/agent/changed` notification saying `running`, through the real server over
stdio. Before each pooled dispatch the bench waits until the pool is full again (it
refills in the background), so every pooled figure is a dispatch that found the pool
ready; the agent's log says which way each worktree was made, and the bench counts it.
Agents are discarded after each run so that the disk does not fill, and each series
starts after an `os.sync()`, so that none pays for the previous one's disk writes.

    uv run python bench/bench_pool.py [--files 20000] [--file-bytes 10000] [--runs 20]
                                      [--repos large,small]
    uv run python bench/bench_pool.py --quick   # CI: small sizes, a few rounds

An agent that does not end `done` exits non-zero.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import anyio

from bench_dispatch import GIT_ENV, make_repo, percentile, require_done
from forkyard.client import ForkyardClient
from forkyard.daemon.control import stop_and_wait

PREPARED = re.compile(r"prepared worktree in (\d+) ms \((\w+)")


@dataclass
class Series:
    name: str
    seconds: list[float] = field(default_factory=list)
    server_ms: list[float] = field(default_factory=list)
    ways: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        ms = [s * 1000 for s in self.seconds]
        text = (
            f"  {self.name:<38} median {statistics.median(ms):7.1f} ms"
            f"   p95 {percentile(ms, 0.95):7.1f} ms"
        )
        if self.server_ms:
            text += f"   (worktree: median {statistics.median(self.server_ms):6.1f} ms"
            text += ", " + ", ".join(f"{n} {way}" for way, n in sorted(self.ways.items())) + ")"
        return text


async def wait_for_pool(client: ForkyardClient, size: int) -> None:
    """Until the pool holds `size` ready worktrees (a cheap status, polled: the pool
    announces nothing over the protocol)."""
    with anyio.fail_after(300):
        # A server-side state that no notification announces: poll it.
        while (await client.request("forkyard/status", {"disk": False}))["poolReady"] < size:  # noqa: ASYNC110
            await anyio.sleep(0.05)


async def run_series(
    repo: Path, state: Path, name: str, runs: int, pool_size: int, **dispatch: Any
) -> tuple[Series, list[int]]:
    env = {**os.environ, "FORKYARD_STATE_DIR": str(state)}
    options = {"maxParallelAgents": 64, "worktree": {"poolSize": pool_size}}
    client = await ForkyardClient.start(repo, env, initialization_options=options)
    series = Series(name)
    disk: list[int] = []
    try:
        for run in range(runs):
            await wait_for_pool(client, pool_size)
            started = time.perf_counter()
            agent = await client.dispatch("true", backend="command", **dispatch)
            await client.wait_for_agent(agent["id"], {"running", "done", "failed"}, timeout=300)
            series.seconds.append(time.perf_counter() - started)
            done = await client.wait_for_agent(agent["id"], timeout=300)
            require_done(done)
            read = await client.request("forkyard/agent/read", {"agentId": agent["id"]})
            for entry in read["log"]:
                if found := PREPARED.match(entry["text"]):
                    series.server_ms.append(float(found.group(1)))
                    way = found.group(2)
                    series.ways[way] = series.ways.get(way, 0) + 1
            if run < 3:
                status = await client.request("forkyard/status", {})
                disk += [w["diskBytes"] for w in status["worktrees"] if w["agentId"] == agent["id"]]
            await client.request("forkyard/agent/discard", {"agentId": agent["id"]})
    finally:
        await client.stop()
        await stop_and_wait(state, now=True)  # the bench's own daemon goes too
    return series, disk


def time_worktree_adds(repo: Path, target: Path, runs: int) -> Series:
    series = Series("plain git worktree add")
    for index in range(runs):
        path = target / f"wt{index}"
        started = time.perf_counter()
        subprocess.run(
            ["git", "worktree", "add", "-q", "-b", f"plain-{index}", str(path), "HEAD"],
            cwd=repo,
            check=True,
            env=GIT_ENV,
        )
        series.seconds.append(time.perf_counter() - started)
        subprocess.run(
            ["git", "worktree", "remove", "--force", str(path)], cwd=repo, check=True, env=GIT_ENV
        )
        os.sync()
    return series


def du(path: Path) -> str:
    done = subprocess.run(["du", "-sh", str(path)], capture_output=True, text=True, check=True)
    return done.stdout.split()[0]


def mib(values: list[int]) -> str:
    return f"{statistics.median(values) / 2**20:.1f} MiB" if values else "n/a"


def bench_repository(work: Path, label: str, files: int, file_bytes: int, runs: int) -> None:
    repo = work / label
    started = time.perf_counter()
    make_repo(repo, files, file_bytes)
    print(
        f"\n{label} repository: {files} files, {du(repo)} with .git "
        f"(made in {time.perf_counter() - started:.1f} s), {runs} dispatches per line"
    )
    results: list[Series] = []
    disks: dict[str, list[int]] = {}
    # Every series starts with the previous one's writes on disk, so none pays for
    # another's writeback.
    os.sync()
    results.append(time_worktree_adds(repo, work / f"plain-{label}", runs))
    for dirty in (False, True):
        if dirty:
            (repo / "pkg000" / "module_00000.py").write_text("# edited by the user\n")
            (repo / "untracked.txt").write_text("new\n")
        checkout = "dirty checkout" if dirty else "clean checkout"
        for pool_size in (2, 0):
            kind = "pooled" if pool_size else "unpooled"
            state = work / f"state-{label}-{kind}-{int(dirty)}"
            os.sync()
            series, disk = anyio.run(
                run_series, repo, state, f"dispatch -> running, {kind}, {checkout}", runs, pool_size
            )
            results.append(series)
            disks[kind] = disks.get(kind, []) + disk
            shutil.rmtree(state, ignore_errors=True)
    os.sync()
    sparse_series = partial(run_series, paths=["pkg000"])
    sparse, sparse_disk = anyio.run(
        sparse_series, repo, work / f"state-{label}-sparse", "dispatch -> running, sparse", runs, 0
    )
    results.append(sparse)
    for series in results:
        print(series.line())
    print(
        f"  disk per agent: {mib(disks.get('pooled', []))} (pooled), "
        f"{mib(disks.get('unpooled', []))} (fresh), {mib(sparse_disk)} (sparse pkg000); "
        f"each pooled worktree waiting costs the same"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--file-bytes", type=int, default=10_000)
    parser.add_argument("--small-files", type=int, default=200)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--repos", default="large,small", help="which of large,small to run")
    parser.add_argument(
        "--quick", action="store_true", help="300 and 50 files of 2 kB, 2 runs: for CI"
    )
    args = parser.parse_args()
    if args.quick:
        args.files, args.file_bytes, args.small_files, args.runs = 300, 2_000, 50, 2
    wanted = set(args.repos.split(","))
    work = Path(tempfile.mkdtemp(prefix="forkyard-bench-pool-"))
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"{os.cpu_count()} cores, load average {load} (the machine may be shared)")
    try:
        if "large" in wanted:
            bench_repository(work, "large", args.files, args.file_bytes, args.runs)
        if "small" in wanted:
            bench_repository(work, "small", args.small_files, 2_000, args.runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
