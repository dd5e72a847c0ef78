"""Planning how an agent's changes reach the user's files, without touching any file.

`forkyard/agent/apply` goes through the editor (`workspace/applyEdit`), so the plan is data:
per file, whether to edit, create or delete it, the resulting text, small line-based
edits from the user's current text to that result (so the editor keeps cursors, folds and
undo history sane), and the conflicts that were left out. Reading the current texts and
sending the edit are the caller's job; positions here are in code points and the caller
converts them to the client's position encoding.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Literal

from forkyard.workspace.hunks import (
    HunkMismatchError,
    LineChange,
    apply_changes,
    checked_change,
    line_changes,
    line_content,
    split_lines,
)
from forkyard.workspace.merge import ConflictRegion, MergeResult, merge_changes
from forkyard_protocol.models import Conflict, FileChange, FileStatus, Hunk

FilePlanKind = Literal["edit", "create", "delete", "noop"]


@dataclass(frozen=True)
class TextEdit:
    """Replace the text between two (line, character) positions of the old text; characters
    are code points, lines are split on "\\n"."""

    start_line: int
    start_char: int
    end_line: int
    end_char: int
    new_text: str


@dataclass(frozen=True)
class FilePlan:
    """What applying does to one path.

    `new_text` is the file's text afterwards (None once deleted or when it does not
    exist). For "edit", `edits` turn the current text into `new_text`; for "create" they
    fill the new, empty file. `conflict_regions` are line ranges of `new_text` where the
    user's version was kept.
    """

    path: str
    kind: FilePlanKind
    new_text: str | None
    edits: list[TextEdit] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)
    conflict_regions: list[ConflictRegion] = field(default_factory=list)


def apply_selected_hunks(
    base_text: str, hunks: Sequence[Hunk], selected_ids: Collection[str] | None
) -> str:
    """The base text with only the selected hunks applied (all when `selected_ids` is None).

    Raises HunkMismatchError when a selected hunk does not fit the base text.
    """
    base_lines = split_lines(base_text)
    changes = _selected_changes(base_lines, hunks, selected_ids)
    return "".join(apply_changes(base_lines, 0, len(base_lines), changes))


def _selected_changes(
    base_lines: Sequence[str], hunks: Sequence[Hunk], selected_ids: Collection[str] | None
) -> list[LineChange]:
    chosen = [h for h in hunks if selected_ids is None or h.id in selected_ids]
    changes = sorted(
        (checked_change(hunk, base_lines) for hunk in chosen),
        key=lambda change: (change.start, change.end),
    )
    for before, after in pairwise(changes):
        if after.start < before.end or (
            after.is_insertion and before.is_insertion and after.start == before.start
        ):
            raise HunkMismatchError("the hunks overlap each other")
    return changes


def edits_between(old: str, new: str) -> list[TextEdit]:
    """Small edits, in document order and not overlapping, that turn `old` into `new`.

    Changed lines are found by a line diff, then each changed block is trimmed of the text
    it shares with its replacement, so that editing a word replaces just that word. A
    "\\r\\n" is never split, since editors count it as one line break.
    """
    old_lines = split_lines(old)
    offsets = [0]
    for line in old_lines:
        offsets.append(offsets[-1] + len(line))
    edits = []
    for change in line_changes(old_lines, split_lines(new)):
        start, end = offsets[change.start], offsets[change.end]
        old_block, new_block = old[start:end], "".join(change.lines)
        limit = min(len(old_block), len(new_block))
        prefix = 0
        while prefix < limit and old_block[prefix] == new_block[prefix]:
            prefix += 1
        if _inside_crlf(old, start + prefix):
            prefix -= 1
        suffix = 0
        while suffix < limit - prefix and old_block[-1 - suffix] == new_block[-1 - suffix]:
            suffix += 1
        if _inside_crlf(old, end - suffix):
            suffix -= 1
        start_line, start_char = _position(old, offsets, start + prefix)
        end_line, end_char = _position(old, offsets, end - suffix)
        replacement = new_block[prefix : len(new_block) - suffix]
        edits.append(TextEdit(start_line, start_char, end_line, end_char, replacement))
    return edits


def _inside_crlf(text: str, offset: int) -> bool:
    return 0 < offset < len(text) and text[offset - 1] == "\r" and text[offset] == "\n"


def _position(text: str, offsets: Sequence[int], offset: int) -> tuple[int, int]:
    line = bisect_right(offsets, offset) - 1
    if line == len(offsets) - 1 and line > 0 and not text.endswith("\n"):
        line -= 1  # the end of a text without a final newline is the end of its last line
    return line, offset - offsets[line]


def apply_edits(text: str, edits: Sequence[TextEdit]) -> str:
    """`text` with non-overlapping `edits` (positions as `edits_between` makes them) applied;
    for writing a file that no editor has open."""
    lines = split_lines(text)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))

    def offset(line: int, char: int) -> int:
        if line >= len(lines):
            return len(text)
        return offsets[line] + min(char, len(line_content(lines[line])))

    ordered = sorted(edits, key=lambda e: (e.start_line, e.start_char, e.end_line, e.end_char))
    for edit in reversed(ordered):
        start = offset(edit.start_line, edit.start_char)
        end = offset(edit.end_line, edit.end_char)
        text = text[:start] + edit.new_text + text[end:]
    return text


def plan_file_apply(
    path: str,
    status: FileStatus,
    base_text: str | None,
    current_text: str | None,
    agent_text: str | None,
    hunk_ids: Collection[str] | None = None,
    hunks: Sequence[Hunk] = (),
) -> FilePlan:
    """Plan one added, modified or deleted file (renames: `plan_rename_apply`).

    `current_text` is the user's text now (open buffer, else disk; None: no such file),
    `base_text` the agent's starting point, `agent_text` its result (None: deleted).
    With `hunk_ids`, only those of this file's hunks are applied.
    """
    selected = _selection(hunks, hunk_ids)
    if selected is not None and not selected:
        return FilePlan(path, "noop", current_text)
    if status == "added":
        return _plan_create(path, current_text, _require(agent_text, "agent_text", status))
    if status == "deleted":
        return _plan_delete(path, current_text, _require(base_text, "base_text", status))
    if status == "modified":
        base = _require(base_text, "base_text", status)
        agent = _require(agent_text, "agent_text", status)
        if current_text is None:
            reason = "you deleted this file, which the agent changes"
            return FilePlan(path, "noop", None, conflicts=[Conflict(path=path, reason=reason)])
        merged = _merge_agent(path, base, current_text, agent, hunks, selected)
        if isinstance(merged, FilePlan):
            return merged
        return _plan_edit(path, current_text, merged)
    raise ValueError(f"{status} files need both paths: use plan_rename_apply")


def plan_rename_apply(
    old_path: str,
    new_path: str,
    base_text: str,
    current_old_text: str | None,
    current_new_text: str | None,
    agent_text: str,
    hunk_ids: Collection[str] | None = None,
    hunks: Sequence[Hunk] = (),
) -> list[FilePlan]:
    """Plan a renamed file as [plan for the old path, plan for the new path].

    The user's edits to the old file since the base are merged into the new one, so moving
    it loses nothing; a different file already at the new path blocks the whole rename.
    """
    selected = _selection(hunks, hunk_ids)
    if selected is not None and not selected:
        return [FilePlan(old_path, "noop", current_old_text), FilePlan(new_path, "noop", None)]
    if current_old_text is None:
        try:
            target = _selected_text(base_text, agent_text, hunks, selected)
        except HunkMismatchError as error:
            reason = f"the agent's changes do not fit its base text ({error})"
            return _blocked_rename(old_path, new_path, None, current_new_text, reason)
        if current_new_text == target:
            return [FilePlan(old_path, "noop", None), FilePlan(new_path, "noop", target)]
        reason = f"you deleted or moved {old_path}, which the agent renames to {new_path}"
        return _blocked_rename(old_path, new_path, None, current_new_text, reason)
    merged = _merge_agent(new_path, base_text, current_old_text, agent_text, hunks, selected)
    if isinstance(merged, FilePlan):
        reason = merged.conflicts[0].reason
        return _blocked_rename(old_path, new_path, current_old_text, current_new_text, reason)
    conflicts = _conflicts(new_path, merged)
    if current_new_text is not None and current_new_text != merged.text:
        reason = f"you already have a different {new_path}, where the agent moves {old_path}"
        return _blocked_rename(old_path, new_path, current_old_text, current_new_text, reason)
    new_kind: FilePlanKind = "noop" if current_new_text is not None else "create"
    return [
        FilePlan(old_path, "delete", None),
        FilePlan(
            new_path,
            new_kind,
            merged.text,
            edits=edits_between("", merged.text) if new_kind == "create" else [],
            conflicts=conflicts,
            conflict_regions=merged.conflicts,
        ),
    ]


def plan_change_apply(
    change: FileChange,
    base_text: str | None,
    agent_text: str | None,
    current_texts: Mapping[str, str | None],
    hunk_ids: Collection[str] | None = None,
) -> list[FilePlan]:
    """Plan one `FileChange` of an agent's diff; `current_texts` holds the user's current
    text for each of `paths_to_read(change)` (None: no such file)."""
    if change.status == "renamed" and change.old_path is not None:
        return plan_rename_apply(
            change.old_path,
            change.path,
            _require(base_text, "base_text", "renamed"),
            current_texts.get(change.old_path),
            current_texts.get(change.path),
            _require(agent_text, "agent_text", "renamed"),
            hunk_ids,
            change.hunks,
        )
    status: FileStatus = "modified" if change.status == "renamed" else change.status
    current = current_texts.get(change.path)
    return [
        plan_file_apply(change.path, status, base_text, current, agent_text, hunk_ids, change.hunks)
    ]


def paths_to_read(change: FileChange) -> list[str]:
    """The paths whose current text `plan_change_apply` needs for `change`."""
    if change.status == "renamed" and change.old_path is not None:
        return [change.old_path, change.path]
    return [change.path]


def confine_plans(
    plans: Sequence[FilePlan],
    changes: Sequence[FileChange],
    problems: Mapping[str, str],
) -> tuple[list[FilePlan], list[Conflict], set[str]]:
    """`plans` with every change that touches a refused path (`problems`: path -> reason,
    e.g. a symbolic link on its way) turned into a noop carrying that reason.

    A change is blocked whole: a rename whose old path is a link neither deletes the old
    file nor creates the new one. Returns the plans, the new conflicts, and the paths
    whose earlier conflicts (made from texts read through the refused path) no longer
    hold.
    """
    blocked: dict[str, tuple[str, tuple[str, ...]]] = {}
    for change in changes:
        paths = tuple(paths_to_read(change))
        reason = next((problems[p] for p in paths if p in problems), None)
        if reason is not None:
            blocked |= {p: (reason, paths) for p in paths}
    for path, reason in problems.items():
        blocked.setdefault(path, (reason, (path,)))
    confined: list[FilePlan] = []
    conflicts: list[Conflict] = []
    reported: set[tuple[str, tuple[str, ...]]] = set()
    for plan in plans:
        if plan.path not in blocked:
            confined.append(plan)
            continue
        confined.append(FilePlan(plan.path, "noop", None))
        if blocked[plan.path] not in reported:  # one conflict for both paths of a rename
            reported.add(blocked[plan.path])
            conflicts.append(Conflict(path=plan.path, reason=blocked[plan.path][0]))
    return confined, conflicts, set(blocked)


def _selection(hunks: Sequence[Hunk], hunk_ids: Collection[str] | None) -> set[str] | None:
    """This file's selected hunk ids; None means the whole file."""
    if hunk_ids is None:
        return None
    return {hunk.id for hunk in hunks if hunk.id in hunk_ids}


def _require(text: str | None, name: str, status: str) -> str:
    if text is None:
        raise ValueError(f"a {status} file needs {name}")
    return text


def _selected_text(base: str, agent: str, hunks: Sequence[Hunk], selected: set[str] | None) -> str:
    return agent if selected is None else apply_selected_hunks(base, hunks, selected)


def _merge_agent(
    path: str,
    base: str,
    current: str,
    agent: str,
    hunks: Sequence[Hunk],
    selected: set[str] | None,
) -> MergeResult | FilePlan:
    """The user's current text with the agent's (selected) changes merged in, or a noop
    plan carrying the conflict when the hunks do not fit the base."""
    base_lines = split_lines(base)
    try:
        theirs = _agent_changes(base_lines, agent, hunks, selected)
    except HunkMismatchError as error:
        reason = f"the agent's changes do not fit its base text ({error})"
        return FilePlan(path, "noop", current, conflicts=[Conflict(path=path, reason=reason)])
    if current == base:
        return MergeResult("".join(apply_changes(base_lines, 0, len(base_lines), theirs)))
    return merge_changes(base_lines, line_changes(base_lines, split_lines(current)), theirs)


def _agent_changes(
    base_lines: Sequence[str], agent: str, hunks: Sequence[Hunk], selected: set[str] | None
) -> list[LineChange]:
    """The agent's changes as line changes, taken from its hunks when they describe its
    text (so that merge conflicts match the hunk diagnostics), else from a fresh diff."""
    if selected is not None:
        return _selected_changes(base_lines, hunks, selected)
    agent_lines = split_lines(agent)
    if hunks:
        try:
            changes = _selected_changes(base_lines, hunks, None)
        except HunkMismatchError:
            pass
        else:
            if apply_changes(base_lines, 0, len(base_lines), changes) == agent_lines:
                return changes
    return line_changes(base_lines, agent_lines)


def _plan_edit(path: str, current: str, merged: MergeResult) -> FilePlan:
    conflicts = _conflicts(path, merged)
    if merged.text == current:
        return FilePlan(
            path, "noop", current, conflicts=conflicts, conflict_regions=merged.conflicts
        )
    return FilePlan(
        path,
        "edit",
        merged.text,
        edits=edits_between(current, merged.text),
        conflicts=conflicts,
        conflict_regions=merged.conflicts,
    )


def _conflicts(path: str, merged: MergeResult) -> list[Conflict]:
    return [Conflict(path=path, reason=region.reason) for region in merged.conflicts]


def _plan_create(path: str, current: str | None, agent: str) -> FilePlan:
    if current is None:
        return FilePlan(path, "create", agent, edits=edits_between("", agent))
    if current == agent:
        return FilePlan(path, "noop", current)
    reason = "you already have a different file here, which the agent creates"
    return FilePlan(path, "noop", current, conflicts=[Conflict(path=path, reason=reason)])


def _plan_delete(path: str, current: str | None, base: str) -> FilePlan:
    if current is None:
        return FilePlan(path, "noop", None)
    if current == base:
        return FilePlan(path, "delete", None)
    reason = "you changed this file, which the agent deletes; it was kept"
    return FilePlan(path, "noop", current, conflicts=[Conflict(path=path, reason=reason)])


def _blocked_rename(
    old_path: str,
    new_path: str,
    current_old: str | None,
    current_new: str | None,
    reason: str,
) -> list[FilePlan]:
    conflict = Conflict(path=new_path, reason=reason)
    return [
        FilePlan(old_path, "noop", current_old),
        FilePlan(new_path, "noop", current_new, conflicts=[conflict]),
    ]
