"""Where two agents' changes meet: the lines of each file an agent's hunks replace (or
insert at), as spans of its base, and whether two agents' spans touch.

Two agents overlap in a file when their changes share a line or sit on lines next to each
other: git merges changes to neighbouring lines cleanly, but the person should still look
at both before taking them (a function changed by two agents at once rarely stays right).
Agents started from different snapshots have different bases: the other agent's spans are
first carried over to this one's base through the changes between the two base texts.

Pure and blocking: callers run it in a worker thread. It costs a merge of sorted lists per
shared file, plus one line diff of the two base texts when they differ.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from forkyard.workspace.hunks import line_changes, split_lines
from forkyard_protocol.models import FileChange, Hunk

#: A span of base lines [start, end); start == end: an insertion before line `start`.
Span = tuple[int, int]
#: A file the diff cannot show by lines (binary): it overlaps any other change to it.
WHOLE_FILE: Span = (0, 1 << 40)


def hunk_spans(hunks: Sequence[Hunk]) -> list[Span]:
    """The base lines each hunk replaces, in order (git numbers a pure insertion by the
    line it follows, anything else by its first line)."""
    spans = []
    for hunk in hunks:
        start = hunk.old_start if hunk.old_lines == 0 else hunk.old_start - 1
        spans.append((start, start + hunk.old_lines))
    return sorted(spans)


@dataclass(frozen=True)
class AgentSpans:
    """One done agent's changed lines, by path, over its base commit."""

    agent_id: str
    base: str
    files: dict[str, list[Span]] = field(default_factory=dict)

    @classmethod
    def of(cls, agent_id: str, base: str, changes: Sequence[FileChange]) -> AgentSpans:
        files: dict[str, list[Span]] = {}
        for change in changes:
            spans = [WHOLE_FILE] if change.binary else hunk_spans(change.hunks)
            if change.status == "renamed" and change.old_path:
                # A rename touches its old path as well: another agent's edit there is
                # lost to one of them.
                files[change.old_path] = spans or [WHOLE_FILE]
            files[change.path] = spans or [(0, 0)]
        return cls(agent_id, base, files)


def spans_touch(ours: Sequence[Span], theirs: Sequence[Span]) -> bool:
    """Whether any span of one list shares a line with, or is next to, one of the other
    (both sorted): one pass over both."""
    i = j = 0
    while i < len(ours) and j < len(theirs):
        a, b = ours[i], theirs[j]
        if a[0] <= b[1] and b[0] <= a[1]:
            return True
        if a[1] < b[1]:
            i += 1
        else:
            j += 1
    return False


class SortedSpans:
    """Spans sorted once, for many single-span questions (a diagnostic per hunk): a
    binary search for the last span starting by the span's end, and the furthest any
    span up to there reaches."""

    def __init__(self, spans: Sequence[Span]) -> None:
        self.spans = sorted(spans)
        self.starts = [span[0] for span in self.spans]
        self.reach: list[int] = []
        furthest = -1
        for span in self.spans:
            furthest = max(furthest, span[1])
            self.reach.append(furthest)

    def __bool__(self) -> bool:
        return bool(self.spans)

    def touches(self, span: Span) -> bool:
        """Whether a span shares a line with, or is next to, one of these."""
        index = bisect_right(self.starts, span[1]) - 1
        return index >= 0 and self.reach[index] >= span[0]


class BaseMap:
    """Positions in one base text carried over to another: unchanged lines move by the
    changes before them, a position inside a changed region widens to all of it."""

    def __init__(self, from_text: str, to_text: str) -> None:
        # The changes that turn the target text into ours, as regions (our start, our
        # end, target start, target end), sorted and disjoint.
        self._regions: list[tuple[int, int, int, int]] = []
        shift = 0
        for change in line_changes(split_lines(to_text), split_lines(from_text)):
            from_start = change.start + shift
            self._regions.append(
                (from_start, from_start + len(change.lines), change.start, change.end)
            )
            shift += len(change.lines) - (change.end - change.start)
        self._starts = [region[0] for region in self._regions]

    def span(self, span: Span) -> Span:
        return (self._position(span[0], start=True), self._position(span[1], start=False))

    def _position(self, position: int, *, start: bool) -> int:
        index = bisect_right(self._starts, position) - 1
        if index < 0:
            return position
        from_start, from_end, to_start, to_end = self._regions[index]
        if position >= from_end and not (position == from_start == from_end):
            return to_end + (position - from_end)
        return to_start if start else to_end


#: (base, path) -> the file's text at that base (None: absent there).
BaseTexts = Mapping[tuple[str, str], str | None]


def shared_paths_needing_texts(a: AgentSpans, b: AgentSpans) -> list[str]:
    """The paths both change, whose texts at both bases the comparison needs (none when
    the bases are the same commit)."""
    if a.base == b.base:
        return []
    return sorted(set(a.files) & set(b.files))


def overlapping_paths(
    a: AgentSpans,
    b: AgentSpans,
    texts: BaseTexts,
    maps: dict[tuple[str, str, str], BaseMap] | None = None,
) -> list[str]:
    """The files in which the two agents' changes touch. `maps` caches the base-to-base
    line maps between calls (one per pair of bases and path)."""
    found = []
    for path in sorted(set(a.files) & set(b.files)):
        ours, theirs = a.files[path], b.files[path]
        if a.base != b.base:
            their_text = texts.get((b.base, path))
            our_text = texts.get((a.base, path))
            if their_text is None or our_text is None:
                # Absent at one base: added by that snapshot; compare as they are.
                theirs = [WHOLE_FILE] if their_text != our_text else theirs
            elif their_text != our_text:
                key = (b.base, a.base, path)
                base_map = maps.get(key) if maps is not None else None
                if base_map is None:
                    base_map = BaseMap(their_text, our_text)
                    if maps is not None:
                        maps[key] = base_map
                theirs = sorted(base_map.span(span) for span in theirs)
        if spans_touch(ours, theirs):
            found.append(path)
    return found


def overlaps_with(
    agent: AgentSpans,
    others: Sequence[AgentSpans],
    texts: BaseTexts,
    maps: dict[tuple[str, str, str], BaseMap] | None = None,
) -> dict[str, list[str]]:
    """Other agent id -> the paths where it overlaps `agent` (only those that do)."""
    maps = {} if maps is None else maps
    found: dict[str, list[str]] = {}
    for other in others:
        if other.agent_id == agent.agent_id:
            continue
        if paths := overlapping_paths(agent, other, texts, maps):
            found[other.agent_id] = paths
    return found
