"""The daemon's one connection to Ray, and the bases it has shipped.

`ray.init` is per process, so one `ClusterDriver` serves every repository of the daemon.
Ray is imported on the first connection, in a worker thread (it is large, and
`ray.init` blocks); a "HOST:PORT" that does not answer fails in seconds, before Ray is
asked (it would retry for a minute). Bases go into the object store once per commit
and stay while agents may still need them (the newest few are kept).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import socket
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from forkyard.cluster.config import ClusterSettings
from forkyard.errors import InvalidRequest
from forkyard.settings import RoleConfig
from forkyard.workspace.git import Repository

logger = logging.getLogger(__name__)

#: Bases kept in the object store (per daemon) for agents still to come.
KEPT_BASES = 8
PROBE_SECONDS = 3.0


class ClusterUnavailable(InvalidRequest):
    """The configured cluster cannot run agents now; the message says why."""


def ray_module() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ClusterUnavailable(
            "placement: Ray is not installed; install Forkyard with its cluster extra "
            "(forkyard[cluster])"
        ) from exc
    return ray


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


@dataclass(frozen=True)
class Shipped:
    ref: Any
    size: int


class ClusterDriver:
    def __init__(self) -> None:
        self._ray: Any = None
        self._address: str | None = None
        self._lock = anyio.Lock()
        self._bases: OrderedDict[tuple[str, str], Shipped] = OrderedDict()
        self._ship_lock = anyio.Lock()
        self._host_class: Any = None

    @property
    def connected_to(self) -> str | None:
        return self._address

    async def connect(self, config: ClusterSettings) -> Any:
        """Ray, connected to `config.address`; ClusterUnavailable saying why not."""
        address = config.address
        if not address:
            raise ClusterUnavailable(
                'placement: no cluster is configured; set [cluster] address ("auto", '
                '"HOST:PORT", "ray://HOST:PORT" or "local")'
            )
        async with self._lock:
            same = self._ray is not None and self._address == address
            if same and await anyio.to_thread.run_sync(self._ray.is_initialized):
                return self._ray
            target = tcp_target(address)
            if target is not None:
                why = await anyio.to_thread.run_sync(probe, *target)
                if why is not None:
                    raise ClusterUnavailable(
                        f"placement: the cluster at {address} cannot be reached: {why}"
                    )
            ray = await anyio.to_thread.run_sync(ray_module)
            try:
                with anyio.fail_after(config.connect_timeout_seconds):
                    await anyio.to_thread.run_sync(
                        partial(_connect, ray, address), abandon_on_cancel=True
                    )
            except TimeoutError as exc:
                raise ClusterUnavailable(
                    f"placement: the cluster at {address} did not answer in "
                    f"{config.connect_timeout_seconds:g} s"
                ) from exc
            except Exception as exc:
                raise ClusterUnavailable(
                    f"placement: cannot join the cluster at {address}: {exc}"
                ) from exc
            self._ray, self._address = ray, address
            self._bases.clear()
            self._host_class = None
            logger.info("joined the Ray cluster at %s", address)
            return ray

    async def host(self, role: RoleConfig, *, node_id: str | None = None, soft: bool = True) -> Any:
        """A new actor for one agent's run, with the role's CPUs and memory reserved;
        on `node_id` when given (softly: elsewhere when that node is gone). Made in a
        worker thread: the first one exports the class to the cluster, which blocks."""
        return await anyio.to_thread.run_sync(partial(self._new_host, role, node_id, soft))

    async def call(self, method: Any, *args: Any) -> Any:
        """`method.remote(*args)` submitted off the loop (a submission may block on the
        cluster); the object ref (or stream of them) to await on it."""
        return await anyio.to_thread.run_sync(partial(method.remote, *args))

    def _new_host(self, role: RoleConfig, node_id: str | None, soft: bool) -> Any:
        ray = self._ray
        if self._host_class is None:
            from forkyard.cluster.node import AgentHost

            self._host_class = ray.remote(AgentHost)
        options: dict[str, Any] = {"num_cpus": role.num_cpus, "max_concurrency": 16}
        if role.memory_mb is not None:
            options["memory"] = role.memory_mb * 2**20
        if node_id is not None:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id, soft=soft)
        return self._host_class.options(**options).remote()

    async def ship(self, repository: Repository, repo_key: str, commit: str) -> Shipped:
        """`commit` (with its history) in the object store, bundled once per daemon."""
        key = (repo_key, commit)
        async with self._ship_lock:
            if (shipped := self._bases.get(key)) is not None:
                self._bases.move_to_end(key)
                return shipped
            data = await bundle_commit(repository, commit)
            ref = await anyio.to_thread.run_sync(self._ray.put, data)
            shipped = Shipped(ref, len(data))
            self._bases[key] = shipped
            while len(self._bases) > KEPT_BASES:
                self._bases.popitem(last=False)
            return shipped

    async def kill(self, host: Any) -> None:
        with contextlib.suppress(Exception):
            await anyio.to_thread.run_sync(partial(self._ray.kill, host, no_restart=True))

    async def node_id_of(self, address: str) -> str | None:
        nodes = await anyio.to_thread.run_sync(self._ray.nodes)
        for node in nodes:
            if node.get("Alive") and node.get("NodeManagerAddress") == address:
                return str(node["NodeID"])
        return None

    def errors(self) -> tuple[type[BaseException], ...]:
        """What Ray raises when an actor or its node is gone."""
        exceptions = self._ray.exceptions
        return (exceptions.RayActorError, exceptions.RayError)


def _connect(ray: Any, address: str) -> None:
    from ray._private import ray_constants

    # Workers run the node's own Python, never `uv run` of whatever started the daemon.
    ray_constants.RAY_ENABLE_UV_RUN_RUNTIME_ENV = False
    if ray.is_initialized():
        ray.shutdown()
    options: dict[str, Any] = {
        "logging_level": logging.WARNING,
        "log_to_driver": False,
        "namespace": "forkyard",
    }
    if address == "local":
        ray.init(address="local", include_dashboard=False, **options)
    else:
        ray.init(address=address, **options)


async def bundle_commit(repository: Repository, commit: str) -> bytes:
    """A bundle of `commit` and its history, under the ref a node fetches it by."""
    ref = f"refs/forkyard/ship/{commit}"
    scratch = await anyio.to_thread.run_sync(partial(tempfile.mkdtemp, prefix="forkyard-ship-"))
    path = Path(scratch) / "base.bundle"
    try:
        async with repository.write_lock:
            await repository.git("update-ref", ref, commit)
        await repository.git("bundle", "create", "--quiet", str(path), ref)
        return await anyio.Path(path).read_bytes()
    finally:
        async with repository.write_lock:
            await repository.git("update-ref", "-d", ref)
        await anyio.to_thread.run_sync(partial(_remove, Path(scratch)))


def _remove(path: Path) -> None:
    for child in path.iterdir():
        child.unlink()
    path.rmdir()


@functools.cache
def shared_driver() -> ClusterDriver:
    """The daemon's driver (made on first use; nothing of Ray is loaded by that)."""
    return ClusterDriver()
