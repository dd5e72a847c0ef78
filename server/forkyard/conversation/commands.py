"""Chat commands: the orchestrator from the chat, with no model needed.

Each command returns the markdown text of the reply; errors a user can fix (unknown agent,
missing argument) come back as text too, never as a failed turn.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from functools import partial

from forkyard.cluster.config import Placement
from forkyard.errors import InvalidRequest, WrongState
from forkyard.models.pricing import usage_text
from forkyard.orchestrator.groups import dispatch_group
from forkyard.orchestrator.orchestrator import Orchestrator
from forkyard.orchestrator.rebase import rebase
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
| `/dispatch [--role R] [--n K] [--cluster] <task>` | best of K agents on a task (needs a model) |
| `/run [--cluster] <shell command>` | run a command as a background agent in its own worktree |
| `/agents` | list agents |
| `/status <n>` | an agent's state, summary and latest log |
| `/diff <n>` | an agent's diff |
| `/apply <n> [m ...]` | apply agents' changes to your checkout, in that order |
| `/rebase <n>` | move an agent's work onto your current checkout |
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
set one: in VS Code the `forkyard.models` setting, elsewhere `[models.default]` in \
`.forkyard.toml` or `~/.config/forkyard/config.toml`, with `provider`, `base_url` and \
`model`: a local Ollama is `base_url = "http://127.0.0.1:11434/v1"`, OpenAI needs the \
name of its key's variable, `api_key_env = "OPENAI_API_KEY"` (never the key).

"""

MAX_DIFF_CHARS = 20_000
STATUS_LOG_LINES = 15


def agent_line(agent: Agent, numbers: dict[str, int] | None = None) -> str:
    changes = agent.changes
    counts = f"{changes.files} files +{changes.additions} -{changes.deletions}"
    if used := usage_text(agent.usage):
        counts += f", {used}"
    if agent.check is not None:
        counts += ", check " + ("passed" if agent.check.passed else "failed")
    progress = f" — {agent.progress.message}" if agent.progress else ""
    where = agent.role
    if agent.placement.kind == "cluster":
        node = agent.placement.node
        where += f", on cluster node {node}" if node else ", on the cluster"
    line = f"#{agent.number} **{agent.title}** `{agent.state}` ({where}, {counts}){progress}"
    return line + overlaps_text(agent, numbers)


def overlaps_text(agent: Agent, numbers: dict[str, int] | None = None) -> str:
    """` — overlaps #5 (app.py), #7 (a.py, b.py)`: other done agents that change the
    same lines; `numbers` turns their ids into numbers (else the ids are shown)."""
    if not agent.overlaps:
        return ""
    parts = []
    for overlap in agent.overlaps:
        name = (
            f"#{numbers[overlap.agent_id]}"
            if numbers and overlap.agent_id in numbers
            else overlap.agent_id
        )
        shown = ", ".join(overlap.paths[:3]) + (", …" if len(overlap.paths) > 3 else "")
        parts.append(f"{name} ({shown})")
    return " — overlaps " + ", ".join(parts)


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
            "rebase": self._rebase,
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
        count: int | None = None
        placement: Placement | None = None
        while match := re.match(r"--(role|n)\s+(\S+)\s*|--(cluster|local)(?:\s+|$)", task):
            if match.group(3):
                placement = "cluster" if match.group(3) == "cluster" else "local"
            elif match.group(1) == "role":
                role = match.group(2)
            elif match.group(2).isdigit() and 1 <= int(match.group(2)) <= 10:
                count = int(match.group(2))
            else:
                return "`/dispatch --n K`: K is a number from 1 to 10"
            task = task[match.end() :]
        if not task:
            return "Usage: `/dispatch [--role R] [--n K] [--cluster] <task>`"
        agents = await dispatch_group(
            self.orchestrator,
            AgentDispatchParams(
                task=task, role=role, thread_id=thread_id, count=count, placement=placement
            ),
        )
        if len(agents) == 1:
            agent = agents[0]
            return f"Dispatched agent #{agent.number}: {agent.title} ({agent.role})."
        names = ", ".join(f"#{a.number}" for a in agents)
        return f"Dispatched agents {names} on one task ({agents[0].role}); compare them when done."

    async def _run(self, rest: str, thread_id: str | None) -> str:
        placement: Placement | None = None
        if match := re.match(r"--cluster(?:\s+|$)", rest):
            placement, rest = "cluster", rest[match.end() :]
        if not rest:
            return "Usage: `/run [--cluster] <shell command>`"
        agent = await self.orchestrator.dispatch(
            AgentDispatchParams(
                task=rest, backend="command", thread_id=thread_id, placement=placement
            )
        )
        return f"Started agent #{agent.number} running `{rest}` in its own worktree."

    async def _agents(self, _rest: str, thread: str | None) -> str:
        agents = self.orchestrator.agents()
        if not agents:
            return "No agents yet. Start one with `/run <command>` or `/dispatch <task>`."
        numbers = {agent.id: agent.number for agent in agents}
        lines = [f"- {agent_line(agent, numbers)}" for agent in agents]
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
        refs = [ref.removeprefix("#") for ref in rest.split()] or [self._ref(rest, "apply")]
        agents = [self.orchestrator.resolve(ref).agent for ref in refs]
        for agent in agents:
            if agent.state != "done":
                raise WrongState(
                    f"agent #{agent.number} is {agent.state}; only a done agent applies"
                )
        if origin is None or thread_id is None:
            return "Applying needs an editor connection; use the `forkyard.apply` command."
        ids = [agent.id for agent in agents] if len(agents) > 1 else []
        self.orchestrator.bus.publish(
            ApplyRequested(
                agent_id=agents[0].id, thread_id=thread_id, front_id=origin, agent_ids=ids
            )
        )
        if ids:
            names = ", ".join(f"#{a.number}" for a in agents)
            return f"Applying agents {names} in your editor, in that order…"
        return f"Applying agent #{agents[0].number} in your editor…"

    async def _rebase(self, rest: str, _thread: str | None) -> str:
        """`/rebase N`: the agent's work onto the checkout as it is now."""
        agent, conflicts = await rebase(self.orchestrator, self._ref(rest, "rebase"))
        c = agent.changes
        if conflicts:
            return (
                f"Rebased agent #{agent.number} with conflicts in "
                + ", ".join(f"`{p}`" for p in conflicts)
                + "; the markers are in its worktree: send it a message to resolve them."
            )
        return (
            f"Rebased agent #{agent.number} onto your checkout: {c.files} file(s), "
            f"+{c.additions} -{c.deletions}."
        )

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
