"""Hostile input on the server's stdio: raw bytes written to the real `forkyard serve`,
framed answers read back with bounded waits. Every bad message gets its answer (code and
a short message), the next valid request on the same connection is answered, and the
process stays alive and small."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.fakes.agent_context import processes_in

pytestmark = pytest.mark.timeout(120)

MiB = 1024 * 1024


def frame(body: bytes | str, header: str = "Content-Length") -> bytes:
    data = body.encode() if isinstance(body, str) else body
    return f"{header}: {len(data)}\r\n\r\n".encode() + data


def message(**fields: Any) -> bytes:
    return frame(json.dumps({"jsonrpc": "2.0", **fields}))


class RawServer:
    """`forkyard serve` over pipes, spoken to byte by byte."""

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        stderr: Path,
        streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None,
    ) -> None:
        self.process = process
        self.stderr = stderr
        if streams is None:
            assert process.stdout is not None and process.stdin is not None
            streams = (process.stdout, process.stdin)
        self.reader, self.writer = streams
        self.notifications: list[dict[str, Any]] = []
        self._next_id = 1000

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_message(self, timeout: float = 20.0) -> dict[str, Any]:
        """The next framed message from the server, its body at most 1 MiB."""
        stdout = self.reader
        with anyio.fail_after(timeout):
            length = None
            while True:
                line = await stdout.readline()
                assert line, f"the server closed stdout; stderr:\n{self.stderr_tail()}"
                if not line.strip():
                    break
                name, _, value = line.decode().partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            assert length is not None and length < MiB, length
            body = await stdout.readexactly(length)
        answer: dict[str, Any] = json.loads(body)
        answer["_size"] = length
        return answer

    async def answer_to(self, msg_id: Any, timeout: float = 20.0) -> dict[str, Any]:
        """Read until the answer to `msg_id`; notifications are kept, requests from the
        server answered with null."""
        while True:
            got = await self.read_message(timeout)
            if "method" in got:
                if "id" in got:
                    await self.send(message(id=got["id"], result=None))
                else:
                    self.notifications.append(got)
                continue
            if got.get("id") == msg_id:
                return got

    async def notification(self, predicate: Any, timeout: float = 30.0) -> dict[str, Any]:
        """The first notification (kept or arriving) that `predicate` accepts."""
        with anyio.fail_after(timeout):
            while True:
                for seen in self.notifications:
                    if predicate(seen):
                        return seen
                got = await self.read_message(timeout)
                if "method" in got and "id" in got:
                    await self.send(message(id=got["id"], result=None))
                elif "method" in got:
                    self.notifications.append(got)

    async def request(self, method: str, params: Any = None, **extra: Any) -> dict[str, Any]:
        self._next_id += 1
        fields: dict[str, Any] = {"id": self._next_id, "method": method, **extra}
        if params is not None:
            fields["params"] = params
        await self.send(message(**fields))
        return await self.answer_to(self._next_id)

    async def initialize(self, repo: Path) -> None:
        answer = await self.request(
            "initialize",
            {"processId": None, "rootUri": repo.as_uri(), "capabilities": {}},
        )
        assert "result" in answer, answer
        await self.send(message(method="initialized", params={}))

    async def still_serving(self) -> None:
        answer = await self.request("forkyard/agent/list", {})
        assert answer.get("result") == {"agents": []}, answer
        assert self.process.returncode is None

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
        return int(line.split()[1])

    def stderr_tail(self) -> str:
        return self.stderr.read_text(errors="replace")[-3000:] if self.stderr.exists() else ""


@pytest.fixture
async def raw_server(server_env: dict[str, str], tmp_path: Path) -> AsyncIterator[RawServer]:
    stderr_path = tmp_path / "server.stderr"
    with stderr_path.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "forkyard.cli",
            "serve",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            env=server_env,
            limit=4 * MiB,
        )
    server = RawServer(process, stderr_path)
    try:
        yield server
    finally:
        if process.returncode is None:
            assert process.stdin is not None
            process.stdin.close()
            with anyio.move_on_after(10):
                await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
        assert "MemoryError" not in server.stderr_tail()


def error_of(answer: dict[str, Any]) -> tuple[int, str]:
    assert "error" in answer, answer
    code, text = answer["error"]["code"], answer["error"]["message"]
    assert text, "an error always says what is wrong"
    assert answer["_size"] < 1024, "error answers are short"
    return code, text


async def test_before_initialize_requests_get_32002_with_a_message(
    raw_server: RawServer, repo: Path
) -> None:
    code, text = error_of(await raw_server.request("forkyard/agent/list", {}))
    assert code == -32002
    assert "initialize" in text
    await raw_server.initialize(repo)
    await raw_server.still_serving()


async def test_unparseable_json_gets_32700_with_a_null_id(
    raw_server: RawServer, repo: Path
) -> None:
    await raw_server.initialize(repo)
    await raw_server.send(frame('{"jsonrpc": "2.0", "id": 7, "method": '))
    answer = await raw_server.answer_to(None)
    code, text = error_of(answer)
    assert code == -32700
    assert "parse error" in text
    await raw_server.send(frame(b"\xff\xfe not utf-8"))
    assert error_of(await raw_server.answer_to(None))[0] == -32700
    await raw_server.still_serving()


@pytest.mark.parametrize(
    ("body", "expected_id", "word"),
    [
        ("[1, 2]", None, "array"),
        ('"hello"', None, "object"),
        ('{"jsonrpc": "1.0", "id": 3, "method": "forkyard/agent/list"}', 3, "jsonrpc"),
        ('{"id": 4, "method": "forkyard/agent/list"}', 4, "jsonrpc"),
        ('{"jsonrpc": "2.0", "id": {"a": 1}, "method": "forkyard/agent/list"}', None, "id"),
        ('{"jsonrpc": "2.0", "id": 1.5, "method": "forkyard/agent/list"}', None, "id"),
        ('{"jsonrpc": "2.0", "id": true, "method": "forkyard/agent/list"}', None, "id"),
        ('{"jsonrpc": "2.0", "id": 5, "method": 12}', 5, "method"),
    ],
)
async def test_invalid_requests_get_32600(
    raw_server: RawServer, repo: Path, body: str, expected_id: Any, word: str
) -> None:
    await raw_server.initialize(repo)
    await raw_server.send(frame(body))
    code, text = error_of(await raw_server.answer_to(expected_id))
    assert code == -32600
    assert word in text
    await raw_server.still_serving()


async def test_every_request_is_answered_with_or_without_params(
    raw_server: RawServer, repo: Path
) -> None:
    await raw_server.initialize(repo)
    # Custom requests without `params` at all.
    listed = await raw_server.request("forkyard/agent/list")
    assert listed.get("result") == {"agents": []}, listed
    code, text = error_of(await raw_server.request("forkyard/agent/read"))
    assert (code, "agentId" in text) == (-32602, True), text
    # A standard request with a missing or mistyped field.
    code, text = error_of(await raw_server.request("textDocument/codeAction"))
    assert code == -32602, text
    code, text = error_of(
        await raw_server.request(
            "textDocument/codeAction",
            {
                "textDocument": {"uri": (repo / "README.md").as_uri()},
                "range": 5,
                "context": {"diagnostics": []},
            },
        )
    )
    assert code == -32602
    assert "range" in text
    code, _ = error_of(await raw_server.request("forkyard/no/such/method", {}))
    assert code == -32601
    await raw_server.still_serving()


@pytest.mark.parametrize("agent_id", ["9" * 5000, "-3", -3, 2.5, 10**40, "#" + "1" * 300])
async def test_hostile_agent_ids_get_32602_naming_the_field(
    raw_server: RawServer, repo: Path, agent_id: Any
) -> None:
    await raw_server.initialize(repo)
    code, text = error_of(await raw_server.request("forkyard/agent/read", {"agentId": agent_id}))
    assert code == -32602
    assert text.startswith("agentId") or "agentId:" in text, text
    await raw_server.still_serving()


async def test_a_chat_message_over_1_mib_is_refused_naming_the_field(
    raw_server: RawServer, repo: Path
) -> None:
    await raw_server.initialize(repo)
    code, text = error_of(await raw_server.request("forkyard/chat", {"text": "x" * (MiB + 1)}))
    assert code == -32602
    assert "text" in text
    listed = await raw_server.request("forkyard/thread/list", {})
    assert listed.get("result") == {"threads": []}, "nothing was stored"
    await raw_server.still_serving()


@pytest.mark.parametrize("header", ["content-length", "CONTENT-LENGTH", "Content-length"])
async def test_header_names_are_case_insensitive_and_unknown_ones_ignored(
    raw_server: RawServer, repo: Path, header: str
) -> None:
    await raw_server.initialize(repo)
    body = json.dumps({"jsonrpc": "2.0", "id": 77, "method": "forkyard/agent/list"})
    await raw_server.send(
        f"X-Whatever: yes\r\n{header}: {len(body)}\r\n"
        "Content-Type: application/vscode-jsonrpc; charset=utf-8\r\n\r\n".encode()
        + body.encode()
    )
    answer = await raw_server.answer_to(77)
    assert answer.get("result") == {"agents": []}, answer
    await raw_server.still_serving()


async def test_a_message_without_content_length_does_not_hang_the_stream(
    raw_server: RawServer, repo: Path
) -> None:
    await raw_server.initialize(repo)
    body = json.dumps({"jsonrpc": "2.0", "id": 78, "method": "forkyard/agent/list"})
    await raw_server.send(f"Content-Type: x\r\n\r\n{body}".encode())
    code, text = error_of(await raw_server.answer_to(None))
    assert code == -32700
    assert "Content-Length" in text
    # The unframed body runs into the next header: the stream resynchronises on it.
    await raw_server.still_serving()


async def test_a_message_over_the_bound_is_refused_and_the_next_one_served(
    raw_server: RawServer, repo: Path
) -> None:
    await raw_server.initialize(repo)
    before = raw_server.rss_kib()
    huge = '{"jsonrpc": "2.0", "id": 99, "method": "forkyard/chat", "params": {"text": "'
    body = huge.encode() + b"A" * (50 * MiB) + b'"}}'
    started = anyio.current_time()
    await raw_server.send(frame(body))
    code, text = error_of(await raw_server.answer_to(99, timeout=60))
    assert code == -32600
    assert "limit" in text
    await raw_server.still_serving()
    assert anyio.current_time() - started < 60
    grown_mib = (raw_server.rss_kib() - before) / 1024
    assert grown_mib < 40, f"the refused message was held in memory: +{grown_mib:.0f} MiB"
    stats = await raw_server.request("forkyard/server/stats", {})
    assert stats["result"]["maxLoopStallMs"] < 1000, stats


async def test_a_terabyte_content_length_closes_cleanly_without_allocating(
    raw_server: RawServer, repo: Path
) -> None:
    await raw_server.initialize(repo)
    dispatched = await raw_server.request(
        "forkyard/agent/dispatch", {"task": "echo begun; sleep 299792", "backend": "command"}
    )
    agent_id = dispatched["result"]["agent"]["id"]
    running = await raw_server.notification(
        lambda n: (
            n["method"] == "forkyard/agent/changed"
            and n["params"]["agent"]["id"] == agent_id
            and n["params"]["agent"]["state"] == "running"
        )
    )
    worktree = Path(running["params"]["agent"]["worktree"])
    await raw_server.send(b'Content-Length: 1099511627776\r\n\r\n{"jsonrpc": "2.0", "id": 5')
    code, text = error_of(await raw_server.answer_to(None))
    assert code == -32600
    assert "1099511627776" in text
    with anyio.fail_after(30):
        await raw_server.process.wait()
    assert raw_server.process.returncode == 1
    tail = raw_server.stderr_tail()
    assert "MemoryError" not in tail
    assert "closing the connection" in tail
    # The agent is the daemon's: an editor's broken connection leaves it running.
    assert await processes_in(worktree), "the agent's command runs on in the daemon"


async def test_twenty_mib_content_length_is_skipped_in_chunks_and_serving_goes_on(
    raw_server: RawServer, repo: Path
) -> None:
    await raw_server.initialize(repo)
    before = raw_server.rss_kib()
    await raw_server.send(b"Content-Length: 20971520\r\n\r\n" + b" " * (20 * MiB))
    code, _ = error_of(await raw_server.answer_to(None))
    assert code == -32600
    await raw_server.still_serving()
    assert (raw_server.rss_kib() - before) / 1024 < 16


async def test_the_same_bounds_hold_over_tcp(
    server_env: dict[str, str], tmp_path: Path, repo: Path
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    stderr_path = tmp_path / "server.stderr"
    with stderr_path.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "forkyard.cli", "serve", "--tcp", f"127.0.0.1:{port}"),
            stdin=asyncio.subprocess.DEVNULL,
            stderr=stderr,
            env=server_env,
        )
    try:
        with anyio.fail_after(20):
            while True:
                try:
                    streams = await asyncio.open_connection("127.0.0.1", port, limit=4 * MiB)
                    break
                except OSError:
                    await anyio.sleep(0.05)  # the server is still starting to listen
        server = RawServer(process, stderr_path, streams)
        body = json.dumps(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {"processId": None, "rootUri": repo.as_uri(), "capabilities": {}},
            }
        )
        await server.send(frame(body, header="content-length"))
        assert "result" in await server.answer_to(1)
        await server.send(message(method="initialized", params={}))
        await server.send(frame("{nope"))
        assert error_of(await server.answer_to(None))[0] == -32700
        await server.send(b"Content-Length: 20971520\r\n\r\n" + b" " * (20 * MiB))
        assert error_of(await server.answer_to(None))[0] == -32600
        await server.still_serving()
        server.writer.close()
        with anyio.fail_after(20):
            await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert "MemoryError" not in stderr_path.read_text()
