"""The `claude` backend: Anthropic's Claude Code through
`claude -p --output-format stream-json --verbose`.

Claude Code prints one JSON message per line: `system`/`init` (session id, tools, model),
`assistant` messages (text, tool uses), `user` messages (tool results), and a final
`result` whose text is the summary and whose `is_error` decides the outcome. A follow-up
resumes the session (`--resume <id>`) from the agent's private CLAUDE_CONFIG_DIR.

The role decides the tools: Forkyard's tool names map to Claude Code's, tools the role
denies (and every writing tool, for explorers) are disallowed, tools it allows are
pre-approved. "ask" cannot be asked in print mode: such tools are neither, so Claude Code
refuses them and reports a permission denial. Roles that write edit with `acceptEdits`
unless an editing tool is "ask". Web tools and Claude Code's own worktrees are always off:
Forkyard's roles have no web access and Forkyard owns the worktrees.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from forkyard.agents.base import AgentContext, RunOutcome
from forkyard.agents.external_output import JsonEventReader, clip, failure, first_line
from forkyard.agents.external_runtime import (
    ExternalProgramBackend,
    Invocation,
    Launch,
    ProgramSpec,
)
from forkyard.settings import RoleConfig
from forkyard.tools.process import ProcessResult

#: Forkyard tool -> the Claude Code tools that do the same.
CLAUDE_TOOLS: dict[str, tuple[str, ...]] = {
    "list_files": ("Glob", "LS"),
    "read_file": ("Read",),
    "search": ("Grep", "Glob"),
    "write_file": ("Write",),
    "edit_file": ("Edit", "MultiEdit", "NotebookEdit"),
    "delete_file": (),
    "run_command": ("Bash", "BashOutput", "KillShell"),
}
WRITING_TOOLS = ("write_file", "edit_file", "delete_file", "run_command")
EDITING_TOOLS = ("write_file", "edit_file")
ALWAYS_DISALLOWED: tuple[str, ...] = ("WebFetch", "WebSearch", "EnterWorktree", "ExitWorktree")
#: Claude Code's switches for telemetry, error reports, the auto-updater and any other
#: traffic that is not the model's.
QUIET_ENV: dict[str, str] = {
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_BUG_COMMAND": "1",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
}


def tool_permissions(role: RoleConfig, writable: bool) -> tuple[list[str], list[str], str]:
    """(allowed tools, disallowed tools, permission mode) for a role."""
    allowed: set[str] = set()
    disallowed: set[str] = set(ALWAYS_DISALLOWED)
    asked: set[str] = set()
    for tool, claude_tools in CLAUDE_TOOLS.items():
        policy = role.policy.get(tool, "allow")
        granted = tool in role.tools and policy != "deny"
        if tool in WRITING_TOOLS and not writable:
            granted = False
        if not granted:
            if tool in WRITING_TOOLS:
                disallowed.update(claude_tools)
            continue
        if policy == "allow":
            allowed.update(claude_tools)
        else:
            asked.add(tool)
    # A tool granted through one Forkyard tool stays available through it.
    disallowed -= allowed
    for tool in asked:
        disallowed -= set(CLAUDE_TOOLS[tool])
    edits_asked = any(tool in asked for tool in EDITING_TOOLS)
    mode = "acceptEdits" if writable and not edits_asked else "default"
    return sorted(allowed), sorted(disallowed), mode


class ClaudeBackend(ExternalProgramBackend):
    spec: ClassVar[ProgramSpec] = ProgramSpec(
        anthropic=True,
        kind="claude",
        executable="claude",
        local_paths=("node_modules/.bin/claude",),
        install_hint="npm install -g @anthropic-ai/claude-code",
        default_api_key_env="ANTHROPIC_API_KEY",
    )

    async def invocation(
        self, context: AgentContext, launch: Launch, instruction: str, session: str | None
    ) -> Invocation:
        config = launch.config
        allowed, disallowed, mode = tool_permissions(context.role, context.writable)
        argv = [str(launch.program), "-p", "--output-format", "stream-json", "--verbose"]
        argv += ["--permission-mode", mode]
        if allowed:
            argv += ["--allowedTools", ",".join(allowed)]
        argv += ["--disallowedTools", ",".join(disallowed)]
        if config.model:
            argv += ["--model", config.model]
        if session:
            argv += ["--resume", session]
        argv += config.args
        env = dict(QUIET_ENV)
        env["CLAUDE_CONFIG_DIR"] = str(launch.home.path / ".claude")
        # The gateway, which forwards to the configured base_url (or Anthropic's) with
        # the real key; the program's "key" is this run's token.
        env["ANTHROPIC_BASE_URL"] = launch.access.url
        env["ANTHROPIC_API_KEY"] = launch.access.token
        # The instruction comes on stdin: no length limit, and not visible in `ps`.
        return Invocation(
            argv=argv, env=env, output=ClaudeEvents(context), stdin=instruction.encode()
        )


class ClaudeEvents(JsonEventReader):
    """Maps Claude Code's stream-json messages to the agent's log, progress and outcome."""

    program: ClassVar[str] = "claude"

    def __init__(self, context: AgentContext) -> None:
        super().__init__(context)
        self.result: dict[str, Any] | None = None
        self.last_text = ""

    async def event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if isinstance(event.get("session_id"), str) and event["session_id"]:
            self._session_id = event["session_id"]
        if kind == "system" and event.get("subtype") == "init":
            await self.context.log(
                "system",
                f"claude {event.get('claude_code_version', '')} model {event.get('model')} "
                f"session {event.get('session_id')}; tools: {', '.join(event.get('tools', []))}",
            )
            self.context.progress("claude is working")
        elif kind == "system" and event.get("subtype") == "api_retry":
            text = (
                f"model API error {event.get('error_status')} ({event.get('error')}); "
                f"retry {event.get('attempt')} of {event.get('max_retries')}"
            )
            await self.context.log("warning", text)
            self.context.progress(text)
        elif kind == "assistant":
            await self._assistant(event.get("message"))
        elif kind == "user":
            await self._tool_results(event.get("message"))
        elif kind == "result":
            self.result = event
            denials = event.get("permission_denials") or []
            for denial in denials:
                await self.context.log("warning", f"permission denied: {json.dumps(denial)}")

    async def _assistant(self, message: Any) -> None:
        for block in _content(message):
            kind = block.get("type")
            if kind == "text" and str(block.get("text") or "").strip():
                self.last_text = str(block["text"])
                await self.context.log("assistant", self.last_text)
                self.context.progress(first_line(self.last_text))
            elif kind == "thinking":
                await self.context.log("reasoning", clip(str(block.get("thinking") or "")))
            elif kind == "tool_use":
                await self._tool_use(block)

    async def _tool_use(self, block: dict[str, Any]) -> None:
        name = str(block.get("name") or "tool")
        given = block.get("input")
        arguments: dict[str, Any] = given if isinstance(given, dict) else {}
        await self.context.log("tool", clip(f"{name} {json.dumps(arguments)}"))
        target = arguments.get("command") or arguments.get("file_path") or arguments.get("pattern")
        todos = arguments.get("todos")
        if name == "TodoWrite" and isinstance(todos, list) and todos:
            done = sum(1 for t in todos if isinstance(t, dict) and t.get("status") == "completed")
            current = next(
                (t for t in todos if isinstance(t, dict) and t.get("status") == "in_progress"),
                todos[-1],
            )
            text = current.get("content") if isinstance(current, dict) else None
            self.context.progress(first_line(str(text or name)), round(100 * done / len(todos)))
        else:
            self.context.progress(first_line(f"{name} {target}" if target else name))

    async def _tool_results(self, message: Any) -> None:
        for block in _content(message):
            if block.get("type") != "tool_result":
                continue
            content = block.get("content")
            if isinstance(content, list):
                content = "\n".join(
                    str(part.get("text", "")) for part in content if isinstance(part, dict)
                )
            prefix = "error: " if block.get("is_error") else ""
            await self.context.log("tool_result", clip(prefix + str(content or "")))

    def outcome(self, result: ProcessResult) -> RunOutcome:
        final = self.result
        if final is None:
            return self.no_result(result)
        text = str(final.get("result") or "")
        summary = text or self.last_text
        if final.get("is_error") or final.get("subtype") != "success":
            detail = text or f"claude ended with {final.get('subtype')}"
            return RunOutcome(False, summary, failure("claude", result, detail))
        if result.returncode != 0 or result.timed_out:
            return RunOutcome(False, summary, failure("claude", result))
        return RunOutcome(True, summary or "claude finished without a message")


def _content(message: Any) -> list[dict[str, Any]]:
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [block for block in content or [] if isinstance(block, dict)]
