"""How agents' notices reach the person without interrupting them.

A `window/showMessageRequest` with actions is a modal question in several editors (stock
Neovim shows it as an `inputlist` that swallows the next keys), so a notice that needs no
answer is a plain `window/showMessage`. Only a client that says it shows actions without
blocking (`experimental.forkyard.noticeActions: true` in its capabilities; the VS Code
extension does) gets "Show diff / Apply / Discard" on a done agent. The choice is the
client's, never guessed from its name.

A client that says `experimental.forkyard.structuredNotices: true` gets agents' notices as
data instead (`forkyard/notice`: a kind, the agent's id, the actions), so that it never has
to recognise a done agent by the English of a message; that wins over `noticeActions`.

Notices are one short line: an editor shows a message wider than its command line as a
"Press ENTER" prompt, and the details are one request away (the agent list, its log).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import PurePath
from typing import TYPE_CHECKING, Any, Literal

from forkyard_protocol.messages import DONE_ACTIONS, NoticeKind, NoticeNotification

if TYPE_CHECKING:
    from forkyard.settings import SettingsProblem
    from forkyard_protocol.daemon import Notice

#: Longest notice we send: with the prefix stock Neovim puts before it
#: ("LSP[forkyard][Info] "), it fits the command line of a 100-column terminal beside
#: the ruler.
MAX_NOTICE_CHARS = 64
#: A notice that must name something (a setting, a reason) may take a 100-column
#: terminal's whole command line beside the ruler, as Neovim measures it.
MAX_DETAIL_CHARS = 88
#: An agent's title inside a notice keeps at least this much when the notice is cut.
MIN_TITLE_CHARS = 12


#: How an agent's notice reaches a client: `structured` as `forkyard/notice` (the done
#: agent's actions in it), `actions` a done agent asked about with a message request,
#: `plain` a `window/showMessage`.
NoticeRoute = Literal["structured", "actions", "plain"]

_KINDS: dict[str, NoticeKind] = {
    "done": "agentDone",
    "failed": "agentFailed",
    "cancelled": "agentCancelled",
}


def _opted_in(experimental: Any, name: str) -> bool:
    forkyard = experimental.get("forkyard") if isinstance(experimental, dict) else None
    return isinstance(forkyard, dict) and forkyard.get(name) is True


def client_shows_actions_without_blocking(experimental: Any) -> bool:
    """Whether the client's `experimental` capabilities opt into action notices."""
    return _opted_in(experimental, "noticeActions")


def client_wants_structured_notices(experimental: Any) -> bool:
    """Whether the client's `experimental` capabilities opt into `forkyard/notice`."""
    return _opted_in(experimental, "structuredNotices")


def notice_route(experimental: Any) -> NoticeRoute:
    """How agents' notices reach the client with these `experimental` capabilities: the
    one decision both the notice and the done agent's question follow."""
    if client_wants_structured_notices(experimental):
        return "structured"
    if client_shows_actions_without_blocking(experimental):
        return "actions"
    return "plain"


def structured_notice(notice: Notice) -> NoticeNotification:
    """`notice` as `forkyard/notice`: the same one line a plain client is shown, and what
    it is about as data."""
    agent = notice.agent
    kind: NoticeKind = _KINDS.get(agent.state, "other") if agent is not None else "other"
    return NoticeNotification(
        level=notice.level,
        message=short_notice(notice.text),
        kind=kind,
        agent_id=agent.id if agent is not None else None,
        agent=agent,
        actions=list(DONE_ACTIONS) if kind == "agentDone" else [],
    )


def cut(text: str, limit: int) -> str:
    """`text`'s first line, at most `limit` characters, "…" marking a cut."""
    lines = text.strip().splitlines()
    line = lines[0] if lines else ""
    if len(line) <= limit and len(lines) <= 1:
        return line
    return line[: limit - 1].rstrip() + "…"


def short_notice(text: str) -> str:
    """A notice cut to one line that fits; an agent's title inside "(…)" is cut first, so
    that the outcome at the end (done, +3 -1, the error) survives."""
    line = cut(text, 10_000)
    if len(line) <= MAX_NOTICE_CHARS:
        return line
    start, end = line.find(" ("), line.find(") ")
    if 0 < start < end:
        title = line[start + 2 : end]
        room = max(MAX_NOTICE_CHARS - (len(line) - len(title)), MIN_TITLE_CHARS)
        line = line[: start + 2] + cut(title, room) + line[end:]
    return cut(line, MAX_NOTICE_CHARS)


def settings_notices(problems: Sequence[SettingsProblem]) -> list[str]:
    """The lines to show for the settings problems of a (re)load, however many there are:
    messages in a row stack up into a prompt too. A problem that brings its own one-line
    summary (an untrusted repository's ignored keys, with how to trust) keeps it; the
    others share one line naming each key and its source. The whole list goes to the log."""
    lines = [cut(p.summary, MAX_DETAIL_CHARS) for p in problems if p.summary is not None]
    plain = [p for p in problems if p.summary is None]
    if len(plain) == 1:
        lines.append(cut(str(plain[0]), MAX_DETAIL_CHARS))
    elif plain:
        named = ", ".join(f"'{p.key}' ({PurePath(p.source).name})" for p in plain)
        if len(named) > MAX_DETAIL_CHARS - 30:  # the keys alone, their sources in the log
            named = ", ".join(f"'{p.key}'" for p in plain)
        lines.append(cut(f"Forkyard ignored {named}; see the log", MAX_DETAIL_CHARS))
    return lines
