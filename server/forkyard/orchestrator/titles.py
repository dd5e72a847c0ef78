"""An agent's title when the dispatch names none: what the agents view, the chat, the
progress and the branch show. A task that fits is its own title; a longer one is cut at a
word, never mid-word, and a long shell command is told by its words (the program, what a
`sed` expression replaces, the files) rather than its first 57 characters, which are
mostly quoting (`sed -i 's/^\\(\\s*\\)x…`)."""

from __future__ import annotations

import re
import shlex

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
