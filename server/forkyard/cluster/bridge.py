"""`python -m forkyard.cluster.bridge SCRATCH`: the Ray driver, in a process of its own.

The daemon starts one per repository with cluster agents and speaks to it in frames
(`link.py`) on its stdin and stdout. Here are the Ray calls: joining the cluster (a
"HOST:PORT" that does not answer fails in seconds, before Ray is asked, which would
retry for a minute), bases put in the object store once, one actor per agent run, its
event stream passed on, its result bundle written to the file the daemon names. Ray's
errors go back as "lost" (an actor or node gone); when the daemon closes stdin the bridge
exits, and Ray ends the actors it owns, and with them their processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import pickle
import socket
import sys
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, BinaryIO

from forkyard.cluster.link import HEADER, MAX_FRAME, encode
from forkyard.cluster.protocol import Collected

logger = logging.getLogger("forkyard.cluster.bridge")

PROBE_SECONDS = 3.0
#: The cluster is watched every WATCH_SECONDS; this many failed probes in a row end it.
WATCH_SECONDS = 2.0
WATCH_FAILURES = 2
#: Bases kept in the object store for agents still to come.
KEPT_BASES = 8


class Unavailable(Exception):
    """The cluster cannot be joined; said to the person as is."""


def tcp_target(address: str) -> tuple[str, int] | None:
    """HOST:PORT of an address Ray would connect to, or None for "auto" and "local"."""
    spec = address.removeprefix("ray://")
    host, sep, port = spec.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]") or "127.0.0.1", int(port)


def probe(host: str, port: int, timeout: float = PROBE_SECONDS) -> str | None:
    """Why HOST:PORT cannot be reached, or None when something listens there."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return exc.strerror or str(exc)


def import_ray() -> Any:
    try:
        import ray
        from ray._private import ray_constants
    except ImportError as exc:
        raise Unavailable(
            "placement: Ray is not installed; install Forkyard with its cluster extra "
            "(forkyard[cluster])"
        ) from exc
    # Workers run the node's own Python, never `uv run` of whatever started the daemon.
    ray_constants.RAY_ENABLE_UV_RUN_RUNTIME_ENV = False
    return ray


def join(address: str, timeout: float) -> Any:
    """Ray, joined to the cluster at `address` (blocking: called in a thread)."""
    target = tcp_target(address)
    if target is not None and (why := probe(*target)) is not None:
        raise Unavailable(f"placement: the cluster at {address} cannot be reached: {why}")
    ray = import_ray()
    options: dict[str, Any] = {
        "logging_level": logging.ERROR,
        "log_to_driver": False,
        "namespace": "forkyard",
    }
    deadline = time.monotonic() + timeout
    while True:
        try:
            if address == "local":
                ray.init(address="local", include_dashboard=False, **options)
            else:
                ray.init(address=address, **options)
        except ConnectionError as exc:
            # A busy head answers its port before its services: try again until the
            # timeout, as a person would.
            with contextlib.suppress(Exception):
                ray.shutdown()
            if time.monotonic() > deadline:
                raise Unavailable(
                    f"placement: cannot join the cluster at {address}: {exc}"
                ) from exc
        except Exception as exc:
            raise Unavailable(f"placement: cannot join the cluster at {address}: {exc}") from exc
        else:
            return ray


class Bridge:
    def __init__(self, scratch: Path, out: BinaryIO) -> None:
        self.scratch = scratch
        self.out = out
        self.ray: Any = None
        self.address: str | None = None
        self.bases: OrderedDict[str, Any] = OrderedDict()
        self.hosts: dict[str, Any] = {}
        self._ids = itertools.count(1)
        self._host_class: Any = None
        self._write = threading.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._watch: asyncio.Future[None] | None = None

    # --- frames -----------------------------------------------------------------------

    def send(self, message: dict[str, Any]) -> None:
        data = encode(message)
        with self._write:
            self.out.write(data)
            self.out.flush()

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            message = await loop.run_in_executor(None, read_frame)
            if message is None:
                return
            task = asyncio.ensure_future(self.handle(message))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def handle(self, message: dict[str, Any]) -> None:
        op = message.pop("op")
        if "run" in message:
            await self.run_stream(message)
            return
        request_id = message.pop("id")
        try:
            value = await getattr(self, f"op_{op}")(**message)
            reply: dict[str, Any] = {"id": request_id, "value": value}
        except Unavailable as exc:
            reply = {"id": request_id, "error": ("unavailable", str(exc))}
        except Exception as exc:
            kind = "lost" if self._is_lost(exc) else "error"
            reply = {"id": request_id, "error": (kind, _first_line(exc))}
        await asyncio.to_thread(self.send, reply)

    def _is_lost(self, exc: BaseException) -> bool:
        if self.ray is None:
            return False
        errors = self.ray.exceptions
        return isinstance(exc, errors.RayActorError | errors.RayError | asyncio.CancelledError)

    # --- the cluster ------------------------------------------------------------------

    async def op_connect(self, address: str, timeout: float) -> None:
        if self.ray is not None and self.address == address:
            return
        if self.ray is not None:
            raise Unavailable("placement: this bridge serves another cluster")
        try:
            self.ray = await asyncio.wait_for(asyncio.to_thread(join, address, timeout), timeout)
        except TimeoutError as exc:
            raise Unavailable(
                f"placement: the cluster at {address} did not answer in {timeout:g} s"
            ) from exc
        self.address = address
        gcs = tcp_target(self.ray.get_runtime_context().gcs_address)
        if gcs is not None:
            self._watch = asyncio.ensure_future(watch_cluster(*gcs))

    async def op_ship(self, key: str, path: str) -> int:
        data = await asyncio.to_thread(Path(path).read_bytes)
        self.bases[key] = await asyncio.to_thread(self.ray.put, data)
        while len(self.bases) > KEPT_BASES:
            self.bases.popitem(last=False)
        return len(data)

    async def op_host(self, num_cpus: float, memory_mb: int | None, node_id: str | None,
                      soft: bool) -> tuple[str, dict[str, Any]]:  # fmt: skip
        ray = self.ray
        if self._host_class is None:
            from forkyard.cluster.node import AgentHost

            self._host_class = ray.remote(AgentHost)
        options: dict[str, Any] = {"num_cpus": num_cpus, "max_concurrency": 16}
        if memory_mb is not None:
            options["memory"] = memory_mb * 2**20
        if node_id is not None:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id, soft=soft)
        actor = self._host_class.options(**options).remote()
        host_id = f"host-{next(self._ids)}"
        self.hosts[host_id] = actor
        where: dict[str, Any] = await actor.where.remote()
        return host_id, where

    async def op_node_id(self, address: str) -> str | None:
        for node in await asyncio.to_thread(self.ray.nodes):
            if node.get("Alive") and node.get("NodeManagerAddress") == address:
                return str(node["NodeID"])
        return None

    async def op_check(self) -> dict[str, Any]:
        ray = self.ray
        nodes = await asyncio.to_thread(ray.nodes)
        alive = [n for n in nodes if n.get("Alive")]
        free = await asyncio.to_thread(ray.available_resources)
        total = await asyncio.to_thread(ray.cluster_resources)

        @ray.remote(num_cpus=0)  # type: ignore[untyped-decorator]
        def node_forkyard() -> str:
            from forkyard import __version__

            return str(__version__)

        version = await node_forkyard.remote()
        return {
            "address": self.address,
            "rayVersion": ray.__version__,
            "nodes": [n["NodeManagerAddress"] for n in alive],
            "cpus": total.get("CPU", 0.0),
            "freeCpus": free.get("CPU", 0.0),
            "nodeForkyard": version,
        }

    # --- one agent's actor -------------------------------------------------------------

    async def op_prepare(self, host: str, spec: Any, ship: str) -> Any:
        base = self.bases.get(ship)
        if base is None:
            raise RuntimeError(f"the base {ship} was not shipped")
        return await self.hosts[host].prepare.remote(spec, [base])

    async def run_stream(self, message: dict[str, Any]) -> None:
        run_id = message["run"]
        end: dict[str, Any] = {"run": run_id, "end": True}
        try:
            actor = self.hosts[message["host"]]
            async for ref in actor.run.remote(message["spec"], message["instruction"]):
                batch = await ref
                await asyncio.to_thread(self.send, {"run": run_id, "batch": batch})
        except Exception as exc:
            end["error"] = _first_line(exc)
        except asyncio.CancelledError:
            end["error"] = "the cluster stopped answering"
        await asyncio.to_thread(self.send, end)

    async def op_answer(self, host: str, request: str, answer: str) -> None:
        await self.hosts[host].answer.remote(request, answer)

    async def op_refuse(self, host: str, error: str) -> None:
        await self.hosts[host].refuse.remote(error)

    async def op_stop(self, host: str) -> None:
        await self.hosts[host].stop.remote()

    async def op_collect(self, host: str, spec: Any, message: str, out: str) -> Collected:
        got: Collected = await self.hosts[host].collect.remote(spec, message)
        if got.bundle is None:
            return got
        await asyncio.to_thread(Path(out).write_bytes, got.bundle)
        return Collected(got.commit, None, got.problem, size=len(got.bundle))

    async def op_kill(self, host: str) -> None:
        actor = self.hosts.pop(host, None)
        if actor is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.ray.kill, actor, no_restart=True)


async def watch_cluster(host: str, port: int) -> None:
    """Exit as soon as the cluster's control service stops answering: the daemon then
    sees this bridge end and its agents' runs lost at once (Ray itself would notice only
    after a minute of retries, then end this process all the same)."""
    failures = 0
    while failures < WATCH_FAILURES:
        await asyncio.sleep(WATCH_SECONDS)
        failed = await asyncio.to_thread(probe, host, port, WATCH_SECONDS)
        failures = failures + 1 if failed else 0
    logger.warning("the cluster at %s:%s stopped answering; the bridge ends", host, port)
    os._exit(3)


def read_frame() -> dict[str, Any] | None:
    """The daemon's next frame; None when it closed the pipe (then the bridge exits)."""
    stream = sys.stdin.buffer
    header = stream.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    size = HEADER.unpack(header)[0]
    if size > MAX_FRAME:
        return None
    body = stream.read(size)
    if len(body) < size:
        return None
    message: dict[str, Any] = pickle.loads(body)
    return message


def _first_line(exc: BaseException) -> str:
    """What went wrong, in a line: for an error raised on a node, the node's own
    exception (Ray's wrapper's first line only names the task)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        exc = cause
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:300]


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    scratch = Path(sys.argv[1]) if len(sys.argv) > 1 else Path.cwd()
    # Frames go out on a private copy of stdout; whatever Ray prints lands on stderr.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(Bridge(scratch, out).serve())
    # Ray's own threads must not keep a bridge whose daemon is gone alive.
    os._exit(0)


if __name__ == "__main__":
    main()
