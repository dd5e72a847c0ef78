"""LSP positions: the client's position encoding (UTF-16 unless negotiated otherwise)
and the ranges of hunks in it. An LSP notion, so it lives in the front only: the domain
counts code points."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from forkyard.workspace.hunks import LocatedHunk, line_content, marked_lines

PositionEncoding = Literal["utf-8", "utf-16", "utf-32"]


def diagnostic_range(
    located: LocatedHunk,
    current_lines: Sequence[str],
    encoding: PositionEncoding | None = None,
) -> tuple[int, int, int, int]:
    """(start_line, start_char, end_line, end_char) covering the hunk's marked lines, from
    the start of the first to the end of the last (before its line ending).

    Characters are code points unless `encoding` asks for the client's position units.
    """
    marked = marked_lines(located, len(current_lines))
    if not marked:
        return (0, 0, 0, 0)
    last_line = line_content(current_lines[marked[-1]])
    end_char = len(last_line)
    if encoding is not None:
        end_char = to_position_units(last_line, end_char, encoding)
    return (marked[0], 0, marked[-1], end_char)


def to_position_units(line_text: str, char_index: int, encoding: PositionEncoding) -> int:
    """A code-point offset within a line, in the units of the negotiated position encoding
    (LSP's default is UTF-16, where a character outside the BMP, like an emoji, counts 2)."""
    prefix = line_text[:char_index]
    if encoding == "utf-32":
        return len(prefix)
    if encoding == "utf-8":
        return len(prefix.encode("utf-8", "surrogatepass"))
    return len(prefix) + sum(1 for char in prefix if ord(char) > 0xFFFF)


def from_position_units(line_text: str, units: int, encoding: PositionEncoding) -> int:
    """The code-point offset of a client position within a line; a position past the end
    is the end, and one inside a character is the start of that character."""
    if encoding == "utf-32":
        return min(units, len(line_text))
    used = 0
    for index, char in enumerate(line_text):
        if encoding == "utf-8":
            width = len(char.encode("utf-8", "surrogatepass"))
        else:
            width = 2 if ord(char) > 0xFFFF else 1
        if used + width > units:
            return index
        used += width
    return len(line_text)
