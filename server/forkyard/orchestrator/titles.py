"""An agent's title when the dispatch names none: what the agents view, the chat, the
progress and the branch show. A task that fits is its own title; a longer one is cut at a
word, never mid-word, and a long shell command is told by its words (the program, what a
`sed` expression replaces, the files) rather than its first 57 characters, which are
mostly quoting (`sed -i 's/^\\(\\s*\\)x…`)."""

from __future__ import annotations

import logging
import re
import shlex
from typing import TYPE_CHECKING

import anyio

from forkyard.errors import ForkyardError
from forkyard.models.config import ModelPrice
from forkyard.models.pricing import metered
from forkyard.models.types import ChatMessage, ChatModel, Usage, complete
from forkyard.supervisor import one_line
from forkyard_protocol.models import Agent

if TYPE_CHECKING:
    from forkyard.orchestrator.orchestrator import Orchestrator

logger = logging.getLogger(__name__)

MAX_TITLE_CHARS = 60
_SED_REPLACE = re.compile(r"^s(.)(?P<old>(?:\\.|(?!\1).)*)\1(?P<new>(?:\\.|(?!\1).)*)\1[gip0-9]*$")
_SEPARATORS = {";", "&&", "||", "|", "&"}


def title_from_task(task: str, backend: str | None = None) -> str:
    first_line = task.strip().splitlines()[0].strip() if task.strip() else "agent"
    if len(first_line) <= MAX_TITLE_CHARS:
        return first_line
    if backend == "command":
        first_line = command_words(first_line) or first_line
    return cut_at_word(first_line, MAX_TITLE_CHARS)


def command_words(command: str) -> str:
    """`sed -i 's/hello world/hello there/' app.py` -> `sed -i: hello world → hello
    there app.py`: quoting and redirections dropped, a sed substitution said as what it
    does, the flags kept (they are the command's words too)."""
    try:
        lexer = shlex.shlex(command, posix=True, punctuation_chars=";&|<>")
        lexer.whitespace_split = True
        tokens = list(lexer)
    except ValueError:  # unbalanced quotes: the words as typed
        tokens = command.split()
    words: list[str] = []
    expect_program = True
    program = ""
    skip_next = False
    for token in tokens:
        if skip_next:
            skip_next = False
            continue
        if token in _SEPARATORS:
            words.append(";" if token != "|" else "|")
            expect_program = True
            continue
        if set(token) <= set("<>&"):  # a redirection: it and its target go
            if words and words[-1].isdigit():
                words.pop()
            skip_next = True
            continue
        if expect_program:
            program = token.rsplit("/", 1)[-1]
            words.append(program)
            expect_program = False
            continue
        if program == "sed" and (match := _SED_REPLACE.match(token)):
            words[-1] += ":"
            words.append(f"{match['old']} → {match['new']}")
            continue
        words.append(token)
    return " ".join(words).replace(" ;", ";").strip(" ;|")


def cut_at_word(text: str, limit: int) -> str:
    """At most `limit` characters, ending at a word with "…"."""
    if len(text) <= limit:
        return text
    head = text[: limit - 1]
    space = head.rfind(" ")
    if space >= limit // 2:
        head = head[:space]
    return head.rstrip(" ,;:|") + "…"


# --- model-made titles ----------------------------------------------------------------

#: The system prompt of the title request; also how the fake model server tells it apart.
TITLE_SYSTEM = (
    "You name a coding agent's task for a list of agents. Answer with the title only: "
    "at most 6 words, no quotes, no final period."
)
#: A title that takes longer is not worth waiting for: the task's own title stays.
MODEL_TITLE_SECONDS = 30.0
MAX_TASK_CHARS_ASKED = 4000


def wants_model_title(agent: Agent) -> bool:
    """A model may name an agent whose title the dispatch did not choose and that is not
    a command (a command's title is its own words)."""
    return agent.backend != "command" and agent.title == title_from_task(agent.task, agent.backend)


def clean_title(text: str) -> str | None:
    """The model's answer as a title: its first line, without quotes, markdown or a final
    period, cut at a word; None when nothing is left."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return None
    title = lines[0].strip().strip("\"'`*#").removeprefix("Title:").strip()
    title = title.strip("\"'`*").rstrip(".").strip()
    return cut_at_word(title, MAX_TITLE_CHARS) if title else None


async def model_title(model: ChatModel, task: str) -> tuple[str | None, Usage | None]:
    """A short title for `task` from the chat model, or None (no answer in time, an
    error): the title from the task then stays; and what the call used. Model calls are
    async I/O: the event loop is never blocked, and the caller runs this in the
    background."""
    with anyio.move_on_after(MODEL_TITLE_SECONDS):
        try:
            completion = await complete(
                model, [ChatMessage.user(task[:MAX_TASK_CHARS_ASKED])], system=TITLE_SYSTEM
            )
        except Exception as exc:  # any failure of the model: keep the task's title
            logger.info("no model title: %s", one_line(str(exc), 200))
            return None, None
        return clean_title(completion.text), completion.usage
    logger.info("no model title within %s s", MODEL_TITLE_SECONDS)
    return None, None


async def retitle_with_model(
    orchestrator: Orchestrator, agent: Agent, model: ChatModel, price: ModelPrice | None = None
) -> None:
    """Ask for a title after the dispatch answered, then set it: the agent's new title
    reaches editors as `forkyard/agent/changed`. The agent's branch keeps its name. The
    call is the agent's: its usage is the agent's and counts in the day's and thread's
    sums, and a budget already reached means no call."""
    if not wants_model_title(agent):
        return
    if orchestrator.ledger.refusal(agent.thread_id, orchestrator.settings.budget):
        return
    title, used = await model_title(model, agent.task)
    try:
        runtime = orchestrator.resolve(agent.id)
    except ForkyardError:
        return  # gone meanwhile
    if used is not None:
        orchestrator.add_usage(runtime, metered(used, price))
    if title is None:
        return
    if runtime.agent.title != agent.title:
        return  # renamed meanwhile: that title wins
    if title != agent.title:
        # The orchestrator's one way to change an agent (saved, then announced).
        await orchestrator._update(runtime, title=title)
