"""The client side of ACP that Forkyard serves an agent, under the agent's role.

What the agent reports (messages, thoughts, tool calls, plans) becomes its log and
progress. What it asks of us is decided by the role, whatever the agent's own settings
say: files are read and written through the same confined tools as the built-in agent's
(`ToolBox`: the worktree only, never through a link; nothing written by an explorer),
commands run in the same sandbox as `run_command` (none for explorers), and a permission
request is answered from the role's policy, or for "ask" by the person, mapped onto the
options the agent offers. The worktree's git diff stays the truth for review.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

import anyio.to_thread
from acp import RequestError
from acp.schema import (
    AgentMessageChunk,
    AgentPlanUpdate,
    AgentThoughtChunk,
    AllowedOutcome,
    CreateTerminalResponse,
    DeniedOutcome,
    EnvVariable,
    FileEditToolCallContent,
    KillTerminalResponse,
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

from forkyard.agents.acp_terminals import Terminals
from forkyard.agents.base import AgentContext
from forkyard.agents.external_output import clip, first_line
from forkyard.tools import file_tools
from forkyard.tools.agent_tools import ToolBox
from forkyard.tools.confine import PathRefused

T = TypeVar("T")
#: JSON-RPC's code for bad params: what a refused request answers.
INVALID_PARAMS = -32602
#: What is kept of one streamed message or thought (a hostile agent may stream without
#: end), of a tool call's title, and how many tool calls' titles are remembered.
MAX_MESSAGE_CHARS = 200_000
CUT_MARKER = "\n[... cut: too long ...]"
MAX_TITLE_CHARS = 500
MAX_TOOL_CALLS_REMEMBERED = 10_000
#: A file the agent reads through us is read whole, up to this size.
MAX_READ_BYTES = 8 * 1024 * 1024
#: ACP's kinds of tool call, as the Forkyard tool whose permission they need.
TOOL_OF_KIND = {
    "read": "read_file",
    "search": "search",
    "edit": "edit_file",
    "delete": "delete_file",
    "move": "write_file",
    "execute": "run_command",
}
#: Kinds no role grants: Forkyard's agents have no web access.
REFUSED_KINDS = frozenset({"fetch"})


class ForkyardAcpClient:
    """One agent run's client: its context, its toolbox and its terminals."""

    def __init__(self, context: AgentContext, toolbox: ToolBox, terminals: Terminals) -> None:
        self.context = context
        self.toolbox = toolbox
        self.terminals = terminals
        self.session_id: str | None = None
        self._resolved_root: Path | None = None
        self._message = _Streamed()
        self._message_id: str | None = None
        #: The message streaming now was shown as progress already.
        self._shown = False
        self._thought = _Streamed()
        self.last_message = ""
        self._titles: dict[str, str] = {}

    # --- what the agent reports -----------------------------------------------------

    async def session_update(self, session_id: str, update: Any, **_: Any) -> None:
        if isinstance(update, AgentMessageChunk):
            await self._flush_thought()
            if update.message_id is not None and update.message_id != self._message_id:
                await self.flush()  # another message: the one before is whole
                self._message_id = update.message_id
            if isinstance(update.content, TextContentBlock):
                self._message.add(update.content.text)
                # Shown as it streams (its first line, once it has one); logged whole.
                if not self._shown and (line := first_line(update.content.text)):
                    self._shown = True
                    self.context.progress(line)
        elif isinstance(update, AgentThoughtChunk):
            if isinstance(update.content, TextContentBlock):
                self._thought.add(update.content.text)
        elif isinstance(update, ToolCallStart):
            await self.flush()
            title = update.title[:MAX_TITLE_CHARS]
            if len(self._titles) < MAX_TOOL_CALLS_REMEMBERED:
                self._titles[update.tool_call_id] = title
            await self.context.log("tool", f"{update.kind or 'other'}: {title}")
            self.context.progress(first_line(title) or "tool call")
            await self._diffs(update.content)
        elif isinstance(update, ToolCallProgress):
            await self._tool_progress(update)
        elif isinstance(update, AgentPlanUpdate):
            await self._plan(update)

    async def flush(self) -> None:
        """Log the message (and thought) streamed so far, as one entry each."""
        await self._flush_thought()
        self._shown = False
        if text := self._message.take():
            self.last_message = text
            await self.context.log("assistant", text)
            self.context.progress(first_line(text) or "replied")

    async def _flush_thought(self) -> None:
        if text := self._thought.take():
            await self.context.log("reasoning", clip(text))
            self.context.progress(first_line(text) or "thinking")

    async def _tool_progress(self, update: ToolCallProgress) -> None:
        title = (update.title or self._titles.get(update.tool_call_id, "tool call"))[
            :MAX_TITLE_CHARS
        ]
        if update.status in ("completed", "failed"):
            await self.context.log("tool", f"{title}: {update.status}")
        await self._diffs(update.content)

    async def _diffs(self, content: list[Any] | None) -> None:
        for item in content or []:
            if isinstance(item, FileEditToolCallContent):
                old = (item.old_text or "").count("\n")
                await self.context.log(
                    "diff", f"{item.path}: {old} line(s) -> {item.new_text.count(chr(10))}"
                )

    async def _plan(self, plan: AgentPlanUpdate) -> None:
        entries = plan.entries
        done = sum(entry.status == "completed" for entry in entries)
        current = next((e.content for e in entries if e.status == "in_progress"), None)
        text = "\n".join(f"[{entry.status}] {entry.content}" for entry in entries)
        await self.context.log("plan", text)
        percentage = round(100 * done / len(entries)) if entries else None
        message = f"plan {done}/{len(entries)}" + (f": {current}" if current else "")
        self.context.progress(message, percentage)

    # --- what the agent asks -----------------------------------------------------------

    async def request_permission(
        self, session_id: str, tool_call: ToolCallUpdate, options: list[PermissionOption], **_: Any
    ) -> RequestPermissionResponse:
        """The role's answer, as one of the options the agent offered (no option that
        says so: the request is cancelled, which the agent takes as no)."""
        kind = tool_call.kind or "other"
        title = (tool_call.title or self._titles.get(tool_call.tool_call_id, kind))[
            :MAX_TITLE_CHARS
        ]
        tool = TOOL_OF_KIND.get(kind)
        if kind in REFUSED_KINDS or (tool is None and kind != "other"):
            verdict = "reject"
        else:
            detail = _detail(tool_call, title)
            refusal = await self.toolbox.permission(tool or "run_command", detail)
            verdict = "reject" if refusal else ("always" if self._remembered(tool) else "once")
        await self.context.log("approval", f"{title}: {verdict}")
        wanted = {
            "once": ("allow_once", "allow_always"),
            "always": ("allow_always", "allow_once"),
            "reject": ("reject_once", "reject_always"),
        }[verdict]
        for option_kind in wanted:
            for option in options:
                if option.kind == option_kind:
                    return RequestPermissionResponse(
                        outcome=AllowedOutcome(option_id=option.option_id, outcome="selected")
                    )
        return RequestPermissionResponse(outcome=DeniedOutcome(outcome="cancelled"))

    def _remembered(self, tool: str | None) -> bool:
        return tool is not None and tool in self.toolbox.remembered

    async def read_text_file(
        self,
        session_id: str,
        path: str,
        line: int | None = None,
        limit: int | None = None,
        **_: Any,
    ) -> ReadTextFileResponse:
        relative = await self._allowed("read_file", path)
        root = self.toolbox.root
        if await _confined_call(_missing, root, relative):
            # An empty text, not an error: agents read before they create (Gemini CLI
            # cannot tell our "missing" error from any other and gives up).
            return ReadTextFileResponse(content="")
        text = await _confined_call(
            file_tools.read_text, root, relative, line, limit, MAX_READ_BYTES
        )
        return ReadTextFileResponse(content=text)

    async def write_text_file(
        self, session_id: str, path: str, content: str, **_: Any
    ) -> WriteTextFileResponse | None:
        relative = await self._allowed("write_file", path)
        done = await _confined_call(file_tools.write_file, self.toolbox.root, relative, content)
        await self.context.log("tool", done)
        return WriteTextFileResponse()

    async def _allowed(self, tool: str, path: str) -> str:
        """`path` (absolute, as ACP sends it) relative to the agent's directory, once
        the role allows `tool` on it; else the request fails with the refusal."""
        root = self.toolbox.root
        candidate = PurePosixPath(path)
        if candidate.is_absolute():
            # The agent may name its directory as given or as resolved (bwrap starts it
            # in the resolved one): either is the same directory.
            if self._resolved_root is None:
                self._resolved_root = await anyio.to_thread.run_sync(root.resolve)
            try:
                base = root if candidate.is_relative_to(root) else self._resolved_root
                relative = str(candidate.relative_to(base))
            except ValueError:
                message = f"{path} is outside this agent's directory ({root}); refused"
                await self.context.log("error", message)
                raise RequestError(INVALID_PARAMS, message) from None
        else:
            relative = path
        if (refusal := await self.toolbox.permission(tool, path)) is not None:
            await self.context.log("error", f"{path}: {refusal}")
            raise RequestError(INVALID_PARAMS, refusal)
        return relative

    async def create_terminal(
        self,
        session_id: str,
        command: str,
        args: list[str] | None = None,
        env: list[EnvVariable] | None = None,
        cwd: str | None = None,
        output_byte_limit: int | None = None,
        **_: Any,
    ) -> CreateTerminalResponse:
        line = " ".join([command, *(args or [])]) if args else command
        refusal = await self.toolbox.permission("run_command", line)
        if refusal is not None:
            await self.context.log("error", f"$ {line}: {refusal}")
            raise RequestError(INVALID_PARAMS, refusal)
        terminal_id = await self.terminals.create(command, args or [], cwd, output_byte_limit)
        await self.context.log("command", f"$ {line}")
        return CreateTerminalResponse(terminal_id=terminal_id)

    async def terminal_output(
        self, session_id: str, terminal_id: str, **_: Any
    ) -> TerminalOutputResponse:
        return self.terminals.output(terminal_id)

    async def wait_for_terminal_exit(
        self, session_id: str, terminal_id: str, **_: Any
    ) -> WaitForTerminalExitResponse:
        return await self.terminals.wait(terminal_id)

    async def kill_terminal(
        self, session_id: str, terminal_id: str, **_: Any
    ) -> KillTerminalResponse | None:
        self.terminals.kill(terminal_id)
        return KillTerminalResponse()

    async def release_terminal(
        self, session_id: str, terminal_id: str, **_: Any
    ) -> ReleaseTerminalResponse | None:
        self.terminals.release(terminal_id)
        return ReleaseTerminalResponse()

    async def create_elicitation(self, *_: Any, **__: Any) -> Any:
        raise RequestError.method_not_found("elicitation/create")

    async def complete_elicitation(self, *_: Any, **__: Any) -> None:
        return None

    async def ext_method(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        raise RequestError.method_not_found(method)

    async def ext_notification(self, method: str, params: dict[str, Any]) -> None:
        return None

    def on_connect(self, conn: Any) -> None:
        return None


class _Streamed:
    """A message or thought as it streams in chunks, kept to MAX_MESSAGE_CHARS (the
    rest dropped, once said)."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.size = 0
        self.cut = False

    def add(self, text: str) -> None:
        if self.cut:
            return
        room = MAX_MESSAGE_CHARS - self.size
        if len(text) >= room:
            text, self.cut = text[:room] + CUT_MARKER, True
        self.parts.append(text)
        self.size += len(text)

    def take(self) -> str:
        text = "".join(self.parts).strip()
        self.parts, self.size, self.cut = [], 0, False
        return text


def _missing(root: Path, relative: str) -> bool:
    """Nothing at the confined path (a link counts as something). Blocking."""
    return not os.path.lexists(file_tools.confined(root, relative, for_write=False))


async def _confined_call(function: Callable[..., T], *args: Any) -> T:
    """A confined file tool in a worker thread; what it refuses, as the agent's error."""
    try:
        return await anyio.to_thread.run_sync(function, *args)
    except (PathRefused, file_tools.ToolFailure) as error:
        raise RequestError(INVALID_PARAMS, str(error)) from None
    except UnicodeDecodeError:
        raise RequestError(INVALID_PARAMS, "the file is not UTF-8 text") from None
    except (OSError, RuntimeError, ValueError) as error:
        raise RequestError(INVALID_PARAMS, f"{type(error).__name__}: {error}") from None


def _detail(tool_call: ToolCallUpdate, title: str) -> str:
    """What the person is asked about: the title, and the call's input when short."""
    if tool_call.raw_input is None:
        return title
    try:
        shown = json.dumps(tool_call.raw_input, ensure_ascii=False)
    except (TypeError, ValueError):
        shown = str(tool_call.raw_input)
    return f"{title}: {shown[:300]}"
