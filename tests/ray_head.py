"""A single-node Ray cluster on this machine for the cluster tests and benchmark:
`ray start --head` on 127.0.0.1 with its own temporary directory and node folder,
stopped (and waited for) afterwards."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

START_SECONDS = 120


@dataclass(frozen=True)
class RayHead:
    address: str
    #: Where the node keeps repositories and worktrees (`FORKYARD_NODE_DIR`).
    node_dir: Path


def ray_program() -> Path | None:
    """The `ray` of this environment; None when Ray is not installed."""
    found = Path(sys.executable).with_name("ray")
    return found if found.exists() else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def ray_head(num_cpus: int = 8) -> Iterator[RayHead]:
    """`num_cpus` is Ray's logical count (agents reserve one each), not this machine's."""
    program = ray_program()
    if program is None:
        raise RuntimeError("Ray is not installed: run ./setup.sh (it installs forkyard[cluster])")
    # Ray's socket paths must stay short: a folder right under /tmp.
    temp = Path(tempfile.mkdtemp(prefix="fy-ray-", dir="/tmp"))
    node_dir = temp / "node"
    port = free_port()
    env = {
        **os.environ,
        "FORKYARD_NODE_DIR": str(node_dir),
        "RAY_USAGE_STATS_ENABLED": "0",
        # Workers start when an agent needs one, not all at once when a driver joins.
        "RAY_prestart_worker_first_driver": "0",
        # A token file a local `ray.init()` left in this HOME would turn token auth on,
        # and the daemons of the tests (each with a HOME of its own) could not join.
        "RAY_AUTH_MODE": "disabled",
    }
    # The cluster shares this machine with the editor's server: at background priority,
    # as agents run, so that starting Ray's workers cannot starve its event loop.
    command = [
        "nice", "-n", "10", str(program), "start", "--head", f"--port={port}",
        "--node-ip-address=127.0.0.1",
        f"--num-cpus={num_cpus}", "--include-dashboard=false", "--disable-usage-stats",
        # Ports Ray would otherwise take at fixed numbers.
        f"--ray-client-server-port={free_port()}", f"--dashboard-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--temp-dir={temp / 'ray'}",
    ]  # fmt: skip
    subprocess.run(command, env=env, check=True, timeout=START_SECONDS, capture_output=True)
    # Ready when its control service says it is healthy (it may lag its port).
    health = [str(program), "health-check", "--address", f"127.0.0.1:{port}"]
    deadline = time.monotonic() + START_SECONDS
    while subprocess.run(health, env=env, check=False, capture_output=True).returncode != 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the Ray head on port {port} did not become healthy")
    try:
        yield RayHead(f"127.0.0.1:{port}", node_dir)
    finally:
        stop_ray()
        unmount_below(temp)
        shutil.rmtree(temp, ignore_errors=True)


def unmount_below(folder: Path) -> None:
    """The overlay worktrees the node mounted under `folder` (deepest first): a node keeps
    its agents' worktrees mounted for their follow-ups."""
    prefix = str(folder) + "/"
    points = [
        line.split()[1]
        for line in Path("/proc/self/mounts").read_text().splitlines()
        if line.split()[1].startswith(prefix)
    ]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)


def stop_ray() -> None:
    """`ray stop --force`: every Ray process of this user on this machine (the tests run
    one cluster at a time)."""
    program = ray_program()
    if program is not None:
        command = [str(program), "stop", "--force"]
        subprocess.run(command, check=False, timeout=START_SECONDS, capture_output=True)
