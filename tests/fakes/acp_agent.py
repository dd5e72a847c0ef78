"""A scripted Agent Client Protocol (ACP) agent program, for tests of the `acp` backend.

Tests need an ACP agent that does exactly what they say, including what a real agent does
only when it misbehaves (hangs, crashes, garbage on stdout, writes behind the client's
back). It speaks the agent side of ACP over stdio with the official SDK:

    python tests/fakes/acp_agent.py SCRIPT.json

It imports only the standard library and `acp` (which brings `pydantic`), never forkyard
or tests.*, so it runs inside a sandbox with the system python3 and a site directory.

Script (JSON)::

    {"capabilities": {"loadSession": false},
     "protocolVersion": 1,            (optional: the version `initialize` answers)
     "prompts": [TURN, TURN, ...]}

Each `session/prompt`, on any session, consumes the next TURN (a follow-up is the next
prompt on the same session); a prompt with no TURN left is answered with an error.
`session/load` is accepted (nothing replayed, the id recorded) when `loadSession` is true,
refused as an unknown method otherwise.

A TURN is a list of STEPs (the turn ends with `end_turn`), or
`{"steps": [STEP, ...], "stop_reason": "end_turn" | "cancelled" | "refusal" | "max_tokens"}`.
A STEP is an object whose `type` is one of (paths may be relative: they are then resolved
against the session's cwd):

- `message` {text, chunks=3}: agent_message_chunk updates, the text split in `chunks` pieces.
- `thought` {text, chunks=1}: agent_thought_chunk updates.
- `plan` {entries: [{content, status="pending", priority="medium"}]}.
- `tool_call` {id, title, tool_kind="other", status="completed", diff: {path, oldText,
  newText}?, locations: [path]?}: a tool_call (status pending) then a tool_call_update.
- `read_file` {path, line?, limit?}: fs/read_text_file; then a message
  "read PATH:\\nCONTENT" or "read PATH failed: ERROR".
- `write_file` {path, content}: fs/write_text_file; then "wrote PATH" or
  "write PATH failed: ERROR".
- `terminal` {command, args=[], cwd?}: terminal/create, wait_for_exit, output, release;
  then "terminal COMMAND exited CODE:\\nOUTPUT" (CODE is `signal NAME` if killed) or
  "terminal COMMAND failed: ERROR".
- `permission` {title="Run a tool", tool_kind="execute", id="perm-1", options?}:
  session/request_permission with options allow_once, allow_always, reject_once,
  reject_always (optionId = kind) unless `options` lists {optionId, name, kind}; then
  "permission: OPTIONID" or "permission: cancelled" (or "permission failed: ERROR").
- `write_outside` {path, content="pwned"}: writes the file with Python's own I/O, as a
  hostile agent ignoring the client would; then "write_outside PATH ok" or
  "write_outside PATH failed: ERROR".
- `garbage` {text="this is not JSON"}: a line of non-JSON bytes on stdout.
- `crash` {}: exits with status 3 at once, after what was sent is flushed.
- `hang` {ignore_cancel=false, ignore_sigterm=false}: never answers; a session/cancel
  stops the turn with `cancelled`. With ignore_cancel the whole turn ignores cancels
  (from its start, so a cancel cannot win a race to the hang), and once hanging the
  process stays alive even when stdin closes (ignore_sigterm: SIGTERM too), until killed.
- `sleep` {seconds}: a slow agent (a session/cancel still stops it).
- `stderr` {text}: a line on stderr.

A session/cancel stops the running turn of its session with `cancelled` at whatever step
it is in, unless that turn has a `hang` with ignore_cancel.

If the environment names a file in `ACP_FAKE_TRACE`, one JSON object per line is appended
to it for what the agent received: `initialize` (protocolVersion, clientCapabilities,
clientInfo), `new_session` (cwd, mcpServers, sessionId), `load_session` (sessionId, cwd),
`prompt` (sessionId, text, blocks), `cancel` (sessionId), `reply` (method, result or
error: the client's answers to the agent's requests) and `stop` (sessionId, stopReason).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from acp import PROTOCOL_VERSION, RequestError, run_agent, stdio_streams
from acp import helpers as h
from acp.core import DEFAULT_STDIO_BUFFER_LIMIT_BYTES
from acp.interfaces import Agent, Client
from acp.schema import (
    AgentCapabilities,
    AllowedOutcome,
    ClientCapabilities,
    Implementation,
    InitializeResponse,
    LoadSessionResponse,
    NewSessionResponse,
    PermissionOption,
    PromptResponse,
    ToolCallLocation,
    ToolCallUpdate,
)

STEP_TYPES = frozenset(
    {
        "message",
        "thought",
        "plan",
        "tool_call",
        "read_file",
        "write_file",
        "terminal",
        "permission",
        "write_outside",
        "garbage",
        "crash",
        "hang",
        "sleep",
        "stderr",
    }
)
STOP_REASONS = frozenset({"end_turn", "cancelled", "refusal", "max_tokens", "max_turn_requests"})
PERMISSION_KINDS = ("allow_once", "allow_always", "reject_once", "reject_always")
CRASH_STATUS = 3


@dataclass
class Turn:
    steps: list[dict[str, Any]]
    stop_reason: str = "end_turn"


@dataclass
class Running:
    """A prompt in progress: its task, and whether a cancel may still stop it."""

    task: asyncio.Task[str]
    ignore_cancel: bool = False
    cancelled: bool = False


@dataclass
class Script:
    load_session: bool
    turns: list[Turn] = field(default_factory=list)
    #: The protocol version it answers `initialize` with (top-level "protocolVersion").
    protocol_version: int = PROTOCOL_VERSION


def parse_script(raw: Any) -> Script:
    """The script, checked up front so a typo fails the test at once with a clear reason
    instead of as an agent that mysteriously does nothing."""
    if not isinstance(raw, dict):
        raise TypeError("the script must be a JSON object")
    capabilities = raw.get("capabilities", {})
    turns: list[Turn] = []
    for index, item in enumerate(raw.get("prompts", [])):
        turn = (
            Turn(steps=list(item))
            if isinstance(item, list)
            else Turn(
                steps=list(item.get("steps", [])), stop_reason=item.get("stop_reason", "end_turn")
            )
        )
        if turn.stop_reason not in STOP_REASONS:
            raise ValueError(f"turn {index}: unknown stop_reason {turn.stop_reason!r}")
        for step in turn.steps:
            if not isinstance(step, dict) or step.get("type") not in STEP_TYPES:
                raise ValueError(f"turn {index}: unknown step {step!r}")
        turns.append(turn)
    return Script(
        load_session=bool(capabilities.get("loadSession", False)),
        turns=turns,
        protocol_version=int(raw.get("protocolVersion", PROTOCOL_VERSION)),
    )


def error_text(exc: BaseException) -> str:
    """What a refusal said: the JSON-RPC message, and its data when the client gave one
    (the reason usually lives there)."""
    if isinstance(exc, RequestError) and exc.data is not None:
        return f"{exc} {json.dumps(exc.data, sort_keys=True)}"
    return str(exc) or type(exc).__name__


def split_text(text: str, chunks: int) -> list[str]:
    """`text` in at most `chunks` consecutive non-empty pieces, so clients must join
    streamed chunks rather than assume one update per message."""
    if chunks <= 1 or len(text) <= 1:
        return [text]
    size = -(-len(text) // chunks)
    return [text[i : i + size] for i in range(0, len(text), size)]


class ScriptedAgent:
    """The agent side: answers the client as the script says."""

    def __init__(self, script: Script, writer: asyncio.StreamWriter) -> None:
        self._script = script
        self._writer = writer
        self._turns = list(script.turns)
        self._sessions: dict[str, str] = {}  # session id -> cwd
        self._running: dict[str, Running] = {}
        self._trace_path = os.environ.get("ACP_FAKE_TRACE")
        self.stubborn = False  # a hang with ignore_cancel: do not exit when stdin closes
        self._conn: Client | None = None

    def on_connect(self, conn: Client) -> None:
        self._conn = conn

    @property
    def client(self) -> Client:
        assert self._conn is not None, "the connection sets the client first"
        return self._conn

    def trace(self, event: str, **fields: Any) -> None:
        if not self._trace_path:
            return
        with open(self._trace_path, "a", encoding="utf-8") as file:
            file.write(json.dumps({"event": event, **fields}, sort_keys=True) + "\n")

    # The Agent side of ACP.

    async def initialize(
        self,
        protocol_version: int,
        client_capabilities: ClientCapabilities | None = None,
        client_info: Implementation | None = None,
        **_kwargs: Any,
    ) -> InitializeResponse:
        self.trace(
            "initialize",
            protocolVersion=protocol_version,
            clientCapabilities=client_capabilities.model_dump(mode="json", by_alias=True)
            if client_capabilities
            else None,
            clientInfo=client_info.model_dump(mode="json", by_alias=True) if client_info else None,
        )
        return InitializeResponse(
            protocol_version=self._script.protocol_version,
            agent_capabilities=AgentCapabilities(load_session=self._script.load_session),
            agent_info=Implementation(name="forkyard-fake-acp-agent", version="1.0"),
        )

    async def new_session(
        self, cwd: str, mcp_servers: list[Any] | None = None, **_kwargs: Any
    ) -> NewSessionResponse:
        session_id = f"fake-session-{len(self._sessions) + 1}"
        self._sessions[session_id] = cwd
        servers = [server.model_dump(mode="json", by_alias=True) for server in mcp_servers or []]
        self.trace("new_session", cwd=cwd, mcpServers=servers, sessionId=session_id)
        return NewSessionResponse(session_id=session_id)

    async def load_session(
        self, cwd: str, session_id: str, mcp_servers: list[Any] | None = None, **_kwargs: Any
    ) -> LoadSessionResponse:
        if not self._script.load_session:
            raise RequestError.method_not_found("session/load")
        self._sessions[session_id] = cwd
        self.trace("load_session", sessionId=session_id, cwd=cwd)
        return LoadSessionResponse()

    async def prompt(self, session_id: str, prompt: list[Any], **_kwargs: Any) -> PromptResponse:
        blocks = [
            block.model_dump(mode="json", by_alias=True, exclude_none=True) for block in prompt
        ]
        text = "".join(block.get("text", "") for block in blocks)
        self.trace("prompt", sessionId=session_id, text=text, blocks=blocks)
        if session_id not in self._sessions:
            raise RequestError.invalid_params({"details": f"unknown session {session_id}"})
        if not self._turns:
            raise RequestError.internal_error({"details": "the script has no turn left"})
        turn = self._turns.pop(0)
        stubborn = any(s["type"] == "hang" and s.get("ignore_cancel") for s in turn.steps)
        running = Running(asyncio.create_task(self._run_turn(session_id, turn)), stubborn)
        self._running[session_id] = running
        try:
            stop_reason = await running.task
        except asyncio.CancelledError:
            if not running.cancelled:
                raise
            stop_reason = "cancelled"
        finally:
            self._running.pop(session_id, None)
        self.trace("stop", sessionId=session_id, stopReason=stop_reason)
        return PromptResponse(stop_reason=stop_reason)

    async def cancel(self, session_id: str, **_kwargs: Any) -> None:
        self.trace("cancel", sessionId=session_id)
        running = self._running.get(session_id)
        if running is not None and not running.ignore_cancel:
            running.cancelled = True
            running.task.cancel()

    # The steps.

    async def _run_turn(self, session_id: str, turn: Turn) -> str:
        for step in turn.steps:
            await getattr(self, f"_step_{step['type']}")(session_id, step)
        return turn.stop_reason

    def _path(self, session_id: str, path: str) -> str:
        return str(Path(self._sessions[session_id], path)) if not os.path.isabs(path) else path

    async def _say(self, session_id: str, text: str, chunks: int = 1) -> None:
        for piece in split_text(text, chunks):
            await self.client.session_update(session_id, h.update_agent_message_text(piece))

    def _reply(self, method: str, result: Any = None, error: BaseException | None = None) -> None:
        if error is not None:
            self.trace("reply", method=method, error=error_text(error))
        else:
            dumped = result.model_dump(mode="json", by_alias=True) if result is not None else None
            self.trace("reply", method=method, result=dumped)

    async def _step_message(self, session_id: str, step: dict[str, Any]) -> None:
        await self._say(session_id, step["text"], int(step.get("chunks", 3)))

    async def _step_thought(self, session_id: str, step: dict[str, Any]) -> None:
        for piece in split_text(step["text"], int(step.get("chunks", 1))):
            await self.client.session_update(session_id, h.update_agent_thought_text(piece))

    async def _step_plan(self, session_id: str, step: dict[str, Any]) -> None:
        entries = [
            h.plan_entry(
                entry["content"],
                priority=entry.get("priority", "medium"),
                status=entry.get("status", "pending"),
            )
            for entry in step["entries"]
        ]
        await self.client.session_update(session_id, h.update_plan(entries))

    async def _step_tool_call(self, session_id: str, step: dict[str, Any]) -> None:
        tool_id = step.get("id", "tool-1")
        kind = step.get("tool_kind", "other")
        locations = [ToolCallLocation(path=path) for path in step.get("locations", [])]
        start = h.start_tool_call(
            tool_id, step.get("title", tool_id), kind=kind, status="pending", locations=locations
        )
        await self.client.session_update(session_id, start)
        diff = step.get("diff")
        content = (
            [h.tool_diff_content(diff["path"], diff["newText"], diff.get("oldText"))]
            if diff
            else None
        )
        update = h.update_tool_call(
            tool_id, kind=kind, status=step.get("status", "completed"), content=content
        )
        await self.client.session_update(session_id, update)

    async def _step_read_file(self, session_id: str, step: dict[str, Any]) -> None:
        path = self._path(session_id, step["path"])
        try:
            answer = await self.client.read_text_file(
                session_id=session_id, path=path, line=step.get("line"), limit=step.get("limit")
            )
        except (RequestError, ConnectionError) as exc:
            self._reply("fs/read_text_file", error=exc)
            await self._say(session_id, f"read {path} failed: {error_text(exc)}")
            return
        self._reply("fs/read_text_file", answer)
        await self._say(session_id, f"read {path}:\n{answer.content}")

    async def _step_write_file(self, session_id: str, step: dict[str, Any]) -> None:
        path = self._path(session_id, step["path"])
        try:
            answer = await self.client.write_text_file(
                session_id=session_id, path=path, content=step["content"]
            )
        except (RequestError, ConnectionError) as exc:
            self._reply("fs/write_text_file", error=exc)
            await self._say(session_id, f"write {path} failed: {error_text(exc)}")
            return
        self._reply("fs/write_text_file", answer)
        await self._say(session_id, f"wrote {path}")

    async def _step_terminal(self, session_id: str, step: dict[str, Any]) -> None:
        command = step["command"]
        try:
            created = await self.client.create_terminal(
                session_id=session_id,
                command=command,
                args=step.get("args", []),
                cwd=step.get("cwd"),
            )
            self._reply("terminal/create", created)
            terminal_id = created.terminal_id
            exited = await self.client.wait_for_terminal_exit(
                session_id=session_id, terminal_id=terminal_id
            )
            self._reply("terminal/wait_for_exit", exited)
            output = await self.client.terminal_output(
                session_id=session_id, terminal_id=terminal_id
            )
            self._reply("terminal/output", output)
            released = await self.client.release_terminal(
                session_id=session_id, terminal_id=terminal_id
            )
            self._reply("terminal/release", released)
        except (RequestError, ConnectionError) as exc:
            self._reply("terminal", error=exc)
            await self._say(session_id, f"terminal {command} failed: {error_text(exc)}")
            return
        code = f"signal {exited.signal}" if exited.exit_code is None else str(exited.exit_code)
        await self._say(session_id, f"terminal {command} exited {code}:\n{output.output}")

    async def _step_permission(self, session_id: str, step: dict[str, Any]) -> None:
        if "options" in step:
            options = [PermissionOption.model_validate(option) for option in step["options"]]
        else:
            options = [
                PermissionOption(option_id=kind, name=kind.replace("_", " "), kind=kind)
                for kind in PERMISSION_KINDS
            ]
        tool_call = ToolCallUpdate(
            tool_call_id=step.get("id", "perm-1"),
            title=step.get("title", "Run a tool"),
            kind=step.get("tool_kind", "execute"),
            status="pending",
        )
        try:
            answer = await self.client.request_permission(
                session_id=session_id, tool_call=tool_call, options=options
            )
        except (RequestError, ConnectionError) as exc:
            self._reply("session/request_permission", error=exc)
            await self._say(session_id, f"permission failed: {error_text(exc)}")
            return
        self._reply("session/request_permission", answer)
        outcome = answer.outcome
        chosen = outcome.option_id if isinstance(outcome, AllowedOutcome) else "cancelled"
        await self._say(session_id, f"permission: {chosen}")

    async def _step_write_outside(self, session_id: str, step: dict[str, Any]) -> None:
        path = self._path(session_id, step["path"])
        try:
            Path(path).write_text(step.get("content", "pwned"), encoding="utf-8")
        except OSError as exc:
            await self._say(session_id, f"write_outside {path} failed: {exc}")
            return
        await self._say(session_id, f"write_outside {path} ok")

    async def _step_garbage(self, _session_id: str, step: dict[str, Any]) -> None:
        text = step.get("text", "this is not JSON")
        self._writer.write(text.encode("utf-8", "surrogateescape") + b"\n")
        await self._writer.drain()

    async def _step_crash(self, _session_id: str, _step: dict[str, Any]) -> None:
        await self._writer.drain()  # the write buffer limit is 0: everything sent is out
        sys.stderr.flush()
        os._exit(CRASH_STATUS)

    async def _step_hang(self, session_id: str, step: dict[str, Any]) -> None:
        if step.get("ignore_cancel"):
            self.stubborn = True
        if step.get("ignore_sigterm"):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        await asyncio.Event().wait()

    async def _step_sleep(self, _session_id: str, step: dict[str, Any]) -> None:
        await asyncio.sleep(float(step["seconds"]))

    async def _step_stderr(self, _session_id: str, step: dict[str, Any]) -> None:
        print(step["text"], file=sys.stderr, flush=True)


async def serve(script: Script) -> None:
    reader, writer = await stdio_streams(limit=DEFAULT_STDIO_BUFFER_LIMIT_BYTES)
    # With no high-water mark, every awaited send has left the process: a crash step then
    # loses nothing that was sent before it.
    writer.transport.set_write_buffer_limits(high=0)
    agent = ScriptedAgent(script, writer)
    # The agent implements only the methods the fake needs: the router refuses the rest.
    await run_agent(cast(Agent, agent), writer, reader)
    if agent.stubborn:
        await asyncio.Event().wait()  # a stuck agent outlives its stdin: only a kill ends it


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} SCRIPT.json", file=sys.stderr)
        return 2
    try:
        script = parse_script(json.loads(Path(argv[1]).read_text(encoding="utf-8")))
    except (OSError, TypeError, ValueError) as exc:
        print(f"acp_agent: bad script {argv[1]}: {exc}", file=sys.stderr)
        return 2
    asyncio.run(serve(script))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
