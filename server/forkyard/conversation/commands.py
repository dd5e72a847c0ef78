"""Chat commands: the orchestrator from the chat, with no model needed.

Each command returns the markdown text of the reply; errors a user can fix (unknown agent,
missing argument) come back as text too, never as a failed turn.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from functools import partial

from forkyard.errors import InvalidRequest, WrongState
from forkyard.models.pricing import usage_text
from forkyard.orchestrator.orchestrator import Orchestrator
from forkyard.orchestrator.retry import retry
from forkyard.store.sqlite import UsageTotal
from forkyard_protocol import Usage
from forkyard_protocol.daemon import ApplyRequested
from forkyard_protocol.messages import AgentDispatchParams
from forkyard_protocol.models import Agent

HELP = """\
Commands (no model needed):

| command | what it does |
| --- | --- |
| `/dispatch [--role R] <task>` | start an agent on a task (the llm backend; needs a model) |
| `/run <shell command>` | run a command as a background agent in its own worktree |
| `/agents` | list agents |
| `/status <n>` | an agent's state, summary and latest log |
| `/diff <n>` | an agent's diff |
| `/apply <n>` | apply an agent's changes to your checkout |
| `/discard <n>` | discard an agent (its work stays in a ref) |
| `/cancel <n>` | stop an agent (its worktree is kept) |
| `/retry <n>` | run a failed, interrupted or cancelled agent's task again, as a new agent |
| `/budget <n> <usd>` | set an agent's budget in USD (a follow-up then continues it) |
| `/help` | this list |
"""

#: One short paragraph: a person who typed a question wants to know how to get an answer,
#: not the whole command table (`/help` has it).
NO_MODEL = """\
No chat model is configured, so I can only run commands (`/help` lists them). To chat, \
set one: in VS Code the `forkyard.models` setting, elsewhere `[models.default]` with \
`provider`, `base_url` and `model` in `.forkyard.toml` or `~/.config/forkyard/config.toml` \
(a key's environment variable in `api_key_env`, never the key).

"""

MAX_DIFF_CHARS = 20_000
STATUS_LOG_LINES = 15


def agent_line(agent: Agent) -> str:
    changes = agent.changes
    counts = f"{changes.files} files +{changes.additions} -{changes.deletions}"
    if used := usage_text(agent.usage):
        counts += f", {used}"
    progress = f" — {agent.progress.message}" if agent.progress else ""
    return f"#{agent.number} **{agent.title}** `{agent.state}` ({agent.role}, {counts}){progress}"


def total_text(total: UsageTotal) -> str:
    """`12k tokens, $0.04`; a sum with unpriced calls says what of it is known."""
    if not total.input_tokens + total.output_tokens:
        return ""
    priced = total.unpriced_calls == 0
    text = usage_text(
        Usage(
            input_tokens=total.input_tokens,
            output_tokens=total.output_tokens,
            cached_tokens=total.cached_tokens,
            cost_usd=total.cost_usd if priced else None,
        )
    )
    if not priced and total.cost_usd:
        text += f", ${total.cost_usd:.4f} known ({total.unpriced_calls} calls unpriced)"
    return text


def is_command(text: str) -> bool:
    return text.lstrip().startswith("/")


class ChatCommands:
    def __init__(self, orchestrator: Orchestrator) -> None:
        self.orchestrator = orchestrator
        self._commands: dict[str, Callable[[str, str | None], Awaitable[str]]] = {
            "dispatch": self._dispatch,
            "run": self._run,
            "agents": self._agents,
            "status": self._status,
            "diff": self._diff,
            "discard": self._discard,
            "cancel": self._cancel,
            "retry": self._retry,
            "budget": self._budget,
            "help": self._help,
        }

    async def run(self, text: str, thread_id: str | None, origin: str | None = None) -> str:
        """The reply to a command. `origin` is the front that sent it: `/apply` is carried
        out there, against that editor's text."""
        name, _, rest = text.strip()[1:].partition(" ")
        command = self._commands.get(name.lower())
        if name.lower() == "apply":
            command = partial(self._apply, origin=origin)
        if command is None:
            return f"Unknown command `/{name}`.\n\n{HELP}"
        try:
            return await command(rest.strip(), thread_id)
        except (InvalidRequest, WrongState) as exc:
            return f"`/{name}`: {exc}"

    async def _help(self, _rest: str, _thread: str | None) -> str:
        return HELP

    async def _dispatch(self, rest: str, thread_id: str | None) -> str:
        role = "worker"
        task = rest.strip()
        # `--role R` is the first two words; the task is the rest exactly as typed (its
        # quotes and spacing kept), never cut at the first place R's letters occur.
        if match := re.match(r"--role\s+(\S+)\s*", task):
            role, task = match.group(1), task[match.end() :]
        if not task:
            return "Usage: `/dispatch [--role R] <task>`"
        agent = await self.orchestrator.dispatch(
            AgentDispatchParams(task=task, role=role, thread_id=thread_id)
        )
        return f"Dispatched agent #{agent.number}: {agent.title} ({agent.role})."

    async def _run(self, rest: str, thread_id: str | None) -> str:
        if not rest:
            return "Usage: `/run <shell command>`"
        agent = await self.orchestrator.dispatch(
            AgentDispatchParams(task=rest, backend="command", thread_id=thread_id)
        )
        return f"Started agent #{agent.number} running `{rest}` in its own worktree."

    async def _agents(self, _rest: str, thread: str | None) -> str:
        agents = self.orchestrator.agents()
        if not agents:
            return "No agents yet. Start one with `/run <command>` or `/dispatch <task>`."
        lines = [f"- {agent_line(agent)}" for agent in agents]
        return "\n".join([*lines, *self._totals(thread)])

    def _totals(self, thread: str | None) -> list[str]:
        """The person's spend across agents and chat: today's, and this thread's."""
        ledger = self.orchestrator.ledger
        parts = [("Today", ledger.day_total())]
        if thread is not None:
            parts.append(("this thread", ledger.thread_total(thread)))
        shown = [f"{name}: {total_text(total)}" for name, total in parts if total_text(total)]
        return ["", " · ".join(shown)] if shown else []

    def _ref(self, rest: str, command: str) -> str:
        ref = rest.split(maxsplit=1)[0] if rest.split() else ""
        if not ref:
            raise InvalidRequest(f"usage: /{command} <n>")
        return ref.removeprefix("#")

    async def _status(self, rest: str, _thread: str | None) -> str:
        agent, log = await self.orchestrator.read(self._ref(rest, "status"))
        lines = [agent_line(agent), "", f"task: {agent.task}"]
        if agent.branch:
            lines.append(f"branch: `{agent.branch}`")
        if agent.summary:
            lines += ["", agent.summary]
        if agent.error:
            lines += ["", f"error: {agent.error}"]
        tail = [f"{entry.kind}: {entry.text}" for entry in log[-STATUS_LOG_LINES:]]
        if tail:
            lines += ["", "```", *tail, "```"]
        return "\n".join(lines)

    async def _diff(self, rest: str, _thread: str | None) -> str:
        ref = self._ref(rest, "diff")
        agent = self.orchestrator.resolve(ref).agent
        diff = await self.orchestrator.diff(ref)
        if diff is None or not diff.patch:
            return f"Agent #{agent.number} changed no files."
        patch = diff.patch
        if len(patch) > MAX_DIFF_CHARS:
            patch = patch[:MAX_DIFF_CHARS] + "\n... (diff truncated)\n"
        return f"Agent #{agent.number}: {agent.title}\n\n```diff\n{patch}```"

    async def _apply(self, rest: str, thread_id: str | None, *, origin: str | None) -> str:
        """Applying is the front's: the edit goes through the person's editor (or, from a
        terminal, onto the files on disk). The front tells the thread how it went."""
        agent = self.orchestrator.resolve(self._ref(rest, "apply")).agent
        if agent.state != "done":
            raise WrongState(f"agent #{agent.number} is {agent.state}; only a done agent applies")
        if origin is None or thread_id is None:
            return "Applying needs an editor connection; use the `forkyard.apply` command."
        self.orchestrator.bus.publish(
            ApplyRequested(agent_id=agent.id, thread_id=thread_id, front_id=origin)
        )
        return f"Applying agent #{agent.number} in your editor…"

    async def _discard(self, rest: str, _thread: str | None) -> str:
        agent = await self.orchestrator.discard(self._ref(rest, "discard"))
        return (
            f"Discarded agent #{agent.number}; its work is kept under "
            f"`refs/forkyard/discarded/{agent.number}`."
        )

    async def _cancel(self, rest: str, _thread: str | None) -> str:
        agent = await self.orchestrator.cancel(self._ref(rest, "cancel"))
        return f"Agent #{agent.number} is {agent.state}; its worktree is kept."

    async def _retry(self, rest: str, _thread: str | None) -> str:
        """`/retry N`: the task again as a new agent on the same base commit."""
        old = self.orchestrator.resolve(self._ref(rest, "retry")).agent
        agent = await retry(self.orchestrator, old.id)
        return f"Retrying agent #{old.number} as agent #{agent.number}: {agent.title}."

    async def _budget(self, rest: str, _thread: str | None) -> str:
        """`/budget N USD`: the agent's budget from its next model call on; an agent
        stopped by its old one continues when it is sent a message."""
        match = re.fullmatch(r"#?(\d+)\s+\$?(\d+(?:\.\d*)?|\.\d+)", rest)
        if match is None:
            return "Usage: `/budget <n> <usd>`, e.g. `/budget 3 2.00`"
        agent = await self.orchestrator.set_budget(match.group(1), budget_usd=float(match.group(2)))
        then = (
            "send it a message to continue"
            if agent.state in ("done", "failed", "cancelled", "interrupted")
            else "it applies from its next model call"
        )
        return f"Agent #{agent.number}'s budget is now ${agent.budget_usd:.2f}; {then}."
