"""Three-way merge of the user's text and an agent's text over their common base.

Applying an agent never overwrites the user's work: changes that only one side made are
combined, identical changes are taken once, and where both sides changed the same lines
differently the user's version is kept and the spot is reported as a conflict, instead of
writing conflict markers into a file the user is editing. Line endings travel with the
lines, so a CRLF file stays CRLF and a missing final newline stays missing unless the
agent alone changed it.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field

from forkyard.workspace.hunks import (
    LineChange,
    apply_changes,
    changes_interact,
    line_changes,
    lines_phrase,
    split_lines,
)


@dataclass(frozen=True)
class ConflictRegion:
    """Lines [start_line, end_line) of the merged text (0-based) where the user's version
    was kept over the agent's; empty when the user had deleted what the agent changed."""

    start_line: int
    end_line: int
    reason: str


@dataclass(frozen=True)
class MergeResult:
    text: str
    conflicts: list[ConflictRegion] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.conflicts


def merge3(base: str, ours: str, theirs: str) -> MergeResult:
    """Merge `theirs` (the agent's text) into `ours` (the user's), both made from `base`."""
    if theirs in (base, ours):
        return MergeResult(ours)
    if ours == base:
        return MergeResult(theirs)
    base_lines = split_lines(base)
    return merge_changes(
        base_lines,
        line_changes(base_lines, split_lines(ours)),
        line_changes(base_lines, split_lines(theirs)),
    )


def merge_changes(
    base_lines: Sequence[str],
    ours: Sequence[LineChange],
    theirs: Sequence[LineChange],
) -> MergeResult:
    """Merge two sorted, disjoint change lists over the same base lines.

    The agent's side may come straight from its hunks (rather than a fresh diff), so that
    what the merge calls a conflict is exactly what the hunk diagnostics call one.
    """
    out: list[str] = []
    conflicts: list[ConflictRegion] = []
    position = 0
    for our_part, their_part in _chunks(ours, theirs, len(base_lines)):
        parts = [*our_part, *their_part]
        low = min(change.start for change in parts)
        high = max(change.end for change in parts)
        out.extend(base_lines[position:low])
        our_lines = apply_changes(base_lines, low, high, our_part)
        if not our_part or not their_part:
            out.extend(apply_changes(base_lines, low, high, our_part or their_part))
        elif our_lines == apply_changes(base_lines, low, high, their_part):
            out.extend(our_lines)
        else:
            start = len(out)
            out.extend(our_lines)
            conflicts.append(ConflictRegion(start, len(out), _conflict_reason(start, our_lines)))
        position = high
    out.extend(base_lines[position:])
    return MergeResult("".join(out), conflicts)


def _conflict_reason(start: int, our_lines: Sequence[str]) -> str:
    if our_lines:
        return (
            f"you changed {lines_phrase(start, len(our_lines))}, which the agent also "
            "changes; your version was kept"
        )
    return (
        f"you deleted the lines at line {start + 1}, which the agent changes; your version was kept"
    )


def _chunks(
    ours: Sequence[LineChange], theirs: Sequence[LineChange], base_length: int
) -> list[tuple[list[LineChange], list[LineChange]]]:
    """Group the changes of both sides into independent chunks in base order: changes that
    interact (directly or through others) land in the same chunk."""
    parent = list(range(len(ours) + len(theirs)))

    def root(node: int) -> int:
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    their_ends = [change.end for change in theirs]
    for our_index, our_change in enumerate(ours):
        their_index = bisect_left(their_ends, our_change.start)
        while their_index < len(theirs) and theirs[their_index].start <= our_change.end:
            if changes_interact(our_change, theirs[their_index], base_length):
                parent[root(len(ours) + their_index)] = root(our_index)
            their_index += 1

    groups: dict[int, tuple[list[LineChange], list[LineChange]]] = {}
    for index, change in enumerate([*ours, *theirs]):
        group = groups.setdefault(root(index), ([], []))
        group[0 if index < len(ours) else 1].append(change)

    def span(group: tuple[list[LineChange], list[LineChange]]) -> tuple[int, int]:
        parts = [*group[0], *group[1]]
        return (min(c.start for c in parts), max(c.end for c in parts))

    return sorted(groups.values(), key=span)
