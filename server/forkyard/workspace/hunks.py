"""Where an agent's hunks land in the user's text, and how to point at them.

An agent's hunks are made against its base text, but by the time the user reviews them
their buffer may have moved on. Diagnostics and "Apply hunk" code actions must follow the
user's text, so each hunk is mapped onto it: a hunk whose base lines the user left alone
moves with the user's edits above it; a hunk that collides with a user edit no longer
applies. The same line primitives (`LineChange`, `line_changes`, `changes_interact`) drive
the three-way merge in `merge.py`, so a hunk shown as applicable is exactly one that the
merge places without a conflict.

Lines are split on "\\n" only, as git does; "\\r\\n" stays part of its line, so CRLF files
keep their endings. Everything here is pure: plain strings in, plain data out.
"""

from __future__ import annotations

import difflib
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from forkyard_protocol.models import Hunk


class HunkMismatchError(ValueError):
    """A hunk that cannot be used against a text: malformed, or its old lines are not
    the lines found where it claims to start."""


def split_lines(text: str) -> list[str]:
    """`text` as lines that keep their endings, so that joining them gives `text` back.

    Unlike `str.splitlines`, only "\\n" ends a line (like git), so form feeds or Unicode
    separators inside a line do not shift line numbers away from git's.
    """
    parts = text.split("\n")
    lines = [part + "\n" for part in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def line_content(line: str) -> str:
    """A line without its ending: what an editor shows and counts characters in."""
    if line.endswith("\r\n"):
        return line[:-2]
    if line.endswith("\n"):
        return line[:-1]
    return line


@dataclass(frozen=True)
class LineChange:
    """Replace base lines [start, end) with `lines`; start == end is a pure insertion
    before base line `start`."""

    start: int
    end: int
    lines: tuple[str, ...]

    @property
    def is_insertion(self) -> bool:
        return self.start == self.end


#: Regions smaller than this (base lines x other lines) go straight to difflib, which is
#: quick on them whatever the lines are.
_SMALL_REGION = 40_000
#: How many line comparisons difflib may spend on a region with no unique line to anchor
#: on (a file of mostly blank lines, say) before the region is taken as one replacement.
_MATCHING_BUDGET = 2_000_000
#: The most occurrences a line may have to serve as an anchor when no line is unique.
_MAX_ANCHOR_COUNT = 8


def line_changes(base_lines: Sequence[str], other_lines: Sequence[str]) -> list[LineChange]:
    """The changes that turn `base_lines` into `other_lines`, sorted, disjoint and never
    touching (an unchanged line always separates two of them).

    difflib's matcher slows down quadratically on repeated lines (blank lines, braces), so
    large regions are first cut at lines that occur once on each side (patience diff, as
    git does) and only the gaps between those anchors are matched by difflib.
    """
    changes: list[LineChange] = []
    regions = [_Region(0, len(base_lines), 0, len(other_lines))]
    while regions:
        region = regions.pop().trimmed(base_lines, other_lines)
        if region.size <= _SMALL_REGION:
            changes.extend(region.matched(base_lines, other_lines))
            continue
        # Lines found once on each side make the best anchors (patience diff); a region
        # without any, like a file pasted twice, can still be cut at lines found as often.
        anchors = region.anchors(base_lines, other_lines, 1) or region.anchors(
            base_lines, other_lines, _MAX_ANCHOR_COUNT
        )
        if anchors:
            regions.extend(region.between(anchors))
        elif region.matching_cost(base_lines, other_lines) <= _MATCHING_BUDGET:
            changes.extend(region.matched(base_lines, other_lines))
        else:
            changes.append(region.as_one_change(other_lines))
    return sorted(changes, key=lambda change: change.start)


@dataclass(frozen=True)
class _Region:
    """Base lines [low, high) against other lines [other_low, other_high)."""

    low: int
    high: int
    other_low: int
    other_high: int

    @property
    def size(self) -> int:
        return (self.high - self.low) * (self.other_high - self.other_low)

    def trimmed(self, base: Sequence[str], other: Sequence[str]) -> _Region:
        """Without the lines both sides share at their start and end."""
        low, high, other_low, other_high = self.low, self.high, self.other_low, self.other_high
        while low < high and other_low < other_high and base[low] == other[other_low]:
            low, other_low = low + 1, other_low + 1
        while low < high and other_low < other_high and base[high - 1] == other[other_high - 1]:
            high, other_high = high - 1, other_high - 1
        return _Region(low, high, other_low, other_high)

    def as_one_change(self, other: Sequence[str]) -> LineChange:
        return LineChange(self.low, self.high, tuple(other[self.other_low : self.other_high]))

    def matched(self, base: Sequence[str], other: Sequence[str]) -> list[LineChange]:
        """The region's changes as difflib finds them."""
        if self.low == self.high and self.other_low == self.other_high:
            return []
        if self.low == self.high or self.other_low == self.other_high:
            return [self.as_one_change(other)]
        matcher = difflib.SequenceMatcher(
            None,
            base[self.low : self.high],
            other[self.other_low : self.other_high],
            autojunk=False,
        )
        return [
            LineChange(
                self.low + i1,
                self.low + i2,
                tuple(other[self.other_low + j1 : self.other_low + j2]),
            )
            for tag, i1, i2, j1, j2 in matcher.get_opcodes()
            if tag != "equal"
        ]

    def matching_cost(self, base: Sequence[str], other: Sequence[str]) -> int:
        """Roughly how many comparisons difflib makes per pass over the region."""
        counts = Counter(other[self.other_low : self.other_high])
        return sum(counts[line] for line in base[self.low : self.high])

    def anchors(
        self, base: Sequence[str], other: Sequence[str], max_count: int
    ) -> list[tuple[int, int]]:
        """(base index, other index) of equal lines to cut the region at: lines found as
        often on each side and at most `max_count` times (the k-th occurrence pairs with
        the k-th), keeping the longest run of them in the same order on both sides."""
        base_counts = Counter(base[self.low : self.high])
        other_counts = Counter(other[self.other_low : self.other_high])
        occurrences: dict[str, list[int]] = {}
        for j in range(self.other_low, self.other_high):
            line = other[j]
            if other_counts[line] == base_counts[line] <= max_count:
                occurrences.setdefault(line, []).append(j)
        seen: Counter[str] = Counter()
        pairs = []
        for i in range(self.low, self.high):
            line = base[i]
            if line in occurrences:
                pairs.append((i, occurrences[line][seen[line]]))
                seen[line] += 1
        return _longest_increasing_run(pairs)

    def between(self, anchors: Sequence[tuple[int, int]]) -> list[_Region]:
        """The gaps around `anchors`, which are equal lines."""
        gaps = []
        low, other_low = self.low, self.other_low
        for i, j in anchors:
            gaps.append(_Region(low, i, other_low, j))
            low, other_low = i + 1, j + 1
        gaps.append(_Region(low, self.high, other_low, self.other_high))
        return gaps


def _longest_increasing_run(pairs: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """The longest subsequence of `pairs` (sorted by their first item) whose second items
    increase too: patience sorting, O(n log n)."""
    tails: list[int] = []  # tails[k]: index in pairs of the end of the best run of length k+1
    tail_values: list[int] = []
    previous: list[int] = []
    for index, (_, j) in enumerate(pairs):
        length = bisect_left(tail_values, j)
        previous.append(tails[length - 1] if length else -1)
        if length == len(tails):
            tails.append(index)
            tail_values.append(j)
        else:
            tails[length] = index
            tail_values[length] = j
    run: list[tuple[int, int]] = []
    index = tails[-1] if tails else -1
    while index >= 0:
        run.append(pairs[index])
        index = previous[index]
    return run[::-1]


def changes_interact(a: LineChange, b: LineChange, base_length: int) -> bool:
    """Whether changes from two sides touch the same text, so that neither order of
    applying them is obviously right.

    They interact when they share a base line, when both insert at the same point, or when
    one ends the file without a final newline and the other appends after it (applying both
    would glue two lines together). Changes that merely touch are independent: a change to
    line 3 and one to line 4 both apply.
    """
    if a.start < b.end and b.start < a.end:
        return True
    if a.is_insertion and b.is_insertion and a.start == b.start:
        return True
    return _glues_lines(a, b, base_length) or _glues_lines(b, a, base_length)


def _glues_lines(first: LineChange, then: LineChange, base_length: int) -> bool:
    return (
        not first.is_insertion
        and first.end == base_length
        and then.is_insertion
        and then.start == base_length
        and bool(first.lines)
        and not first.lines[-1].endswith("\n")
    )


def apply_changes(
    base_lines: Sequence[str], start: int, end: int, changes: Sequence[LineChange]
) -> list[str]:
    """Base lines [start, end) with `changes` (sorted, disjoint, inside that span) applied."""
    out: list[str] = []
    position = start
    for change in changes:
        out.extend(base_lines[position : change.start])
        out.extend(change.lines)
        position = change.end
    out.extend(base_lines[position:end])
    return out


@dataclass(frozen=True)
class ParsedHunk:
    """A hunk as lines: the base lines it replaces and where, and what replaces them."""

    hunk_id: str
    change: LineChange
    old_lines: tuple[str, ...]


def parse_hunk(hunk: Hunk) -> ParsedHunk:
    """Read a hunk's +/- text into lines, honouring "\\ No newline at end of file".

    Context lines (" ") are accepted too, so a hunk made with context still works.
    Raises HunkMismatchError when the text disagrees with the header's line counts.
    """
    old: list[str] = []
    new: list[str] = []
    last_sides: tuple[list[str], ...] = ()
    for raw in split_lines(hunk.text):
        if raw.startswith("\\"):
            for side in last_sides:
                side[-1] = side[-1].removesuffix("\n")
            continue
        if raw.startswith("@@"):
            continue
        tag, body = raw[:1], raw[1:]
        if tag == "-":
            last_sides = (old,)
        elif tag == "+":
            last_sides = (new,)
        elif tag == " ":
            last_sides = (old, new)
        else:
            raise HunkMismatchError(f"hunk {hunk.id}: unexpected line {raw!r}")
        for side in last_sides:
            side.append(body)
    if len(old) != hunk.old_lines or len(new) != hunk.new_lines:
        raise HunkMismatchError(
            f"hunk {hunk.id}: header says -{hunk.old_lines} +{hunk.new_lines}, "
            f"text has -{len(old)} +{len(new)}"
        )
    # git numbers a pure insertion by the line it follows, anything else by its first line.
    start = hunk.old_start if hunk.old_lines == 0 else hunk.old_start - 1
    return ParsedHunk(hunk.id, LineChange(start, start + len(old), tuple(new)), tuple(old))


def checked_change(hunk: Hunk, base_lines: Sequence[str]) -> LineChange:
    """The hunk's change, after making sure its old lines are really there in the base."""
    parsed = parse_hunk(hunk)
    change = parsed.change
    if change.end > len(base_lines) or tuple(base_lines[change.start : change.end]) != (
        parsed.old_lines
    ):
        raise HunkMismatchError(f"hunk {hunk.id} does not match the agent's base text")
    return change


@dataclass(frozen=True)
class LocatedHunk:
    """A hunk placed on the user's current text.

    `start_line` is the 0-based current line where the replaced region starts and
    `line_count` how many current lines it replaces; 0 means a pure insertion before
    `start_line` (== the number of lines: at the end). When `applies` is False, `reason`
    says why, and the position is the best guess of where the hunk would have gone.
    """

    hunk_id: str
    start_line: int
    line_count: int
    applies: bool
    new_lines: list[str]
    reason: str | None = None


def lines_phrase(first: int, count: int) -> str:
    """ "line 4" or "lines 4-6", from a 0-based first line."""
    if count <= 1:
        return f"line {first + 1}"
    return f"lines {first + 1}-{first + count}"


class _UserEdits:
    """The user's changes to the base, with where each one sits in the current text."""

    def __init__(self, base_lines: Sequence[str], current_lines: Sequence[str]) -> None:
        self.base_length = len(base_lines)
        self.changes = line_changes(base_lines, current_lines)
        self.ends = [change.end for change in self.changes]
        # shift[i]: how far the user's first i changes move the base lines that follow them.
        self.shift = [0]
        for change in self.changes:
            self.shift.append(self.shift[-1] + len(change.lines) - (change.end - change.start))

    def current_line(self, base_line: int) -> int:
        """Where a base line (or insertion point) that no user change touches is now."""
        return base_line + self.shift[bisect_right(self.ends, base_line)]

    def interacting(self, change: LineChange) -> list[int]:
        """Indices of the user's changes that collide with `change`."""
        found = []
        index = bisect_left(self.ends, change.start)
        while index < len(self.changes) and self.changes[index].start <= change.end:
            if changes_interact(self.changes[index], change, self.base_length):
                found.append(index)
            index += 1
        return found


def locate_hunks(base_text: str, current_text: str, hunks: Sequence[Hunk]) -> list[LocatedHunk]:
    """Place each of the agent's hunks (made against `base_text`) on `current_text`."""
    base_lines = split_lines(base_text)
    current_lines = base_lines if current_text == base_text else split_lines(current_text)
    edits = _UserEdits(base_lines, current_lines)
    return [_locate(hunk, base_lines, edits) for hunk in hunks]


def _locate(hunk: Hunk, base_lines: Sequence[str], edits: _UserEdits) -> LocatedHunk:
    try:
        change = checked_change(hunk, base_lines)
    except HunkMismatchError as error:
        guess = max(0, min(hunk.old_start - 1, len(base_lines)))
        return LocatedHunk(hunk.id, edits.current_line(guess), 0, False, [], str(error))
    new_lines = list(change.lines)
    colliding = edits.interacting(change)
    if not colliding:
        start = edits.current_line(change.start)
        return LocatedHunk(hunk.id, start, change.end - change.start, True, new_lines)
    user = [edits.changes[index] for index in colliding]
    low = min(change.start, user[0].start)
    high = max(change.end, user[-1].end)
    theirs = apply_changes(base_lines, low, high, [change])
    ours = apply_changes(base_lines, low, high, user)
    first_user = user[0]
    start = first_user.start + edits.shift[colliding[0]] - (first_user.start - low)
    if ours == theirs:
        reason = "your text already has this change"
    elif ours:
        reason = f"you changed {lines_phrase(start, len(ours))}, which this hunk also changes"
    else:
        reason = f"you deleted the lines at line {start + 1}, which this hunk changes"
    return LocatedHunk(hunk.id, start, len(ours), False, new_lines, reason)


def marked_lines(located: LocatedHunk, total_lines: int) -> range:
    """The current lines a hunk is shown on: the lines it replaces, or for an insertion
    the line it goes before (the last line when it goes at the end)."""
    if total_lines == 0:
        return range(0)
    if located.line_count == 0:
        line = min(located.start_line, total_lines - 1)
        return range(line, line + 1)
    first = min(located.start_line, total_lines - 1)
    return range(first, min(located.start_line + located.line_count, total_lines))
