"""The terminal front: `forkyard agents | dispatch | chat | log | diff | apply | agent`, for
terminal users, scripts and CI. Each attaches to the daemon of its repository (starting
it when none answers), like an editor does, and speaks the same protocol."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

import forkyard
from forkyard.bus import EventBus
from forkyard.conversation.commands import agent_line
from forkyard.daemon.link import DaemonLink
from forkyard.daemon.paths import DaemonPaths
from forkyard.errors import ForkyardError
from forkyard.review.outcome import ApplyOutcome, apply_outcome_text
from forkyard.review.service import FileSides, ReviewService
from forkyard.workspace import confined
from forkyard.workspace.apply import FilePlan
from forkyard_protocol.daemon import (
    AgentChanged,
    ApplyRequested,
    AttachParams,
    ChatDelta,
    ChatTurn,
    Event,
    GcResult,
    ReviewResult,
)
from forkyard_protocol.messages import (
    AgentDiffResult,
    AgentDispatchResult,
    AgentListResult,
    AgentReadResult,
    AgentResult,
    ChatResult,
)
from forkyard_protocol.models import FINAL_STATES, Agent, FileChange

FINAL_TURN_STATES = ("completed", "failed", "interrupted")


class TerminalFront:
    """A link plus a bus of the daemon's events, for one command."""

    def __init__(self, root: Path, state_dir: Path, environ: Any, idle: float) -> None:
        self.root = root
        self.bus = EventBus()
        self.link = DaemonLink(
            DaemonPaths(state_dir),
            environ,
            lambda: AttachParams(
                root=str(root), kind="terminal", name="terminal", version=forkyard.__version__
            ),
            idle_seconds=idle,
            on_event=self.bus.publish,
        )
        self.review = ReviewService(self)

    def resolve_agent(self, ref: str) -> Agent:
        return self.link.resolve_agent(ref)

    async def review_files(self, agent: Agent) -> list[FileSides]:
        result = ReviewResult.model_validate(
            await self.link.call("daemon/review", {"agentId": agent.id})
        )
        return [
            (FileChange.model_validate(f.change), f.base_text, f.agent_text) for f in result.files
        ]


@asynccontextmanager
async def attached(repo: Path) -> AsyncIterator[TerminalFront]:
    from forkyard.settings import current_environ, load_settings
    from forkyard.workspace.git import Repository

    environ = current_environ()
    repository = await Repository.discover(Path(await anyio.Path(repo).absolute()))
    loaded = await anyio.to_thread.run_sync(load_settings, repository.root, environ)
    state_dir = loaded.settings.resolved_state_dir(environ).expanduser().absolute()
    front = TerminalFront(repository.root, state_dir, environ, loaded.settings.daemon_idle_seconds)
    async with anyio.create_task_group() as group:
        await front.link.open(group)
        try:
            yield front
        finally:
            await front.link.close()
            front.bus.close()
            group.cancel_scope.cancel()


def run_command(args: argparse.Namespace) -> int:
    """The command's exit status: 0 done, 1 it did not go as asked (a failed turn, a
    conflict), 2 the request was refused (the message says why), 130 interrupted."""
    try:
        return anyio.run(_run, args)
    except KeyboardInterrupt:
        return 130
    except BaseExceptionGroup as group:
        refused, rest = group.split(ForkyardError)
        if refused is None or rest is not None:
            raise
        for exc in _leaves(refused):
            print(f"forkyard: {exc}", file=sys.stderr)
        return 2
    except ForkyardError as exc:
        print(f"forkyard: {exc}", file=sys.stderr)
        return 2


def gc_through_daemon(repo: Path, dry_run: bool, forced: frozenset[int]) -> int | None:
    """`forkyard gc` by the daemon that owns the worktrees; None when none runs (then
    the command does it itself: nobody else is using them)."""

    async def run() -> int | None:
        from forkyard.daemon.link import connect
        from forkyard.settings import current_environ, load_settings

        environ = current_environ()
        loaded = await anyio.to_thread.run_sync(load_settings, repo, environ)
        state_dir = loaded.settings.resolved_state_dir(environ).expanduser().absolute()
        try:
            stream = await connect(DaemonPaths(state_dir))
        except OSError:
            return None
        await stream.aclose()
        async with attached(repo) as front:
            params = {"dryRun": dry_run, "agents": sorted(forced)}
            result = GcResult.model_validate(await front.link.call("daemon/gc", params))
        for line in result.lines:
            print(line)
        return 1 if result.errors else 0

    return anyio.run(run)


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found += _leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]
    return found


async def _run(args: argparse.Namespace) -> int:
    async with attached(args.repo) as front:
        name = args.terminal
        if name == "agents":
            return await _agents(front, as_json=args.json)
        if name == "dispatch":
            params: dict[str, Any] = {"task": args.task, "role": args.role}
            if args.backend:
                params["backend"] = args.backend
            if args.n:
                params["count"] = args.n
            if args.placement:
                params["placement"] = args.placement
            raw = await front.link.call("forkyard/agent/dispatch", params)
            result = AgentDispatchResult.model_validate(raw)
            for agent in result.agents or [result.agent]:
                print(
                    f"#{agent.number} {agent.title} {agent.state} ({agent.role}, {agent.backend})"
                )
            return 0
        if name == "chat":
            return await _chat(front, args.text, args.thread)
        if name == "log":
            return await _log(front, args.agent, follow=args.follow)
        if name == "diff":
            raw = await front.link.call("forkyard/agent/diff", {"agentId": args.agent})
            sys.stdout.write(AgentDiffResult.model_validate(raw).patch)
            return 0
        if name == "apply":
            return await _apply(front, args.agent)
        if name == "agent":
            return await _agent(front, args.agent, materialize=args.materialize)
    return 2


async def _agents(front: TerminalFront, *, as_json: bool) -> int:
    agents = AgentListResult.model_validate(await front.link.call("forkyard/agent/list")).agents
    if as_json:
        print(json.dumps([agent.wire() for agent in agents]))
        return 0
    if not agents:
        print("no agents yet: `forkyard dispatch TASK`")
    numbers = {agent.id: agent.number for agent in agents}
    for agent in agents:
        print(agent_line(agent, numbers).replace("**", "").replace("`", ""))
    return 0


async def _agent(front: TerminalFront, ref: str, *, materialize: bool) -> int:
    """`forkyard agent N --materialize`: the worktree made a full one, its path said."""
    if not materialize:
        print("forkyard agent: say what to do (--materialize)", file=sys.stderr)
        return 2
    raw = await front.link.call("forkyard/agent/materialize", {"agentId": ref})
    agent = AgentResult.model_validate(raw).agent
    print(f"#{agent.number} {agent.title}: full worktree at {agent.worktree}")
    return 0


async def _chat(front: TerminalFront, text: str, thread: str | None) -> int:
    """Sends the message, streams the reply to stdout as it comes."""
    with front.bus.subscribe() as events:
        raw = await front.link.call("daemon/chat", {"text": text, "threadId": thread})
        result = ChatResult.model_validate(raw)
        state = await _stream_turn(front, events, result)
    print(f"\n(thread {result.thread_id})", file=sys.stderr)
    return 0 if state == "completed" else 1


async def _stream_turn(
    front: TerminalFront, events: MemoryObjectReceiveStream[Event], result: ChatResult
) -> str:
    async for event in events:
        if isinstance(event, ChatDelta) and event.turn_id == result.turn_id:
            sys.stdout.write(event.delta)
            sys.stdout.flush()
        elif isinstance(event, ApplyRequested) and event.front_id == front.link.front_id:
            outcome = await _apply_in_order(front, event.agent_ids or [event.agent_id])
            await front.link.call(
                "daemon/thread/note",
                {"threadId": event.thread_id, "text": outcome, "agentId": event.agent_id},
            )
            print(f"\n{outcome}")
        elif (
            isinstance(event, ChatTurn)
            and event.turn_id == result.turn_id
            and event.state in FINAL_TURN_STATES
        ):
            if event.error:
                print(f"\n{event.error}", file=sys.stderr)
            return event.state
    return "interrupted"


async def _log(front: TerminalFront, ref: str, *, follow: bool) -> int:
    with front.bus.subscribe() as events:
        shown = 0
        agent: Agent | None = None
        while True:
            raw = await front.link.call("forkyard/agent/read", {"agentId": ref})
            read = AgentReadResult.model_validate(raw)
            agent = read.agent
            for entry in read.log[shown:]:
                print(f"{entry.time} {entry.kind}: {entry.text}")
            shown = len(read.log)
            if not follow or agent.state in FINAL_STATES:
                break
            async for event in events:
                if isinstance(event, AgentChanged) and event.agent.id == agent.id:
                    break
    return 0


async def _apply(front: TerminalFront, refs: list[str]) -> int:
    text = await _apply_in_order(front, refs)
    print(text)
    return 0 if text.startswith("Applied") and "Conflicts" not in text else 1


async def _apply_in_order(front: TerminalFront, refs: list[str]) -> str:
    """One agent as `_apply_quietly`; several one after another, each merged over the
    files the ones before it wrote, stopping (nothing of it written) at the first that
    would conflict, as `forkyard/agent/applyAll` does in an editor."""
    if len(refs) == 1:
        return await _apply_quietly(front, refs[0])
    told = []
    for ref in refs:
        text = await _apply_quietly(front, ref, stop_on_conflict=True)
        told.append(text)
        if not text.startswith("Applied") or "Conflicts" in text:
            break
    return "\n\n".join(told)


async def _apply_quietly(front: TerminalFront, ref: str, *, stop_on_conflict: bool = False) -> str:
    """The same three-way merge as in an editor, against the files on disk."""
    root = front.root
    agent = front.resolve_agent(ref)

    async def current_text(path: str) -> str | None:
        return await anyio.to_thread.run_sync(confined.read_text, root, path)

    try:
        plan = await front.review.confined_plan(root, agent.id, current_text)
    except ForkyardError as exc:
        return f"Agent #{agent.number} was not applied: {exc}"
    if stop_on_conflict and plan.conflicts:
        return f"Stopped at agent #{agent.number}: nothing of it was applied. Conflicts:\n" + (
            "\n".join(f"- `{c.path}`: {c.reason}" for c in plan.conflicts)
        )
    failed = await anyio.to_thread.run_sync(_write_plans, root, plan.plans)
    conflicts = [(c.path, c.reason) for c in plan.conflicts] + list(failed.items())
    touched = [p.path for p in plan.plans if p.kind != "noop" and p.path not in failed]
    if plan.complete and not failed:
        await front.link.call("daemon/markApplied", {"agentId": agent.id})
    return apply_outcome_text(agent.number, ApplyOutcome(True, touched, conflicts))


def _write_plans(root: Path, plans: list[FilePlan]) -> dict[str, str]:
    """Each plan onto disk, never through a link; what could not be written, by path."""
    failed: dict[str, str] = {}
    for plan in plans:
        try:
            if plan.kind == "delete":
                confined.delete_file(root, plan.path)
            elif plan.kind == "create":
                confined.create_file(root, plan.path, plan.new_text or "")
            elif plan.kind == "edit" and plan.new_text is not None:
                confined.replace_file(root, plan.path, plan.new_text)
        except (confined.UnsafePathError, OSError) as exc:
            failed[plan.path] = str(exc)
    return failed
