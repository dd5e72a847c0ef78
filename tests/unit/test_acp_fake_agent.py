"""The scripted ACP agent (tests/fakes/acp_agent.py) driven by the official SDK's client
side: the `acp` backend's tests trust it to do what its script says, so what they rely on
is checked here, against the real protocol library rather than against itself."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import pytest
from acp import PROTOCOL_VERSION, Client, RequestError, spawn_agent_process, text_block
from acp.client.connection import ClientSideConnection
from acp.schema import (
    AgentMessageChunk,
    AgentPlanUpdate,
    AgentThoughtChunk,
    AllowedOutcome,
    ClientCapabilities,
    CreateTerminalResponse,
    DeniedOutcome,
    FileEditToolCallContent,
    FileSystemCapabilities,
    PermissionOption,
    ReadTextFileResponse,
    ReleaseTerminalResponse,
    RequestPermissionResponse,
    TerminalOutputResponse,
    TextContentBlock,
    ToolCallProgress,
    ToolCallStart,
    ToolCallUpdate,
    WaitForTerminalExitResponse,
    WriteTextFileResponse,
)

FAKE = Path(__file__).resolve().parents[1] / "fakes" / "acp_agent.py"
#: Every wait on the agent ends well before pytest-timeout would kill the whole run.
WAIT = 15.0

pytestmark = pytest.mark.timeout(60)


class RecordingClient:
    """A minimal ACP client: records every update and request, answers as told."""

    def __init__(self) -> None:
        self.updates: list[Any] = []
        self.writes: list[tuple[str, str]] = []
        self.files: dict[str, str] = {}
        self.permission_requests: list[tuple[ToolCallUpdate, list[PermissionOption]]] = []
        self.permission_answers: list[str | None] = []  # an optionId, or None to cancel
        self.output = ""
        self._changed = asyncio.Condition()

    async def session_update(self, session_id: str, update: Any, **_kwargs: Any) -> None:
        async with self._changed:
            self.updates.append(update)
            self._changed.notify_all()

    def text(self) -> str:
        return "".join(
            update.content.text
            for update in self.updates
            if isinstance(update, AgentMessageChunk)
            and isinstance(update.content, TextContentBlock)
        )

    async def wait_for_text(self, needle: str) -> None:
        async with asyncio.timeout(WAIT), self._changed:
            await self._changed.wait_for(lambda: needle in self.text())

    async def read_text_file(
        self,
        session_id: str,
        path: str,
        line: int | None = None,
        limit: int | None = None,
        **_kwargs: Any,
    ) -> ReadTextFileResponse:
        if path not in self.files:
            raise RequestError(-32002, "Resource not found", {"reason": f"{path} is not yours"})
        return ReadTextFileResponse(content=self.files[path])

    async def write_text_file(
        self, session_id: str, path: str, content: str, **_kwargs: Any
    ) -> WriteTextFileResponse:
        self.writes.append((path, content))
        return WriteTextFileResponse()

    async def request_permission(
        self,
        session_id: str,
        tool_call: ToolCallUpdate,
        options: list[PermissionOption],
        **_kwargs: Any,
    ) -> RequestPermissionResponse:
        self.permission_requests.append((tool_call, options))
        chosen = self.permission_answers.pop(0)
        if chosen is None:
            return RequestPermissionResponse(outcome=DeniedOutcome(outcome="cancelled"))
        return RequestPermissionResponse(
            outcome=AllowedOutcome(outcome="selected", option_id=chosen)
        )

    async def create_terminal(
        self, session_id: str, command: str, args: list[str] | None = None, **_kwargs: Any
    ) -> CreateTerminalResponse:
        if command != "echo":
            raise RequestError(-32603, "Internal error", {"reason": f"{command} is not allowed"})
        self.output = " ".join(args or []) + "\n"
        return CreateTerminalResponse(terminal_id="term-1")

    async def wait_for_terminal_exit(
        self, session_id: str, terminal_id: str, **_kwargs: Any
    ) -> WaitForTerminalExitResponse:
        return WaitForTerminalExitResponse(exit_code=0)

    async def terminal_output(
        self, session_id: str, terminal_id: str, **_kwargs: Any
    ) -> TerminalOutputResponse:
        return TerminalOutputResponse(output=self.output, truncated=False)

    async def release_terminal(
        self, session_id: str, terminal_id: str, **_kwargs: Any
    ) -> ReleaseTerminalResponse:
        return ReleaseTerminalResponse()


@asynccontextmanager
async def fake_agent(
    tmp_path: Path, client: RecordingClient, script: dict[str, Any]
) -> AsyncIterator[tuple[ClientSideConnection, asyncio.subprocess.Process, str]]:
    """The fake agent on `script`, initialized, with one session whose cwd is tmp_path."""
    script_path = tmp_path / "script.json"
    script_path.write_text(json.dumps(script))
    env = {"ACP_FAKE_TRACE": str(tmp_path / "trace.jsonl")}
    async with spawn_agent_process(
        cast(Client, client), sys.executable, str(FAKE), str(script_path), env=env, cwd=tmp_path
    ) as (conn, process):
        async with asyncio.timeout(WAIT):
            capabilities = ClientCapabilities(
                fs=FileSystemCapabilities(read_text_file=True, write_text_file=True), terminal=True
            )
            await conn.initialize(
                protocol_version=PROTOCOL_VERSION, client_capabilities=capabilities
            )
            session = await conn.new_session(cwd=str(tmp_path), mcp_servers=[])
        yield conn, process, session.session_id


def trace(tmp_path: Path) -> list[dict[str, Any]]:
    lines = (tmp_path / "trace.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


async def test_a_turn_streams_messages_thoughts_plans_and_tool_calls_and_the_trace_has_the_prompts(
    tmp_path: Path,
) -> None:
    diff = {"path": str(tmp_path / "a.py"), "oldText": "x = 1\n", "newText": "x = 2\n"}
    script = {
        "prompts": [
            [
                {"type": "thought", "text": "thinking hard"},
                {"type": "plan", "entries": [{"content": "edit a.py", "status": "in_progress"}]},
                {
                    "type": "tool_call",
                    "id": "t1",
                    "title": "Edit a.py",
                    "tool_kind": "edit",
                    "diff": diff,
                },
                {"type": "message", "text": "Hello from the fake agent", "chunks": 3},
            ],
            {"steps": [], "stop_reason": "refusal"},
        ]
    }
    client = RecordingClient()
    async with fake_agent(tmp_path, client, script) as (conn, _process, session_id):
        async with asyncio.timeout(WAIT):
            first = await conn.prompt(session_id=session_id, prompt=[text_block("hello")])
            follow_up = await conn.prompt(session_id=session_id, prompt=[text_block("again")])

    assert (first.stop_reason, follow_up.stop_reason) == ("end_turn", "refusal")
    chunks = [u for u in client.updates if isinstance(u, AgentMessageChunk)]
    assert len(chunks) == 3, "the message is streamed in pieces"
    assert client.text() == "Hello from the fake agent"
    assert any(isinstance(u, AgentThoughtChunk) for u in client.updates)
    [plan] = [u for u in client.updates if isinstance(u, AgentPlanUpdate)]
    assert [(e.content, e.status) for e in plan.entries] == [("edit a.py", "in_progress")]
    [start] = [u for u in client.updates if isinstance(u, ToolCallStart)]
    [progress] = [u for u in client.updates if isinstance(u, ToolCallProgress)]
    assert (start.tool_call_id, start.kind, start.status) == ("t1", "edit", "pending")
    assert progress.status == "completed"
    assert progress.content == [
        FileEditToolCallContent(
            type="diff", path=diff["path"], old_text="x = 1\n", new_text="x = 2\n"
        )
    ]

    events = trace(tmp_path)
    [init] = [e for e in events if e["event"] == "initialize"]
    assert init["protocolVersion"] == PROTOCOL_VERSION
    assert init["clientCapabilities"]["fs"]["readTextFile"] is True
    assert init["clientCapabilities"]["terminal"] is True
    assert [e["cwd"] for e in events if e["event"] == "new_session"] == [str(tmp_path)]
    assert [e["text"] for e in events if e["event"] == "prompt"] == ["hello", "again"]
    assert [e["stopReason"] for e in events if e["event"] == "stop"] == ["end_turn", "refusal"]


async def test_file_and_terminal_requests_reach_the_client_and_refusals_come_back_as_text(
    tmp_path: Path,
) -> None:
    client = RecordingClient()
    client.files[str(tmp_path / "a.txt")] = "content of a"
    script = {
        "prompts": [
            [
                {"type": "read_file", "path": "a.txt"},
                {"type": "read_file", "path": "/etc/shadow"},
                {"type": "write_file", "path": "b.txt", "content": "new b"},
                {"type": "terminal", "command": "echo", "args": ["hi", "there"]},
                {"type": "terminal", "command": "rm", "args": ["-rf", "/"]},
            ]
        ]
    }
    async with fake_agent(tmp_path, client, script) as (conn, _process, session_id):
        async with asyncio.timeout(WAIT):
            await conn.prompt(session_id=session_id, prompt=[text_block("go")])

    text = client.text()
    assert f"read {tmp_path / 'a.txt'}:\ncontent of a" in text
    assert "read /etc/shadow failed: Resource not found" in text
    assert "/etc/shadow is not yours" in text, "the client's reason reaches the agent"
    assert client.writes == [(str(tmp_path / "b.txt"), "new b")]
    assert f"wrote {tmp_path / 'b.txt'}" in text
    assert "terminal echo exited 0:\nhi there\n" in text
    assert "terminal rm failed: Internal error" in text
    assert "rm is not allowed" in text


async def test_a_permission_request_offers_four_options_and_reports_the_choice(
    tmp_path: Path,
) -> None:
    client = RecordingClient()
    client.permission_answers = ["reject_once", None]
    step = {"type": "permission", "title": "Run rm", "tool_kind": "execute"}
    script = {"prompts": [[step, step]]}
    async with fake_agent(tmp_path, client, script) as (conn, _process, session_id):
        async with asyncio.timeout(WAIT):
            await conn.prompt(session_id=session_id, prompt=[text_block("go")])

    tool_call, options = client.permission_requests[0]
    assert (tool_call.title, tool_call.kind) == ("Run rm", "execute")
    assert [(o.option_id, o.kind) for o in options] == [
        ("allow_once", "allow_once"),
        ("allow_always", "allow_always"),
        ("reject_once", "reject_once"),
        ("reject_always", "reject_always"),
    ]
    assert client.text() == "permission: reject_oncepermission: cancelled"


async def test_a_cancel_stops_a_hanging_turn_with_cancelled(tmp_path: Path) -> None:
    script = {"prompts": [[{"type": "message", "text": "waiting"}, {"type": "hang"}]]}
    client = RecordingClient()
    async with fake_agent(tmp_path, client, script) as (conn, _process, session_id):
        turn = asyncio.create_task(conn.prompt(session_id=session_id, prompt=[text_block("go")]))
        await client.wait_for_text("waiting")
        assert not turn.done()
        await conn.cancel(session_id=session_id)
        async with asyncio.timeout(WAIT):
            answer = await turn
    assert answer.stop_reason == "cancelled"
    assert [e["event"] for e in trace(tmp_path)][-2:] == ["cancel", "stop"]


async def test_a_hang_that_ignores_cancel_outlives_the_cancel(tmp_path: Path) -> None:
    script = {
        "prompts": [[{"type": "hang", "ignore_cancel": True}], [{"type": "message", "text": "b"}]]
    }
    client = RecordingClient()
    async with fake_agent(tmp_path, client, script) as (conn, process, session_id):
        stuck = asyncio.create_task(conn.prompt(session_id=session_id, prompt=[text_block("go")]))
        await conn.cancel(session_id=session_id)
        async with asyncio.timeout(WAIT):
            other = await conn.new_session(cwd=str(tmp_path), mcp_servers=[])
            # The agent handles messages in order: this turn ends after the cancel was seen.
            await conn.prompt(session_id=other.session_id, prompt=[text_block("next")])
        assert not stuck.done(), "the cancel was ignored"
        process.kill()
        with pytest.raises(ConnectionError):
            async with asyncio.timeout(WAIT):
                await stuck
    assert "cancel" in [e["event"] for e in trace(tmp_path)]


async def test_a_crash_exits_with_status_3_after_what_it_sent(tmp_path: Path) -> None:
    script = {"prompts": [[{"type": "message", "text": "bye"}, {"type": "crash"}]]}
    client = RecordingClient()
    async with fake_agent(tmp_path, client, script) as (conn, process, session_id):
        with pytest.raises(ConnectionError):
            async with asyncio.timeout(WAIT):
                await conn.prompt(session_id=session_id, prompt=[text_block("go")])
        async with asyncio.timeout(WAIT):
            assert await process.wait() == 3
        await client.wait_for_text("bye")


async def test_garbage_on_stdout_and_a_stderr_line_leave_the_protocol_going(
    tmp_path: Path,
) -> None:
    script = {
        "prompts": [
            [
                {"type": "stderr", "text": "a note on stderr"},
                {"type": "garbage", "text": "\x00 not json {"},
                {"type": "message", "text": "still here"},
            ]
        ]
    }
    client = RecordingClient()
    async with fake_agent(tmp_path, client, script) as (conn, process, session_id):
        async with asyncio.timeout(WAIT):
            answer = await conn.prompt(session_id=session_id, prompt=[text_block("go")])
            assert process.stderr is not None
            assert await process.stderr.readline() == b"a note on stderr\n"
    assert answer.stop_reason == "end_turn"
    assert client.text() == "still here"


async def test_load_session_is_accepted_and_recorded_only_when_advertised(tmp_path: Path) -> None:
    for load in (True, False):
        client = RecordingClient()
        script = {"capabilities": {"loadSession": load}, "prompts": []}
        async with fake_agent(tmp_path, client, script) as (conn, _process, _session_id):
            async with asyncio.timeout(WAIT):
                if load:
                    await conn.load_session(cwd=str(tmp_path), session_id="old-7", mcp_servers=[])
                else:
                    with pytest.raises(RequestError):
                        await conn.load_session(cwd=str(tmp_path), session_id="old-8")
    loads = [e["sessionId"] for e in trace(tmp_path) if e["event"] == "load_session"]
    assert loads == ["old-7"]


async def test_write_outside_bypasses_the_client(tmp_path: Path) -> None:
    outside = tmp_path.parent / f"{tmp_path.name}-outside.txt"
    worktree = tmp_path / "worktree"
    worktree.mkdir()
    script = {"prompts": [[{"type": "write_outside", "path": str(outside), "content": "x"}]]}
    client = RecordingClient()
    try:
        async with fake_agent(worktree, client, script) as (conn, _process, session_id):
            async with asyncio.timeout(WAIT):
                await conn.prompt(session_id=session_id, prompt=[text_block("go")])
        assert outside.read_text() == "x"
        assert client.writes == []
        assert client.text() == f"write_outside {outside} ok"
    finally:
        outside.unlink(missing_ok=True)
