"""The `codex` backend: OpenAI's Codex CLI through `codex exec --json`.

Codex prints one JSON event per line (`thread.started`, `turn.started`, `item.started` /
`item.completed` for messages, commands, file changes and plans, `turn.completed` or
`turn.failed`, `error`). They become the agent's log and progress; the last agent message
is the summary. A follow-up resumes the thread (`codex exec resume <id>`), whose history
lives in the agent's private CODEX_HOME.

Codex's own sandbox stays on inside Forkyard's: `workspace-write` for roles that write,
`read-only` for explorers, and either way no network for the commands the model runs.
Approvals are `never`: nobody is there to answer them. Analytics, feedback, update checks,
web search and prompt history are off.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

import anyio.to_thread

from forkyard.agents.base import AgentContext, RunOutcome
from forkyard.agents.external_output import JsonEventReader, clip, failure, first_line
from forkyard.agents.external_runtime import (
    ExternalProgramBackend,
    Invocation,
    Launch,
    ProgramSpec,
)
from forkyard.tools.process import ProcessResult

#: The model provider Forkyard defines: the model gateway.
PROVIDER_ID = "forkyard"
#: The variable codex reads its "key" from: this run's gateway token.
TOKEN_ENV = "OPENAI_API_KEY"

#: Settings that keep codex quiet and self-contained (`-c key=value`, values in TOML).
QUIET_CONFIG: tuple[str, ...] = (
    'approval_policy="never"',
    "analytics.enabled=false",
    "feedback.enabled=false",
    "check_for_update_on_startup=false",
    'web_search="disabled"',
    'history.persistence="none"',
)


class CodexBackend(ExternalProgramBackend):
    spec: ClassVar[ProgramSpec] = ProgramSpec(
        kind="codex",
        executable="codex",
        local_paths=("node_modules/.bin/codex",),
        install_hint="npm install -g @openai/codex",
        default_api_key_env="OPENAI_API_KEY",
        # Its own sandbox keeps the commands it runs off the network: it needs to make
        # user namespaces inside ours.
        nested_sandbox=True,
    )

    async def invocation(
        self, context: AgentContext, launch: Launch, instruction: str, session: str | None
    ) -> Invocation:
        config = launch.config
        argv = [str(launch.program), "exec", "--json", "--skip-git-repo-check"]
        argv += ["--cd", str(context.cwd)]
        argv += ["--sandbox", "workspace-write" if context.writable else "read-only"]
        for setting in QUIET_CONFIG:
            argv += ["-c", setting]
        # Always Forkyard's provider: the gateway, which forwards to the configured
        # base_url (or OpenAI's) with the real key.
        provider = f"model_providers.{PROVIDER_ID}"
        argv += ["-c", f"model_provider={json.dumps(PROVIDER_ID)}"]
        argv += ["-c", f"{provider}.name={json.dumps(PROVIDER_ID)}"]
        argv += ["-c", f"{provider}.base_url={json.dumps(launch.access.url)}"]
        argv += ["-c", f'{provider}.wire_api="responses"']
        argv += ["-c", f"{provider}.env_key={json.dumps(TOKEN_ENV)}"]
        if config.model:
            argv += ["--model", config.model]
        argv += config.args
        if session:
            argv += ["resume", session]
        argv.append("-")  # the instruction comes on stdin: no length limit, not in `ps`
        codex_home = launch.home.path / ".codex"
        await anyio.to_thread.run_sync(lambda: codex_home.mkdir(exist_ok=True))
        env = {"CODEX_HOME": str(codex_home), TOKEN_ENV: launch.access.token}
        return Invocation(
            argv=argv,
            env=env,
            output=CodexEvents(context),
            stdin=instruction.encode(),
        )


class CodexEvents(JsonEventReader):
    """Maps `codex exec --json` events to the agent's log, progress and outcome."""

    program: ClassVar[str] = "codex"

    def __init__(self, context: AgentContext) -> None:
        super().__init__(context)
        self.last_message = ""
        self.completed = False
        self.failed: str | None = None
        self.last_error: str | None = None

    async def event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "thread.started":
            self._session_id = str(event.get("thread_id") or "") or None
            await self.context.log("system", f"codex thread {self._session_id}")
        elif kind == "turn.started":
            self.context.progress("codex is working")
        elif kind in ("item.started", "item.updated", "item.completed"):
            item = event.get("item")
            if isinstance(item, dict):
                await self._item(item, done=kind == "item.completed")
        elif kind == "turn.completed":
            self.completed = True
            usage = event.get("usage")
            if isinstance(usage, dict):
                await self.context.log("system", f"usage: {json.dumps(usage)}")
        elif kind == "turn.failed":
            error = event.get("error")
            message = error.get("message") if isinstance(error, dict) else None
            self.failed = str(message or "the turn failed")
            await self.context.log("error", self.failed)
        elif kind == "error":
            self.last_error = str(event.get("message") or "error")
            await self.context.log("error", self.last_error)
            self.context.progress(first_line(self.last_error))

    async def _item(self, item: dict[str, Any], *, done: bool) -> None:
        kind = item.get("type")
        if kind == "agent_message" and done:
            self.last_message = str(item.get("text") or "")
            await self.context.log("assistant", self.last_message)
            self.context.progress(first_line(self.last_message) or "codex replied")
        elif kind == "plan" and done:
            await self.context.log("plan", str(item.get("text") or ""))
        elif kind == "reasoning" and done:
            text = str(item.get("text") or "")
            await self.context.log("reasoning", clip(text))
            self.context.progress(first_line(text) or "thinking")
        elif kind == "command_execution":
            await self._command(item, done=done)
        elif kind == "file_change" and done:
            changes = [c for c in item.get("changes") or [] if isinstance(c, dict)]
            text = ", ".join(f"{c.get('kind', 'update')} {c.get('path', '?')}" for c in changes)
            await self.context.log("tool", f"file change: {text or 'none'}")
            self.context.progress(first_line(f"edited {text}"))
        elif kind == "todo_list":
            self._plan(item)
        elif kind == "mcp_tool_call" and done:
            await self.context.log("tool", f"mcp {item.get('server')}.{item.get('tool')}")
        elif kind == "web_search" and done:
            await self.context.log("tool", f"web search: {item.get('query')}")
        elif kind == "error":
            await self.context.log("warning", str(item.get("message") or ""))

    async def _command(self, item: dict[str, Any], *, done: bool) -> None:
        command = str(item.get("command") or "")
        if not done:
            await self.context.log("command", f"$ {command}")
            self.context.progress(first_line(f"$ {command}"))
            return
        output = str(item.get("aggregated_output") or "")
        status = f"exit {item.get('exit_code')}" if item.get("exit_code") is not None else ""
        status = status or str(item.get("status") or "")
        await self.context.log("tool_result", clip(f"$ {command} ({status})\n{output}".rstrip()))

    def _plan(self, item: dict[str, Any]) -> None:
        steps = [step for step in item.get("items") or [] if isinstance(step, dict)]
        if not steps:
            return
        done = sum(1 for step in steps if step.get("completed"))
        current = next((step for step in steps if not step.get("completed")), steps[-1])
        self.context.progress(
            first_line(str(current.get("text") or "working")), round(100 * done / len(steps))
        )

    def outcome(self, result: ProcessResult) -> RunOutcome:
        if self.failed is not None:
            return RunOutcome(False, self.last_message, failure("codex", result, self.failed))
        if result.returncode != 0 or result.timed_out:
            return RunOutcome(False, self.last_message, failure("codex", result, self.last_error))
        if not self.completed:
            return self.no_result(result)
        return RunOutcome(True, self.last_message or "codex finished without a message")
