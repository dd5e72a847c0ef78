"""Threads and turns: the chat that is never blocked.

`chat` stores the user's message and queues a turn, then returns; the turn runs in the
background (one at a time per thread, threads side by side) and reports on the event
bus: deltas, complete messages, turn states. Agent events (read from the same bus) are
appended to threads as `event` messages, so the model sees them on its next turn.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass, field

import anyio
from anyio.abc import TaskGroup

from forkyard.clock import new_id, now_iso
from forkyard.conversation.commands import NO_MODEL, ChatCommands, is_command
from forkyard.conversation.history import SYSTEM_PROMPT, ModelHandle, build_model_messages
from forkyard.conversation.tools import CHAT_TOOLS, ChatTools
from forkyard.errors import UnknownThread
from forkyard.models import ChatMessage, Completion, ModelError, TextDelta
from forkyard.models.loading import load_sdks
from forkyard.models.pricing import add_usage, metered
from forkyard.orchestrator.orchestrator import Orchestrator
from forkyard.orchestrator.titles import retitle_with_model, wants_model_title
from forkyard.store import Store
from forkyard_protocol.daemon import AgentChanged, ChatDelta, ChatTurn
from forkyard_protocol.daemon import ChatMessage as ChatMessageEvent
from forkyard_protocol.models import Agent, Message, Thread, TurnState, Usage

logger = logging.getLogger(__name__)

MAX_TOOL_ROUNDS = 8
EVENT_STATES = {"running", "done", "failed", "cancelled"}
TITLE_CHARS = 60


class BudgetRefused(Exception):
    """A daily or thread budget is reached: no model call starts; `str` is the error."""


@dataclass
class Turn:
    id: str
    thread_id: str
    message_id: str
    text: str
    context: str | None
    #: The front that sent the message: `/apply` is carried out there.
    origin: str | None = None
    state: TurnState = "queued"
    scope: anyio.CancelScope | None = None
    #: The turn's model calls so far, told when the turn ends.
    usage: Usage | None = None


@dataclass
class ThreadQueue:
    turns: list[Turn] = field(default_factory=list)
    running: Turn | None = None


class Conversation:
    def __init__(
        self,
        store: Store,
        orchestrator: Orchestrator,
        model: Callable[[], ModelHandle | None],
        commands: ChatCommands,
    ) -> None:
        self.store = store
        self.orchestrator = orchestrator
        self.bus = orchestrator.bus
        self._model = model
        self.commands = commands
        self.tools = ChatTools(orchestrator)
        self._queues: dict[str, ThreadQueue] = {}
        self._task_group: TaskGroup | None = None
        self._last_thread_id: str | None = None

    async def start(self, task_group: TaskGroup) -> None:
        self._task_group = task_group
        threads = await self.store.list_threads()
        self._last_thread_id = threads[0].id if threads else None
        # Subscribed now, before any agent can change: the one consumer task keeps agent
        # events in the order they happened.
        receive, send = self.bus.open_subscription()

        async def append_events() -> None:
            try:
                async with receive:
                    async for event in receive:
                        if isinstance(event, AgentChanged) and event.previous_state is None:
                            task_group.start_soon(
                                self._model_title, event.agent, name="an agent's model title"
                            )
                        if (
                            isinstance(event, AgentChanged)
                            and event.agent.state != event.previous_state
                            and event.agent.state in EVENT_STATES
                        ):
                            await self._append_agent_event(event.agent)
            finally:
                self.bus.close_subscription(send)

        task_group.start_soon(append_events, name="agent events to threads")

    async def _model_title(self, agent: Agent) -> None:
        """A new agent's short title from the chat model, when one is configured: asked
        in the background once the dispatch has answered, so it never delays it."""
        if not wants_model_title(agent):
            return
        await load_sdks()
        handle = self._model()
        if handle is not None:
            await retitle_with_model(self.orchestrator, agent, handle.model, handle.price)

    async def _append_agent_event(self, agent: Agent) -> None:
        thread_id = agent.thread_id or self._last_thread_id
        if thread_id is None:
            return
        await self.note(thread_id, event_text(agent), agent.id)

    async def note(self, thread_id: str, text: str, agent_id: str | None = None) -> None:
        """An `event` message in a thread: what an agent did, or how an apply went."""
        if await self.store.get_thread(thread_id) is None:
            return
        message = Message(
            id=new_id("msg"),
            thread_id=thread_id,
            role="event",
            text=text,
            agent_id=agent_id,
            created_at=now_iso(),
        )
        await self.store.add_message(message)
        self.bus.publish(ChatMessageEvent(message=message))

    # --- requests --------------------------------------------------------------------

    async def chat(
        self,
        text: str,
        thread_id: str | None,
        context: str | None = None,
        origin: str | None = None,
    ) -> tuple[str, str, str]:
        """Store the user's message, queue the turn, return (thread, turn, message) ids."""
        if thread_id is None:
            stamp = now_iso()
            thread = Thread(
                id=new_id("thread"), title=_title(text), created_at=stamp, updated_at=stamp
            )
        else:
            found = await self.store.get_thread(thread_id)
            if found is None:
                raise UnknownThread(thread_id)
            thread = found.model_copy(update={"updated_at": now_iso()})
        await self.store.save_thread(thread)
        self._last_thread_id = thread.id
        turn = Turn(
            id=new_id("turn"),
            thread_id=thread.id,
            message_id=new_id("msg"),
            text=text,
            context=context,
            origin=origin,
        )
        user_message = Message(
            id=new_id("msg"),
            thread_id=thread.id,
            turn_id=turn.id,
            role="user",
            text=text,
            created_at=now_iso(),
        )
        await self.store.add_message(user_message)
        self.bus.publish(ChatMessageEvent(message=user_message))
        queue = self._queues.setdefault(thread.id, ThreadQueue())
        queue.turns.append(turn)
        if queue.running is not None:
            self._announce(turn, None)
        else:
            self._start_next(thread.id)
        return thread.id, turn.id, turn.message_id

    async def interrupt(self, thread_id: str) -> None:
        if await self.store.get_thread(thread_id) is None:
            raise UnknownThread(thread_id)
        queue = self._queues.get(thread_id)
        if queue and queue.running and queue.running.scope:
            queue.running.scope.cancel()

    async def threads(self) -> list[Thread]:
        return await self.store.list_threads()

    async def read(self, thread_id: str) -> tuple[Thread, list[Message]]:
        thread = await self.store.get_thread(thread_id)
        if thread is None:
            raise UnknownThread(thread_id)
        return thread, await self.store.list_messages(thread_id)

    # --- running turns ---------------------------------------------------------------

    def _start_next(self, thread_id: str) -> None:
        queue = self._queues[thread_id]
        if queue.running is not None or not queue.turns or self._task_group is None:
            return
        queue.running = queue.turns.pop(0)
        self._task_group.start_soon(self._run_turn, queue.running, name="chat turn")

    async def _run_turn(self, turn: Turn) -> None:
        parts: list[str] = []
        state: TurnState = "completed"
        error: str | None = None
        try:
            turn.state = "running"
            self._announce(turn, None)
            with anyio.CancelScope() as turn.scope:
                try:
                    await self._reply(turn, parts)
                except ModelError as exc:
                    state, error = "failed", str(exc)
                    parts.append(("\n\n" if parts else "") + f"**The model failed:** {exc}")
                except BudgetRefused as exc:
                    state, error = "failed", str(exc)
                    parts.append(("\n\n" if parts else "") + f"**Not asked the model:** {exc}")
                except Exception as exc:
                    logger.exception("chat turn failed")
                    state, error = "failed", f"{type(exc).__name__}: {exc}"
                    parts.append(f"**Forkyard failed to answer:** {error}")
            if turn.scope.cancelled_caught:
                state = "interrupted"
        except anyio.get_cancelled_exc_class():
            state = "interrupted"
            raise
        finally:
            with anyio.CancelScope(shield=True):
                await self._end_turn(turn, "".join(parts), state, error)

    async def _end_turn(self, turn: Turn, text: str, state: TurnState, error: str | None) -> None:
        message = Message(
            id=turn.message_id,
            thread_id=turn.thread_id,
            turn_id=turn.id,
            role="assistant",
            text=text,
            created_at=now_iso(),
        )
        await self.store.add_message(message)
        self.bus.publish(ChatMessageEvent(message=message))
        turn.state = state
        self._announce(turn, error)
        queue = self._queues[turn.thread_id]
        queue.running = None
        self._start_next(turn.thread_id)

    def _announce(self, turn: Turn, error: str | None) -> None:
        self.bus.publish(
            ChatTurn(
                thread_id=turn.thread_id,
                turn_id=turn.id,
                state=turn.state,
                error=error,
                usage=turn.usage if turn.state != "running" else None,
            )
        )

    def _emit(self, turn: Turn, parts: list[str], text: str) -> None:
        if text:
            parts.append(text)
            self.bus.publish(
                ChatDelta(
                    thread_id=turn.thread_id,
                    turn_id=turn.id,
                    message_id=turn.message_id,
                    delta=text,
                )
            )

    async def _reply(self, turn: Turn, parts: list[str]) -> None:
        if is_command(turn.text):
            reply = await self.commands.run(turn.text, turn.thread_id, turn.origin)
            self._emit(turn, parts, reply)
            return
        await load_sdks()
        handle = self._model()
        if handle is None:
            # One short paragraph on setting a model; `/help` has the command table.
            self._emit(turn, parts, NO_MODEL.rstrip())
            return
        history = await self.store.list_messages(turn.thread_id)
        messages = build_model_messages(
            history, turn.id, turn.context, budget_tokens=handle.context_tokens
        )
        await self._model_loop(handle, messages, turn, parts)

    async def _model_loop(
        self, handle: ModelHandle, messages: list[ChatMessage], turn: Turn, parts: list[str]
    ) -> None:
        model = handle.model
        ledger = self.orchestrator.ledger
        for _ in range(MAX_TOOL_ROUNDS):
            if reached := ledger.refusal(turn.thread_id, self.orchestrator.settings.budget):
                raise BudgetRefused(reached)
            completion: Completion | None = None
            async with aclosing(model.stream(messages, CHAT_TOOLS, system=SYSTEM_PROMPT)) as stream:
                async for event in stream:
                    if isinstance(event, TextDelta):
                        self._emit(turn, parts, event.text)
                    else:
                        completion = event
            if completion is not None and completion.usage is not None:
                spent = metered(completion.usage, handle.price)
                turn.usage = add_usage(turn.usage, spent)
                ledger.add(turn.thread_id, spent)
            if completion is None or not completion.tool_calls:
                return
            messages.append(ChatMessage.assistant(completion.text, completion.tool_calls))
            for call in completion.tool_calls:
                result, is_error = await self.tools.execute(call, turn.thread_id)
                messages.append(ChatMessage.tool_result(call, result, is_error=is_error))
            if parts and not parts[-1].endswith("\n"):
                self._emit(turn, parts, "\n\n")
        self._emit(turn, parts, "\n\n(stopped after too many tool calls in one turn)")


def event_text(agent: Agent) -> str:
    head = f"agent #{agent.number} ({agent.title})"
    if agent.state == "running":
        return f"{head} is running."
    if agent.state == "done":
        c = agent.changes
        text = f"{head} is done: {c.files} file(s) changed, +{c.additions} -{c.deletions}."
        return text + (f"\n\n{agent.summary}" if agent.summary else "")
    if agent.state == "failed":
        return f"{head} failed: {agent.error or 'no reason given'}"
    return f"{head} was {agent.state}."


def _title(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else "chat"
    return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 3] + "..."
