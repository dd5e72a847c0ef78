"""The orchestrator as the chat model's tools (PROTOCOL.md: the chat model's tools).

Applying and discarding are not here on purpose: those stay the user's decisions.
A tool's failure goes back to the model as text it can act on, never as an exception.
"""

from __future__ import annotations

import json
from typing import Any

from forkyard.errors import InvalidRequest
from forkyard.models import ToolCall, ToolSpec
from forkyard.orchestrator.orchestrator import Orchestrator
from forkyard_protocol.messages import AgentDispatchParams
from forkyard_protocol.models import Agent

MAX_DIFF_CHARS = 12_000
LOG_TAIL = 20

_AGENT = {"type": "string", "description": 'the agent\'s number (e.g. "3") or id'}

CHAT_TOOLS: list[ToolSpec] = [
    ToolSpec(
        name="dispatch_agent",
        description=(
            "Start a background coding agent on a task, in its own git worktree. Returns "
            "at once; you will see its progress and result as agent events later. Use role "
            "'explorer' for read-only investigation, 'worker' to change code."
        ),
        parameters={
            "type": "object",
            "properties": {
                "task": {"type": "string", "description": "what the agent should do"},
                "role": {"type": "string", "description": "explorer | worker | a configured role"},
                "title": {"type": "string", "description": "a short title for people"},
                "backend": {
                    "type": "string",
                    "description": "'command' runs task as a shell command; default: the llm agent",
                },
            },
            "required": ["task"],
        },
    ),
    ToolSpec(
        name="list_agents",
        description="List all agents with their state, progress and change counts.",
        parameters={"type": "object", "properties": {}},
    ),
    ToolSpec(
        name="read_agent",
        description="An agent's details, summary, error and the tail of its log.",
        parameters={"type": "object", "properties": {"agent": _AGENT}, "required": ["agent"]},
    ),
    ToolSpec(
        name="agent_diff",
        description="The unified diff of an agent's changes against its base.",
        parameters={"type": "object", "properties": {"agent": _AGENT}, "required": ["agent"]},
    ),
    ToolSpec(
        name="message_agent",
        description="Send a follow-up instruction to an agent (running or finished).",
        parameters={
            "type": "object",
            "properties": {"agent": _AGENT, "text": {"type": "string"}},
            "required": ["agent", "text"],
        },
    ),
    ToolSpec(
        name="cancel_agent",
        description="Stop a running or queued agent; its worktree is kept.",
        parameters={"type": "object", "properties": {"agent": _AGENT}, "required": ["agent"]},
    ),
]


def agent_brief(agent: Agent) -> dict[str, Any]:
    return {
        "number": agent.number,
        "id": agent.id,
        "title": agent.title,
        "state": agent.state,
        "role": agent.role,
        "backend": agent.backend,
        "progress": agent.progress.message if agent.progress else None,
        "changes": agent.changes.model_dump(),
        "summary": agent.summary,
        "error": agent.error,
    }


class ChatTools:
    def __init__(self, orchestrator: Orchestrator) -> None:
        self.orchestrator = orchestrator

    async def execute(self, call: ToolCall, thread_id: str) -> tuple[str, bool]:
        """The tool's result text, and whether it is an error."""
        try:
            arguments = json.loads(call.arguments or "{}")
        except json.JSONDecodeError as exc:
            return f"invalid JSON arguments for {call.name}: {exc}", True
        if not isinstance(arguments, dict):
            return f"arguments for {call.name} must be a JSON object", True
        try:
            result = await self._run(call.name, arguments, thread_id)
        except InvalidRequest as exc:
            return f"{call.name} failed: {exc}", True
        except (KeyError, TypeError, ValueError) as exc:
            return f"{call.name}: bad arguments ({exc})", True
        return json.dumps(result, ensure_ascii=False), False

    async def _run(self, name: str, args: dict[str, Any], thread_id: str) -> Any:
        orchestrator = self.orchestrator
        if name == "dispatch_agent":
            params = AgentDispatchParams.model_validate(
                {**{k: v for k, v in args.items() if v is not None}, "thread_id": thread_id}
            )
            return {"dispatched": agent_brief(await orchestrator.dispatch(params))}
        if name == "list_agents":
            return {"agents": [agent_brief(a) for a in orchestrator.agents()]}
        if name in ("read_agent", "agent_diff", "message_agent", "cancel_agent"):
            ref = str(args["agent"]).removeprefix("#")
            if name == "read_agent":
                agent, log = await orchestrator.read(ref)
                tail = [f"{e.kind}: {e.text}" for e in log[-LOG_TAIL:]]
                return {"agent": agent_brief(agent), "task": agent.task, "log_tail": tail}
            if name == "agent_diff":
                diff = await orchestrator.diff(ref)
                patch = diff.patch if diff else ""
                if len(patch) > MAX_DIFF_CHARS:
                    patch = patch[:MAX_DIFF_CHARS] + "\n... (truncated)"
                return {"patch": patch or "(no changes)"}
            if name == "message_agent":
                return {"agent": agent_brief(await orchestrator.message(ref, str(args["text"])))}
            return {"agent": agent_brief(await orchestrator.cancel(ref))}
        raise InvalidRequest(
            f"unknown tool {name!r}; available: " + ", ".join(t.name for t in CHAT_TOOLS)
        )
