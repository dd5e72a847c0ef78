"""Copy-on-write worktrees against full ones, in one run on one generated repository:
dispatch to `running` in overlay mode, pooled full mode and unpooled full mode, next to a
plain `git worktree add`; the disk 50 agents that each change 3 files take in overlay and
in full mode; and the time to diff one such agent (`forkyard/agent/diff`) in each mode.

Every figure goes through the real server over stdio (`forkyard serve` and its daemon),
one state directory (so one daemon, which picks its mode once) per series; the mode is
set with the `worktree` initialization options like any setting. Disk is what
`forkyard/status` counts (an overlay agent's layer, each shared base checkout once) and,
as a check, `du -x` of the worktrees folder (which does not descend into the mounts).

    uv run python bench/bench_overlay.py [--files 20000] [--file-bytes 10000] [--runs 20]
                                         [--agents 50]
    uv run python bench/bench_overlay.py --quick   # CI: small sizes, a few rounds

Without the right to mount overlays (not root) the overlay series say so and only the
full ones run. An agent that does not end `done` exits non-zero.
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

import anyio

from bench_dispatch import make_repo, percentile, require_done
from bench_pool import PREPARED, Series, time_worktree_adds, wait_for_pool
from forkyard.client import ForkyardClient
from forkyard.daemon.control import stop_and_wait
from forkyard.workspace.overlay import overlay_support

#: What each agent of the disk series does: change two files, add one.
THREE_CHANGES = (
    "echo '# changed' >> pkg000/module_00000.py && echo '# changed' >> pkg000/module_00001.py"
    " && echo new > added.txt"
)


async def start(repo: Path, state: Path, mode: str, pool_size: int) -> ForkyardClient:
    env = {**os.environ, "FORKYARD_STATE_DIR": str(state)}
    env.pop("FORKYARD_WORKTREE_MODE", None)  # the bench picks each series' mode itself
    worktree = {"mode": mode, "poolSize": pool_size}
    options = {"maxParallelAgents": 64, "worktree": worktree}
    client = await ForkyardClient.start(repo, env, initialization_options=options)
    status = await client.request("forkyard/status", {"disk": False})
    if status.get("worktreeMode") != mode:
        await stop(client, state)
        raise SystemExit(f"asked for {mode} worktrees, the server runs {status}")
    return client


async def stop(client: ForkyardClient, state: Path) -> None:
    await client.stop()
    await stop_and_wait(state, now=True)


async def dispatch_series(
    repo: Path, state: Path, name: str, mode: str, pool_size: int, runs: int
) -> Series:
    """Dispatch to running, `runs` times; the first overlay dispatch on a base (which
    checks the base out once for every later agent) is made before, not counted."""
    client = await start(repo, state, mode, pool_size)
    series = Series(name)
    try:
        if mode == "overlay":
            warm = await client.dispatch("true", backend="command")
            require_done(await client.wait_for_agent(warm["id"], timeout=300))
            await client.request("forkyard/agent/discard", {"agentId": warm["id"]})
        for _ in range(runs):
            await wait_for_pool(client, pool_size)
            started = time.perf_counter()
            agent = await client.dispatch("true", backend="command")
            await client.wait_for_agent(agent["id"], {"running", "done", "failed"}, timeout=300)
            series.seconds.append(time.perf_counter() - started)
            require_done(await client.wait_for_agent(agent["id"], timeout=300))
            read = await client.request("forkyard/agent/read", {"agentId": agent["id"]})
            for entry in read["log"]:
                if found := PREPARED.match(entry["text"]):
                    series.server_ms.append(float(found.group(1)))
                    series.ways[found.group(2)] = series.ways.get(found.group(2), 0) + 1
            await client.request("forkyard/agent/discard", {"agentId": agent["id"]})
    finally:
        await stop(client, state)
    return series


async def disk_and_diff(
    repo: Path, state: Path, mode: str, agents: int, diffs: int
) -> tuple[int, int, list[float]]:
    """`agents` agents that each change 3 files, all kept: the disk they take (status,
    and `du -x`), then the time of `forkyard/agent/diff` on one of them."""
    client = await start(repo, state, mode, 0)
    try:
        made = [await client.dispatch(THREE_CHANGES, backend="command") for _ in range(agents)]
        for agent in made:
            done = await client.wait_for_agent(agent["id"], timeout=600)
            require_done(done)
            assert done["changes"]["files"] == 3, done["changes"]
        status = await client.request("forkyard/status", {})
        counted = int(status["totalDiskBytes"])
        on_disk = du_bytes(state / "worktrees")
        seconds = []
        for _ in range(diffs):
            started = time.perf_counter()
            diff = await client.request("forkyard/agent/diff", {"agentId": made[-1]["id"]})
            seconds.append(time.perf_counter() - started)
            assert len(diff["files"]) == 3, diff["files"]
    finally:
        await stop(client, state)
    return counted, on_disk, seconds


def du_bytes(path: Path) -> int:
    done = subprocess.run(
        ["du", "-sx", "--block-size=1", str(path)], capture_output=True, text=True, check=True
    )
    return int(done.stdout.split()[0])


def gib(count: int) -> str:
    return f"{count / 2**30:.2f} GiB" if count >= 2**30 else f"{count / 2**20:.1f} MiB"


def ms(seconds: list[float]) -> str:
    values = [s * 1000 for s in seconds]
    return f"median {statistics.median(values):6.1f} ms, p95 {percentile(values, 0.95):6.1f} ms"


def run(args: argparse.Namespace, work: Path) -> None:
    repo = work / "repo"
    started = time.perf_counter()
    make_repo(repo, args.files, args.file_bytes)
    print(
        f"repository: {args.files} files of {args.file_bytes} bytes "
        f"(made in {time.perf_counter() - started:.1f} s), {args.runs} dispatches per line"
    )
    overlay, why = anyio.run(overlay_support, work)
    modes = ["overlay", "full"] if overlay else ["full"]
    if not overlay:
        print(f"  overlay worktrees cannot run here: {why}")
    os.sync()
    lines = [time_worktree_adds(repo, work / "plain", args.runs)]
    series: list[tuple[str, str, int]] = [("dispatch -> running, full, pooled", "full", 2)]
    series.append(("dispatch -> running, full, unpooled", "full", 0))
    if overlay:
        series.insert(0, ("dispatch -> running, overlay", "overlay", 0))
    for number, (name, mode, pool_size) in enumerate(series):
        os.sync()
        state = work / f"state-{number}"
        lines.append(anyio.run(dispatch_series, repo, state, name, mode, pool_size, args.runs))
        shutil.rmtree(state, ignore_errors=True)
    for line in lines:
        print(line.line())
    results: dict[str, tuple[int, int, list[float]]] = {}
    for mode in modes:
        os.sync()
        state = work / f"state-disk-{mode}"
        results[mode] = anyio.run(disk_and_diff, repo, state, mode, args.agents, args.diffs)
        shutil.rmtree(state, ignore_errors=True)
    for mode, (counted, on_disk, _seconds) in results.items():
        print(
            f"  {args.agents} agents x 3 changed files, {mode:<7}: {gib(counted)} "
            f"(forkyard status), {gib(on_disk)} (du -x)"
        )
    for mode, (_counted, _on_disk, seconds) in results.items():
        print(f"  diff of an agent with 3 changed files, {mode:<7}: {ms(seconds)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--file-bytes", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--diffs", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="300 files, 2 runs, 3 agents: CI")
    args = parser.parse_args()
    if args.quick:
        args.files, args.file_bytes, args.runs, args.agents, args.diffs = 300, 2_000, 2, 3, 2
    work = Path(tempfile.mkdtemp(prefix="forkyard-bench-overlay-"))
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"{os.cpu_count()} cores, load average {load} (the machine may be shared)")
    try:
        run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
