"""The file tools' work: reading, writing, editing and deleting inside a confined root.

Every function here blocks (file I/O) and is run in a worker thread by the tool box. Each
returns the text the model gets back, or raises `ToolFailure` with a message that tells
the model what to do instead. Text is read and written byte-exact (`newline=""`): an
agent that changes one line must not rewrite a file's line endings.
"""

from __future__ import annotations

import os
from pathlib import Path

from forkyard.tools.confine import relative_display, resolve_inside

_BINARY_SNIFF_BYTES = 8192


class ToolFailure(Exception):
    """A tool could not do what was asked; the message is the tool's error result."""


def read_file(
    root: Path, path: str, start_line: int | None, end_line: int | None, max_chars: int
) -> str:
    """The file's text (lines `start_line`..`end_line`, 1-based, inclusive), at most
    `max_chars` of it, with a note saying how to read on when it was cut."""
    target = resolve_inside(root, path, for_write=False)
    _require_file(target, path)
    if start_line is not None and end_line is not None and end_line < start_line:
        raise ToolFailure(f"end_line ({end_line}) is before start_line ({start_line})")
    if _is_binary(target):
        raise ToolFailure(f"{path} is a binary file ({target.stat().st_size} bytes); not shown")
    first = start_line or 1
    shown: list[str] = []
    size = 0
    total = 0
    cut_at: int | None = None
    partial = False
    with target.open(encoding="utf-8", errors="replace", newline="") as handle:
        for total, line in enumerate(handle, start=1):
            if total < first or (end_line is not None and total > end_line) or cut_at:
                continue
            if size + len(line) > max_chars:
                cut_at = total
                if not shown:  # one line longer than the whole budget: show its start
                    shown.append(line[:max_chars])
                    partial = True
                continue
            shown.append(line)
            size += len(line)
    if total == 0:
        return f"({path} is empty)"
    if first > total:
        raise ToolFailure(f"start_line {first} is beyond the end of {path} ({total} lines)")
    text = "".join(shown)
    last = min(end_line or total, total)
    if partial:
        return (
            f"{text}\n[... truncated: line {first} alone is longer than {max_chars} "
            f"characters; showed its start; the file has {total} lines ...]"
        )
    if cut_at is not None:
        return (
            f"{text}\n[... truncated: showed lines {first}-{cut_at - 1} of {total} lines "
            f"({max_chars} characters); read on with start_line={cut_at} ...]"
        )
    if first > 1 or last < total:
        return f"{text}\n[lines {first}-{last} of {total}]"
    return text


def write_file(root: Path, path: str, content: str) -> str:
    target = resolve_inside(root, path, for_write=True)
    if target.is_dir():
        raise ToolFailure(f"{path} is a directory; give a file path")
    existed = target.exists()
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w", encoding="utf-8", newline="") as handle:
        handle.write(content)
    verb = "overwrote" if existed else "created"
    return f"{verb} {relative_display(root, target)} ({_count_lines(content)} lines)"


def edit_file(root: Path, path: str, old_text: str, new_text: str) -> str:
    """Replace the one occurrence of `old_text`. Zero or several occurrences change
    nothing: guessing which one was meant is how agents corrupt files."""
    if not old_text:
        raise ToolFailure("old_text is empty; to create or replace a whole file use write_file")
    target = resolve_inside(root, path, for_write=True)
    _require_file(target, path)
    try:
        with target.open(encoding="utf-8", newline="") as handle:
            text = handle.read()
    except UnicodeDecodeError:
        raise ToolFailure(f"{path} is not UTF-8 text; it cannot be edited") from None
    occurrences = text.count(old_text)
    if occurrences == 0:
        hint = ""
        if "\r\n" in text and "\r\n" not in old_text and old_text.count("\n") > 0:
            hint = " (the file uses CRLF line endings)"
        raise ToolFailure(
            f"old_text was not found in {path}{hint}; read the file again and copy the "
            f"text exactly, indentation and whitespace included; nothing was changed"
        )
    if occurrences > 1:
        raise ToolFailure(
            f"old_text occurs {occurrences} times in {path}; it must occur exactly once: "
            f"include more of the surrounding lines; nothing was changed"
        )
    with target.open("w", encoding="utf-8", newline="") as handle:
        handle.write(text.replace(old_text, new_text, 1))
    return (
        f"edited {relative_display(root, target)}: replaced {_count_lines(old_text)} "
        f"line(s) with {_count_lines(new_text)} line(s)"
    )


def delete_file(root: Path, path: str) -> str:
    """Delete one file (or symlink: the link itself, wherever it points)."""
    target = resolve_inside(root, path, for_write=True, follow_final=False)
    if not os.path.lexists(target):
        raise ToolFailure(f"{path} does not exist")
    if target.is_dir() and not target.is_symlink():
        raise ToolFailure(f"{path} is a directory; delete_file deletes one file at a time")
    target.unlink()
    return f"deleted {relative_display(root, target)}"


def existing_relative(root: Path, path: str) -> str:
    """A path to list or search, confined, as a POSIX path relative to `root`."""
    target = resolve_inside(root, path, for_write=False)
    if not target.exists():
        raise ToolFailure(f"{path} does not exist; list_files shows what does")
    return relative_display(root, target)


def _require_file(target: Path, path: str) -> None:
    if not target.exists():
        raise ToolFailure(f"{path} does not exist; list_files shows what does")
    if target.is_dir():
        raise ToolFailure(f"{path} is a directory; use list_files to see its files")


def _is_binary(target: Path) -> bool:
    with target.open("rb") as handle:
        return b"\0" in handle.read(_BINARY_SNIFF_BYTES)


def _count_lines(text: str) -> int:
    return text.count("\n") + (1 if text and not text.endswith("\n") else 0)
