"""The daemon's side of the cluster: a link to the bridge process that is the Ray driver.

Ray's driver lives in a child process of the daemon (`bridge.py`), never in the daemon:
Ray ends a driver's process when its cluster goes away, holds the GIL while it loads, and
starts threads and signal handlers of its own. Here the cluster going away is only a
link that ends: the cluster agents are `interrupted`, the daemon and every local agent run
on, and the next cluster dispatch starts a new bridge.

Frames are a 4-byte length and a pickle, both ways, over the bridge's pipes: the bridge
is this program, started by the daemon, as the daemon's user (no one else's bytes).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import pickle
import struct
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from forkyard.cluster.config import ClusterSettings
from forkyard.cluster.protocol import Collected, NodeEvent, NodeSpec, Prepared
from forkyard.errors import InvalidRequest
from forkyard.settings import RoleConfig

logger = logging.getLogger(__name__)

HEADER = struct.Struct(">I")
#: A frame larger than this ends the link (a result bundle travels as a file).
MAX_FRAME = 64 << 20
RUN_BUFFER = 64


class ClusterUnavailable(InvalidRequest):
    """The configured cluster cannot run agents now; the message says why."""


class NodeLost(Exception):
    """The worker or node running an agent, or the whole cluster, went away."""


def encode(message: Any) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(body)) + body


@dataclass
class _Pending:
    done: anyio.Event = field(default_factory=anyio.Event)
    reply: dict[str, Any] | None = None


class BridgeLink:
    """One bridge process and the requests and run streams over it."""

    def __init__(self, process: Process, address: str) -> None:
        self.process = process
        self.address = address
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._runs: dict[int, MemoryObjectSendStream[dict[str, Any]]] = {}
        self._write_lock = anyio.Lock()
        self.ended: str | None = None

    @classmethod
    async def start(cls, scratch: Path, address: str, *, quiet: bool = False) -> BridgeLink:
        """The bridge's stderr is the daemon's (its log) unless `quiet`."""
        process = await anyio.open_process(
            [sys.executable, "-m", "forkyard.cluster.bridge", str(scratch)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL if quiet else None,
            start_new_session=True,
        )
        return cls(process, address)

    async def read_forever(self) -> None:
        """The bridge's frames, to whoever waits for them; when it ends, everyone waiting
        hears NodeLost."""
        assert self.process.stdout is not None
        stream = BufferedByteReceiveStream(self.process.stdout)
        reason = "the cluster bridge exited"
        try:
            while True:
                size = HEADER.unpack(await stream.receive_exactly(HEADER.size))[0]
                if size > MAX_FRAME:
                    reason = f"the cluster bridge sent a frame of {size} bytes"
                    break
                message = pickle.loads(await stream.receive_exactly(size))
                self._deliver(message)
        except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError):
            pass
        except Exception as exc:
            reason = f"the cluster bridge failed: {exc}"
            logger.warning("cluster bridge: %s", reason)
        finally:
            self._end(reason)

    def _deliver(self, message: dict[str, Any]) -> None:
        if "run" in message:
            stream = self._runs.get(message["run"])
            if stream is not None:
                with contextlib.suppress(anyio.WouldBlock, anyio.BrokenResourceError):
                    stream.send_nowait(message)
            return
        pending = self._pending.pop(message.get("id", -1), None)
        if pending is not None:
            pending.reply = message
            pending.done.set()

    def _end(self, reason: str) -> None:
        self.ended = reason
        for pending in self._pending.values():
            pending.done.set()
        self._pending.clear()
        for stream in self._runs.values():
            stream.close()
        self._runs.clear()

    async def _send(self, message: dict[str, Any]) -> None:
        if self.ended is not None or self.process.stdin is None:
            raise NodeLost(self.ended or "the cluster bridge is gone")
        async with self._write_lock:
            try:
                await self.process.stdin.send(encode(message))
            except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
                raise NodeLost("the cluster bridge is gone") from exc

    async def call(self, op: str, **args: Any) -> Any:
        """One request to the bridge; its answer, or the error it names."""
        request_id = next(self._ids)
        pending = self._pending[request_id] = _Pending()
        try:
            await self._send({"id": request_id, "op": op, **args})
            await pending.done.wait()
        finally:
            self._pending.pop(request_id, None)
        reply = pending.reply
        if reply is None:
            raise NodeLost(self.ended or "the cluster bridge is gone")
        if "error" in reply:
            kind, text = reply["error"]
            if kind == "unavailable":
                raise ClusterUnavailable(text)
            if kind == "lost":
                raise NodeLost(text)
            raise RuntimeError(text)
        return reply.get("value")

    async def stream(self, op: str, **args: Any) -> AsyncIterator[dict[str, Any]]:
        """A request whose answer is a stream of frames, until one says `end`."""
        run_id = next(self._ids)
        send, receive = anyio.create_memory_object_stream[dict[str, Any]](RUN_BUFFER)
        self._runs[run_id] = send
        try:
            await self._send({"op": op, "run": run_id, **args})
            async for message in _until_end(receive):
                yield message
        finally:
            self._runs.pop(run_id, None)
            send.close()
            receive.close()
        if self.ended is not None:
            raise NodeLost(self.ended)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            if self.process.stdin is not None:
                await self.process.stdin.aclose()
        with anyio.move_on_after(10):
            await self.process.wait()
        if self.process.returncode is None:
            self.process.kill()


async def _until_end(
    receive: MemoryObjectReceiveStream[dict[str, Any]],
) -> AsyncIterator[dict[str, Any]]:
    async for message in receive:
        if message.get("end"):
            if "error" in message:
                raise NodeLost(message["error"])
            return
        yield message


class RemoteHost:
    """One agent's actor on the cluster, as the daemon holds it: an id at the bridge."""

    def __init__(self, link: BridgeLink, host_id: str, where: dict[str, Any]) -> None:
        self.link = link
        self.host_id = host_id
        self.where = where

    async def prepare(self, spec: NodeSpec, ship_key: str) -> Prepared:
        prepared: Prepared = await self.link.call(
            "prepare", host=self.host_id, spec=spec, ship=ship_key
        )
        return prepared

    async def run(self, spec: NodeSpec, instruction: str) -> AsyncIterator[list[NodeEvent]]:
        async for message in self.link.stream(
            "run", host=self.host_id, spec=spec, instruction=instruction
        ):
            yield message["batch"]

    async def answer(self, request_id: str, answer: str) -> None:
        await self.link.call("answer", host=self.host_id, request=request_id, answer=answer)

    async def refuse(self, error: str) -> None:
        await self.link.call("refuse", host=self.host_id, error=error)

    async def stop(self) -> None:
        await self.link.call("stop", host=self.host_id)

    async def collect(self, spec: NodeSpec, message: str, bundle: Path) -> Collected:
        """Its work committed on the node; a bundle of it written to `bundle`."""
        collected: Collected = await self.link.call(
            "collect", host=self.host_id, spec=spec, message=message, out=str(bundle)
        )
        return collected

    async def kill(self) -> None:
        with contextlib.suppress(Exception):
            await self.link.call("kill", host=self.host_id)


__all__ = [
    "BridgeLink",
    "ClusterSettings",
    "ClusterUnavailable",
    "NodeLost",
    "RemoteHost",
    "RoleConfig",
]
