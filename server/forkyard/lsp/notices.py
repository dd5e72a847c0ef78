"""How agents' notices reach the person without interrupting them.

A `window/showMessageRequest` with actions is a modal question in several editors (stock
Neovim shows it as an `inputlist` that swallows the next keys), so a notice that needs no
answer is a plain `window/showMessage`. Only a client that says it shows actions without
blocking (`experimental.forkyard.noticeActions: true` in its capabilities; the VS Code
extension does) gets "Show diff / Apply / Discard" on a done agent. The choice is the
client's, never guessed from its name.

Notices are one short line: an editor shows a message wider than its command line as a
"Press ENTER" prompt, and the details are one request away (the agent list, its log).
"""

from __future__ import annotations

from typing import Any

#: Longest notice we send: with the prefix stock Neovim puts before it
#: ("LSP[forkyard][Info] "), it fits the command line of a 100-column terminal beside
#: the ruler.
MAX_NOTICE_CHARS = 64
#: An agent's title inside a notice keeps at least this much when the notice is cut.
MIN_TITLE_CHARS = 12


def client_shows_actions_without_blocking(experimental: Any) -> bool:
    """Whether the client's `experimental` capabilities opt into action notices."""
    forkyard = experimental.get("forkyard") if isinstance(experimental, dict) else None
    return isinstance(forkyard, dict) and forkyard.get("noticeActions") is True


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
