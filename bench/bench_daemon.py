"""What the daemon design costs (issue 14): `forkyard serve` is a front that forwards to
`forkyard daemon` over a Unix socket, where it used to do everything in one process.

In one run, against real processes (each in its own temporary state directory):

1. round trip of `forkyard/agent/list` and of `forkyard/chat` ("/agents": until the
   response, not the reply) through the front, idle and while N `command` agents churn
   (write files in a loop), p50/p99/max;
2. the time from starting `forkyard serve` to its first answered request
   (`forkyard/agent/list` right after `initialize`), with the daemon already running
   (warm) and with none (cold: the front starts it);
3. the daemon's resident memory (VmRSS) with 0, 100 and 1,000 finished agents in the
   store, and the front's beside it.

    uv run python bench/bench_daemon.py [--samples 200] [--agents 16] [--churn-seconds 8]
    uv run python bench/bench_daemon.py --quick       # CI: small sizes, well under a minute
    uv run python bench/bench_daemon.py --compare /work/fy-inproc

`--server-python PATH` measures the server that Python runs (default: this one);
`--compare CHECKOUT` measures also CHECKOUT/.venv/bin/python (e.g. a worktree of the
last in-process commit, aaea6c6, after `uv sync`) and prints both side by side; it is
skipped when CHECKOUT does not exist. An in-process server has no daemon: its figures are
those of the one `serve` process. Every daemon started is stopped, also on failure.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from bench_dispatch import make_repo, percentile, require_done
from forkyard.client import ForkyardClient
from forkyard.daemon.control import stop_and_wait
from forkyard.daemon.paths import DaemonPaths, read_pid
from forkyard.orchestrator.orchestrator import repository_key
from forkyard.store import Store
from forkyard_protocol.models import Agent

FINAL = {"done", "failed", "cancelled", "interrupted", "applied", "discarded"}


@dataclass
class Design:
    """One server to measure: its Python, whether `serve` is a front of a daemon, and
    every state directory it used (so that each daemon can be stopped)."""

    label: str
    python: str
    daemon: bool
    states: list[Path] = field(default_factory=list)
    rows: list[tuple[str, str]] = field(default_factory=list)


def uses_daemon(python: str) -> bool:
    probe = [python, "-c", "import forkyard.daemon.link"]
    return subprocess.run(probe, capture_output=True, check=False).returncode == 0


def figures(seconds: list[float]) -> str:
    ms = [s * 1000 for s in seconds]
    return (
        f"p50 {percentile(ms, 0.5):7.2f}  p99 {percentile(ms, 0.99):7.2f}  "
        f"max {max(ms):7.2f} ms (n={len(ms)})"
    )


def rss_mb(pid: int | None) -> float | None:
    """VmRSS of `pid` in MB, None when it is not running."""
    if pid is None:
        return None
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


async def start_front(
    design: Design, repo: Path, state: Path, options: dict[str, Any] | None = None
) -> ForkyardClient:
    if state not in design.states:
        design.states.append(state)
    env = {**os.environ, "FORKYARD_STATE_DIR": str(state)}
    command = [design.python, "-m", "forkyard.cli", "serve"]
    return await ForkyardClient.start(
        repo, env, initialization_options=options, server_command=command
    )


async def stop_daemon(state: Path) -> None:
    """Stop the daemon of `state` if one answers; kill one that is left but will not."""
    with anyio.move_on_after(30):
        if await stop_and_wait(state, now=True):
            return
    pid = read_pid(DaemonPaths(state))
    if pid is None:
        return
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return
    if b"daemon" in command and os.fsencode(state) in command:
        os.kill(pid, signal.SIGKILL)


# --- 1. round trips, idle and while agents churn ------------------------------------------


async def sample_once(client: ForkyardClient, thread: str, timings: dict[str, list[float]]) -> None:
    started = time.perf_counter()
    await client.request("forkyard/agent/list", {})
    timings["forkyard/agent/list"].append(time.perf_counter() - started)
    started = time.perf_counter()
    await client.request("forkyard/chat", {"text": "/agents", "threadId": thread})
    timings["forkyard/chat"].append(time.perf_counter() - started)


def most_running_at_once(updates: list[dict[str, Any]]) -> int:
    states: dict[str, str] = {}
    most = 0
    for agent in updates:
        states[agent["id"]] = agent["state"]
        most = max(most, sum(1 for state in states.values() if state == "running"))
    return most


async def round_trips(
    design: Design, repo: Path, state: Path, samples: int, agents: int, churn_seconds: float
) -> None:
    options = {"maxParallelAgents": agents}
    client = await start_front(design, repo, state, options)
    idle: dict[str, list[float]] = {"forkyard/agent/list": [], "forkyard/chat": []}
    churn: dict[str, list[float]] = {"forkyard/agent/list": [], "forkyard/chat": []}
    try:
        thread = (await client.request("forkyard/chat", {"text": "/agents"}))["threadId"]
        for _ in range(samples):
            await sample_once(client, thread, idle)
        # Each agent writes files for `churn_seconds` (a `date` per turn: real processes).
        command = (
            f"end=$(( $(date +%s) + {max(1, round(churn_seconds))} )); i=0; "
            'while [ "$(date +%s)" -lt "$end" ]; do i=$((i+1)); '
            "echo $i > out_$((i % 100)).txt; done; git status --short | wc -l"
        )
        ids: list[str] = []
        started = time.perf_counter()
        async with anyio.create_task_group() as group:

            async def dispatch_all() -> None:
                for n in range(agents):
                    agent = await client.dispatch(command, backend="command", title=f"churn {n}")
                    ids.append(agent["id"])

            group.start_soon(dispatch_all)
            # Sample from the first dispatch until every agent has ended.
            while len(ids) < agents or any(
                client.agents.get(i, {}).get("state") not in FINAL for i in ids
            ):
                await sample_once(client, thread, churn)
        elapsed = time.perf_counter() - started
        for agent_id in ids:
            require_done(await client.wait_for_agent(agent_id, timeout=600))
        most = most_running_at_once(client.agent_updates)
    finally:
        await client.stop()
    for method in ("forkyard/agent/list", "forkyard/chat"):
        design.rows.append((f"{method} idle", figures(idle[method])))
        design.rows.append((f"{method} churn", figures(churn[method])))
    design.rows.append(
        (f"churn: {agents} agents, {churn_seconds:g} s each", f"{elapsed:.1f} s, {most} at once")
    )


# --- 2. process start -> first answer -----------------------------------------------------


async def first_answer(design: Design, repo: Path, state: Path) -> tuple[float, float]:
    """(start -> initialize answered, start -> first `forkyard/agent/list` answered)."""
    started = time.perf_counter()
    client = await start_front(design, repo, state)
    try:
        initialized = time.perf_counter() - started
        await client.request("forkyard/agent/list", {})
        answered = time.perf_counter() - started
    finally:
        await client.stop()
    return initialized, answered


def startup_figures(times: list[tuple[float, float]]) -> str:
    ms = sorted(t[1] * 1000 for t in times)
    init = sorted(t[0] * 1000 for t in times)
    return (
        f"p50 {percentile(ms, 0.5):6.0f}  max {max(ms):6.0f} ms "
        f"(init p50 {percentile(init, 0.5):.0f}; n={len(ms)})"
    )


async def startups(design: Design, repo: Path, state: Path, runs: int) -> None:
    """Cold runs first (the daemon stopped before each), then warm ones; one unmeasured
    start before them all, so that none of them creates the store."""
    cold: list[tuple[float, float]] = []
    warm: list[tuple[float, float]] = []
    await first_answer(design, repo, state)
    for _ in range(runs):
        if design.daemon:
            await stop_daemon(state)
        cold.append(await first_answer(design, repo, state))
    if design.daemon:
        for _ in range(runs):
            warm.append(await first_answer(design, repo, state))
        await stop_daemon(state)
    warm_cell = startup_figures(warm) if warm else "- (no daemon)"
    design.rows.append(("start -> first answer, daemon running (warm)", warm_cell))
    design.rows.append(("start -> first answer, none running (cold)", startup_figures(cold)))


# --- 3. memory with N agents in the store -------------------------------------------------


async def fill_store(state: Path, repo: Path, count: int) -> None:
    key = repository_key(repo)
    async with await Store.open(state) as store:
        for index in range(count):
            number = await store.next_agent_number(key)
            stamp = f"2026-01-01T{index // 3600 % 24:02d}:{index // 60 % 60:02d}:{index % 60:02d}Z"
            agent = Agent(
                id=f"bench-{index:05d}",
                number=number,
                title=f"finished agent {number}",
                task=f"an old task number {number}: refactor module {index} and add tests",
                role="worker",
                backend="command",
                state="done" if index % 4 else "failed",
                base_ref="0" * 40,
                branch=f"forkyard/bench-{index:05d}",
                created_at=stamp,
                updated_at=stamp,
                summary=f"changed {index % 7 + 1} files" if index % 4 else None,
                error=None if index % 4 else "exit status 1",
            )
            await store.save_agent(key, agent)


async def memory(design: Design, repo: Path, work: Path, count: int) -> None:
    state = work / f"state-memory-{count}"
    await fill_store(state, repo, count)
    client = await start_front(design, repo, state)
    try:
        listed = len((await client.request("forkyard/agent/list", {}))["agents"])
        if listed != count:
            raise SystemExit(f"the store held {count} agents but the server listed {listed}")
        process = client.server_process
        front = rss_mb(process.pid if process is not None else None)
        daemon = rss_mb(read_pid(DaemonPaths(state))) if design.daemon else None
    finally:
        await client.stop()
        if design.daemon:
            await stop_daemon(state)
    if design.daemon:
        if daemon is None or front is None:
            raise SystemExit(f"no RSS to read: daemon {daemon}, front {front} ({state})")
        cell = f"daemon {daemon:5.1f} + front {front:5.1f} = {daemon + front:5.1f} MB"
    else:
        cell = f"server {front or 0:5.1f} MB (one process)"
    design.rows.append((f"RSS with {count:>5} agents in the store", cell))


# --- running and printing -----------------------------------------------------------------


async def measure(designs: list[Design], work: Path, args: argparse.Namespace) -> None:
    """Phase by phase, each design in turn (so that a busy machine's drift falls on all
    of them alike), each with its own repository and state directories."""
    repos: list[Path] = []
    for index in range(len(designs)):
        make_repo(work / f"repo{index}", args.files, 2_000)
        repos.append((work / f"repo{index}").resolve())
    places = [
        (design, repo, work / f"design{index}")
        for index, (design, repo) in enumerate(zip(designs, repos, strict=True))
    ]
    try:
        for design, repo, where in places:
            await round_trips(
                design, repo, where / "trips", args.samples, args.agents, args.churn_seconds
            )
        for design, repo, where in places:
            await startups(design, repo, where / "start", args.startups)
        for count in args.store_sizes:
            for design, repo, where in places:
                await memory(design, repo, where, count)
    finally:
        with anyio.CancelScope(shield=True):  # also when interrupted
            for design in designs:
                for state in design.states if design.daemon else []:
                    await stop_daemon(state)


def print_table(designs: list[Design]) -> None:
    names: list[str] = []
    for design in designs:
        names += [name for name, _ in design.rows if name not in names]
    width = max(len(name) for name in names) + 2
    cells: list[dict[str, str]] = [dict(design.rows) for design in designs]
    column = max(len(cell) for row in cells for cell in row.values()) + 3
    print(f"{'':<{width}}" + "".join(f"{d.label:<{column}}" for d in designs).rstrip())
    for name in names:
        line = f"{name:<{width}}" + "".join(f"{row.get(name, '-'):<{column}}" for row in cells)
        print(line.rstrip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--server-python", default=sys.executable)
    parser.add_argument(
        "--compare", type=Path, help="a checkout with .venv (or a Python): measured too"
    )
    parser.add_argument("--files", type=int, default=2_000, help="files in the repository")
    parser.add_argument("--samples", type=int, default=200, help="idle samples per method")
    parser.add_argument("--agents", type=int, default=16, help="agents churning at once")
    parser.add_argument("--churn-seconds", type=float, default=8.0)
    parser.add_argument("--startups", type=int, default=8, help="runs of each start kind")
    parser.add_argument("--store-sizes", type=int, nargs="+", default=[0, 100, 1000])
    parser.add_argument(
        "--quick", action="store_true", help="200 files, 4 agents, few samples: for CI"
    )
    args = parser.parse_args()
    if args.quick:
        args.files, args.samples, args.agents, args.churn_seconds = 200, 20, 4, 2.0
        args.startups, args.store_sizes = 2, [0, 100]
    designs = [Design("", args.server_python, uses_daemon(args.server_python))]
    if args.compare is not None:
        python = args.compare if args.compare.is_file() else args.compare / ".venv/bin/python"
        if python.exists():
            designs.append(Design("", str(python), uses_daemon(str(python))))
        else:
            print(f"--compare: no {python}; measuring {args.server_python} only")
    for design in designs:
        kind = "daemon + front" if design.daemon else "in-process"
        checkout = Path(design.python).parents[2].name or design.python
        design.label = f"{kind} ({checkout})"
    work = Path(tempfile.mkdtemp(prefix="forkyard-bench-"))
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    try:
        anyio.run(measure, designs, work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_table(designs)
    print(
        f"(measured in {time.perf_counter() - started:.0f} s on {os.cpu_count()} CPUs; "
        f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after)"
    )


if __name__ == "__main__":
    main()
