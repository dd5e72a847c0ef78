"""What the chat model sees: the system prompt, and the thread trimmed to its budget.

Trimming keeps the newest messages that fit, and keeps the latest event of every agent
even when older, so "what did agent 3 change?" still works in a long thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from forkyard.models import ChatMessage, ChatModel, estimate_tokens
from forkyard.models.config import ModelPrice
from forkyard_protocol.models import Message

SYSTEM_PROMPT = """\
You are Forkyard, the conversation at the centre of a developer's editor. Coding agents \
work in the background, each in its own git worktree; you can dispatch them, inspect \
them, send them follow-ups and cancel them with your tools. Dispatching returns at once: \
never wait for an agent, tell the user it is running and carry on the conversation. \
Agent events (running, done, failed, cancelled) appear in the conversation as messages \
starting with "[agent event]". Applying or discarding an agent's changes is the user's \
decision: tell them to review the diff and apply it from the editor or with /apply <n>. \
Be concise."""

#: Used when the model's context window is not configured.
DEFAULT_BUDGET_TOKENS = 24_000
#: Part of the window kept free for the reply and the tools' schemas.
RESERVED_FRACTION = 0.3


@dataclass(frozen=True)
class ModelHandle:
    model: ChatModel
    context_tokens: int | None = None
    #: What the model costs, to meter a turn's calls; None: unknown (tokens only).
    price: ModelPrice | None = None


def _as_chat_message(message: Message) -> ChatMessage:
    if message.role == "event":
        return ChatMessage.user(f"[agent event] {message.text}")
    if message.role == "assistant":
        return ChatMessage.assistant(message.text)
    return ChatMessage.user(message.text)


def _turn_ordered(history: Sequence[Message], turn_id: str) -> list[Message]:
    """Earlier turns (each user message followed by its reply) up to this turn's user
    message, and every agent event, in order. Replies are stored when they end, after
    messages queued meanwhile, so they are put back behind their own user message."""
    replies = {m.turn_id: m for m in history if m.role == "assistant" and m.text}
    selected: list[Message] = []
    reached = False
    for message in history:
        if message.role == "event":
            selected.append(message)
        elif message.role == "user" and not reached:
            selected.append(message)
            if message.turn_id == turn_id:
                reached = True
            elif (reply := replies.get(message.turn_id)) is not None:
                selected.append(reply)
    return selected


def build_model_messages(
    history: Sequence[Message],
    turn_id: str,
    context: str | None,
    *,
    budget_tokens: int | None,
) -> list[ChatMessage]:
    """The thread up to this turn's user message (plus agent events since), trimmed."""
    selected = _turn_ordered(history, turn_id)
    budget = int((budget_tokens or DEFAULT_BUDGET_TOKENS) * (1 - RESERVED_FRACTION))
    budget -= estimate_tokens(SYSTEM_PROMPT) + (estimate_tokens(context) if context else 0)

    latest_event: dict[str, int] = {}
    for index, message in enumerate(selected):
        if message.role == "event" and message.agent_id:
            latest_event[message.agent_id] = index
    pinned = set(latest_event.values())
    current = next(
        (i for i, m in enumerate(selected) if m.role == "user" and m.turn_id == turn_id), None
    )
    if current is not None:
        pinned.add(current)

    keep: set[int] = set(pinned)
    used = sum(estimate_tokens(selected[i].text) for i in pinned)
    for index in range(len(selected) - 1, -1, -1):
        if index in keep:
            continue
        cost = estimate_tokens(selected[index].text)
        if used + cost > budget:
            break
        keep.add(index)
        used += cost
    messages = [_as_chat_message(selected[i]) for i in sorted(keep)]
    if context and current is not None:
        position = sorted(keep).index(current)
        user = messages[position]
        messages[position] = ChatMessage.user(f"{user.text}\n\n{context}")
    return messages
