"""Planning `forkyard/agent/apply`: what each file becomes, the editor edits that get it
there, and the conflicts that were left alone, without touching a file."""

from __future__ import annotations

import random
import re
from itertools import pairwise
from pathlib import Path

import pytest

from forkyard.lsp.positions import to_position_units
from forkyard.workspace.apply import (
    FilePlan,
    TextEdit,
    apply_edits,
    apply_selected_hunks,
    edits_between,
    paths_to_read,
    plan_change_apply,
    plan_file_apply,
    plan_rename_apply,
)
from forkyard.workspace.hunks import HunkMismatchError
from forkyard_protocol.models import FileChange
from tests.unit.test_hunks import git_hunks, mutate, numbered, random_text, replace_line


def editor_apply(text: str, edits: list[TextEdit]) -> str:
    """Apply edits the way an LSP editor reads positions: a line ends at "\\r\\n" or "\\n",
    and a character offset counts within the line's content, never into its line break."""
    starts = [0] + [match.end() for match in re.finditer(r"\r\n|\n", text)]

    def offset(line: int, char: int) -> int:
        assert line < len(starts), f"line {line} is past the end"
        end = starts[line + 1] if line + 1 < len(starts) else len(text)
        content = text[starts[line] : end].removesuffix("\n").removesuffix("\r")
        assert char <= len(content), f"character {char} is past the end of line {line}"
        return starts[line] + char

    spans = [(offset(e.start_line, e.start_char), offset(e.end_line, e.end_char)) for e in edits]
    for (_, previous_end), (start, _) in pairwise(spans):
        assert previous_end < start, "edits overlap, touch or are out of order"
    for (start, end), edit in reversed(list(zip(spans, edits, strict=True))):
        assert start <= end
        text = text[:start] + edit.new_text + text[end:]
    return text


def test_edits_between_round_trips_over_many_random_texts() -> None:
    rng = random.Random(1234)
    endings = ["\n", "\r\n"]
    for _ in range(1500):
        ending = rng.choice(endings)
        old = random_text(rng).replace("\n", ending)
        new = mutate(rng, old) if rng.random() < 0.8 else random_text(rng)
        if rng.random() < 0.3:
            new = new.replace("é", "e").replace("1", "42")
        edits = edits_between(old, new)
        assert editor_apply(old, edits) == new, (old, new, edits)
        assert apply_edits(old, edits) == new, (old, new, edits)
        assert (edits == []) == (old == new)


def test_edits_are_small_and_keep_crlf_pairs_whole() -> None:
    assert edits_between("héllo wörld\r\nnext\r\n", "héllo world\r\nnext\r\n") == [
        TextEdit(0, 7, 0, 8, "o")
    ]
    # Turning a CRLF into LF replaces the pair, not half of it.
    assert edits_between("a\r\nb\r\n", "a\nb\r\n") == [TextEdit(0, 1, 1, 0, "\n")]
    assert edits_between("", "new\n") == [TextEdit(0, 0, 0, 0, "new\n")]
    assert edits_between("gone\n", "") == [TextEdit(0, 0, 1, 0, "")]


def test_edit_positions_convert_to_utf16_for_the_client() -> None:
    old = "héllo 😀 wörld\n"
    [edit] = edits_between(old, "héllo 😀 world\n")
    assert (edit.start_char, edit.end_char) == (9, 10)
    assert to_position_units(old, edit.start_char, "utf-16") == 10


def test_unchanged_file_gets_all_of_the_agents_text(tmp_path: Path) -> None:
    base = numbered(8)
    agent = replace_line(replace_line(base, 2, "agent 2\n"), 7, "agent 7\n")
    plan = plan_file_apply(
        "src/a.py", "modified", base, base, agent, None, git_hunks(tmp_path, base, agent)
    )
    assert plan.kind == "edit"
    assert plan.new_text == agent
    assert not plan.conflicts
    assert [(e.start_line, e.end_line) for e in plan.edits] == [(1, 1), (6, 6)]
    assert editor_apply(base, plan.edits) == agent


def test_applying_a_subset_of_hunks(tmp_path: Path) -> None:
    base = numbered(9)
    agent = (
        base.replace("line 2\n", "agent 2\n")
        .replace("line 5\n", "")
        .replace("line 8\n", "line 8\nagent after 8\n")
    )
    hunks = git_hunks(tmp_path, base, agent)
    assert len(hunks) == 3
    assert apply_selected_hunks(base, hunks, None) == agent
    assert apply_selected_hunks(base, hunks, set()) == base
    only_middle = apply_selected_hunks(base, hunks, {hunks[1].id})
    assert only_middle == base.replace("line 5\n", "")
    plan = plan_file_apply("f", "modified", base, base, agent, {hunks[0].id, hunks[2].id}, hunks)
    assert plan.new_text == agent.replace("line 6\n", "line 5\nline 6\n")
    # Hunk ids of other files select nothing here.
    assert plan_file_apply("f", "modified", base, base, agent, {"elsewhere"}, hunks).kind == "noop"


def test_user_edit_overlapping_a_hunk_is_kept_and_reported(tmp_path: Path) -> None:
    base = numbered(12)
    agent = replace_line(replace_line(base, 3, "agent 3\n"), 10, "agent 10\n")
    current = replace_line(base, 10, "user 10\n")
    plan = plan_file_apply(
        "src/a.py", "modified", base, current, agent, None, git_hunks(tmp_path, base, agent)
    )
    assert plan.kind == "edit"
    assert plan.new_text == replace_line(current, 3, "agent 3\n")
    assert [(c.path, c.reason) for c in plan.conflicts] == [
        ("src/a.py", "you changed line 10, which the agent also changes; your version was kept")
    ]
    assert [(r.start_line, r.end_line) for r in plan.conflict_regions] == [(9, 10)]
    # The edit touches only the agent's line, never the user's.
    assert [(e.start_line, e.end_line) for e in plan.edits] == [(2, 2)]


def test_everything_conflicting_is_a_noop_with_conflicts(tmp_path: Path) -> None:
    base = numbered(3)
    agent = replace_line(base, 2, "agent\n")
    current = replace_line(base, 2, "user\n")
    plan = plan_file_apply(
        "f", "modified", base, current, agent, None, git_hunks(tmp_path, base, agent)
    )
    assert plan.kind == "noop"
    assert plan.new_text == current
    assert plan.edits == []
    assert len(plan.conflicts) == 1


def test_same_change_on_both_sides_is_a_quiet_noop(tmp_path: Path) -> None:
    base = numbered(3)
    agent = replace_line(base, 2, "same\n")
    plan = plan_file_apply(
        "f", "modified", base, agent, agent, None, git_hunks(tmp_path, base, agent)
    )
    assert plan == FilePlan("f", "noop", agent)


def test_file_the_user_deleted_is_not_recreated(tmp_path: Path) -> None:
    base, agent = "a\n", "b\n"
    plan = plan_file_apply(
        "f", "modified", base, None, agent, None, git_hunks(tmp_path, base, agent)
    )
    assert plan.kind == "noop"
    assert plan.conflicts[0].reason == "you deleted this file, which the agent changes"


def test_hunks_that_do_not_fit_the_base_are_a_conflict(tmp_path: Path) -> None:
    hunks = git_hunks(tmp_path, "a\nb\n", "a\nB\n")
    plan = plan_file_apply("f", "modified", "x\ny\n", "x\nY\n", "x\nB\n", {"h0"}, hunks)
    assert plan.kind == "noop"
    assert "do not fit" in plan.conflicts[0].reason
    with pytest.raises(HunkMismatchError):
        apply_selected_hunks("x\ny\n", hunks, None)


def test_agent_text_is_used_when_no_hunks_are_given() -> None:
    base, current = "a\nb\nc\n", "A\nb\nc\n"
    plan = plan_file_apply("f", "modified", base, current, "a\nb\nC\n")
    assert plan.new_text == "A\nb\nC\n"


def test_crlf_file_stays_crlf(tmp_path: Path) -> None:
    base = "one\r\ntwo\r\nthree\r\n"
    agent = "one\r\ntwo!\r\nthree\r\nfour\r\n"
    current = "ONE\r\ntwo\r\nthree\r\n"
    plan = plan_file_apply(
        "w.txt", "modified", base, current, agent, None, git_hunks(tmp_path, base, agent)
    )
    assert plan.new_text == "ONE\r\ntwo!\r\nthree\r\nfour\r\n"
    assert editor_apply(current, plan.edits) == plan.new_text


def test_agent_adds_the_missing_final_newline(tmp_path: Path) -> None:
    base = "a\nlast"
    agent = "a\nlast\n"
    plan = plan_file_apply(
        "f", "modified", base, base, agent, None, git_hunks(tmp_path, base, agent)
    )
    assert plan.new_text == agent
    assert plan.edits == [TextEdit(1, 4, 1, 4, "\n")]
    # Merged into an edited buffer, the newline still arrives.
    edited = plan_file_apply(
        "f", "modified", base, "A\nlast", agent, None, git_hunks(tmp_path, base, agent)
    )
    assert edited.new_text == "A\nlast\n"


def test_agent_changes_the_last_line_without_adding_a_newline(tmp_path: Path) -> None:
    base = "a\nlast"
    agent = "a\nfinal"
    hunks = git_hunks(tmp_path, base, agent)
    plan = plan_file_apply("f", "modified", base, "A\nlast", agent, None, hunks)
    assert plan.new_text == "A\nfinal"
    assert not plan.conflicts
    assert editor_apply("A\nlast", plan.edits) == "A\nfinal"


def test_added_file(tmp_path: Path) -> None:
    text = "print('hi')\n"
    hunks = git_hunks(tmp_path, "", text)
    plan = plan_file_apply("new.py", "added", None, None, text, None, hunks)
    assert (plan.kind, plan.new_text) == ("create", text)
    assert editor_apply("", plan.edits) == text
    assert plan_file_apply("new.py", "added", None, text, text, None, hunks).kind == "noop"
    clash = plan_file_apply("new.py", "added", None, "mine\n", text, None, hunks)
    assert clash.kind == "noop"
    assert clash.new_text == "mine\n"
    assert clash.conflicts[0].path == "new.py"
    assert plan_file_apply("new.py", "added", None, None, text, {"other"}, hunks).kind == "noop"
    assert plan_file_apply("new.py", "added", None, None, text, {"h0"}, hunks).kind == "create"


def test_deleted_file(tmp_path: Path) -> None:
    base = "old\n"
    hunks = git_hunks(tmp_path, base, "")
    assert plan_file_apply("old.py", "deleted", base, base, None, None, hunks) == FilePlan(
        "old.py", "delete", None
    )
    kept = plan_file_apply("old.py", "deleted", base, "old, edited\n", None, None, hunks)
    assert kept.kind == "noop"
    assert kept.conflicts[0].reason == "you changed this file, which the agent deletes; it was kept"
    assert plan_file_apply("old.py", "deleted", base, None, None, None, hunks).kind == "noop"


def test_plan_file_apply_refuses_renames() -> None:
    with pytest.raises(ValueError, match="plan_rename_apply"):
        plan_file_apply("b", "renamed", "x\n", "x\n", "x\n")


def renamed(tmp_path: Path, base: str, agent: str) -> FileChange:
    return FileChange(
        path="new.py",
        uri="file:///repo/new.py",
        old_path="old.py",
        status="renamed",
        hunks=git_hunks(tmp_path, base, agent),
    )


def test_renamed_file_is_deleted_and_created(tmp_path: Path) -> None:
    base = numbered(4)
    agent = replace_line(base, 4, "agent 4\n")
    change = renamed(tmp_path, base, agent)
    assert paths_to_read(change) == ["old.py", "new.py"]
    old_plan, new_plan = plan_change_apply(change, base, agent, {"old.py": base, "new.py": None})
    assert (old_plan.path, old_plan.kind) == ("old.py", "delete")
    assert (new_plan.path, new_plan.kind, new_plan.new_text) == ("new.py", "create", agent)


def test_rename_carries_the_users_edits_to_the_new_file(tmp_path: Path) -> None:
    base = numbered(4)
    agent = replace_line(base, 4, "agent 4\n")
    current_old = replace_line(base, 1, "user 1\n")
    old_plan, new_plan = plan_change_apply(
        renamed(tmp_path, base, agent), base, agent, {"old.py": current_old}
    )
    assert old_plan.kind == "delete"
    assert new_plan.new_text == replace_line(current_old, 4, "agent 4\n")
    assert not new_plan.conflicts


def test_rename_onto_a_different_user_file_is_blocked() -> None:
    base = numbered(2)
    plans = plan_rename_apply("old.py", "new.py", base, base, "mine\n", base)
    assert [p.kind for p in plans] == ["noop", "noop"]
    assert plans[1].conflicts[0].path == "new.py"
    assert "different new.py" in plans[1].conflicts[0].reason


def test_rename_the_user_already_did_is_a_noop() -> None:
    base = numbered(2)
    plans = plan_rename_apply("old.py", "new.py", base, None, base, base)
    assert [(p.kind, p.conflicts) for p in plans] == [("noop", []), ("noop", [])]


def test_rename_of_a_file_the_user_deleted_is_a_conflict() -> None:
    base = numbered(2)
    plans = plan_rename_apply("old.py", "new.py", base, None, None, base)
    assert [p.kind for p in plans] == ["noop", "noop"]
    assert plans[1].conflicts[0].reason == (
        "you deleted or moved old.py, which the agent renames to new.py"
    )


def test_modified_file_change_goes_through_plan_change_apply(tmp_path: Path) -> None:
    base, agent = "a\n", "b\n"
    change = FileChange(
        path="f.txt",
        uri="file:///r/f.txt",
        status="modified",
        hunks=git_hunks(tmp_path, base, agent),
    )
    assert paths_to_read(change) == ["f.txt"]
    [plan] = plan_change_apply(change, base, agent, {"f.txt": base}, {"h0"})
    assert (plan.kind, plan.new_text) == ("edit", agent)


def test_random_plans_turn_the_users_text_into_the_planned_text(tmp_path: Path) -> None:
    rng = random.Random(99)
    for case in range(120):
        base = random_text(rng)
        agent, current = mutate(rng, base), mutate(rng, base)
        hunks = git_hunks(tmp_path / str(case % 3), base, agent)
        selected = {h.id for h in hunks if rng.random() < 0.6} if rng.random() < 0.5 else None
        plan = plan_file_apply("f", "modified", base, current, agent, selected, hunks)
        assert plan.new_text is not None
        assert editor_apply(current, plan.edits) == plan.new_text
        if current == base:
            assert plan.new_text == apply_selected_hunks(base, hunks, selected)
            assert not plan.conflicts


def test_edits_between_round_trips_on_large_texts() -> None:
    rng = random.Random(5)
    pieces = ["\n", "}\n", "\r\n", "    return x\r\n", "héllo 😀\n"]
    for _ in range(6):
        old_lines = [
            rng.choice(pieces) if rng.random() < 0.6 else f"name_{rng.randrange(3000)}\n"
            for _ in range(4000)
        ]
        new_lines = list(old_lines)
        for _ in range(rng.randint(1, 80)):
            at = rng.randrange(len(new_lines))
            new_lines[at : at + rng.randint(0, 3)] = [f"new {rng.random()}\n"] * rng.randint(0, 2)
        old, new = "".join(old_lines), "".join(new_lines)
        assert editor_apply(old, edits_between(old, new)) == new


def test_rename_without_selected_hunks_stays_put(tmp_path: Path) -> None:
    base = numbered(3)
    agent = replace_line(base, 1, "agent 1\n")
    change = renamed(tmp_path, base, agent)
    plans = plan_change_apply(change, base, agent, {"old.py": base}, {"not-this-file"})
    assert [(p.path, p.kind) for p in plans] == [("old.py", "noop"), ("new.py", "noop")]
    plans = plan_change_apply(change, base, agent, {"old.py": base}, {"h0"})
    assert [(p.path, p.kind) for p in plans] == [("old.py", "delete"), ("new.py", "create")]


def test_rename_with_conflicting_user_edit_moves_the_users_version(tmp_path: Path) -> None:
    base = numbered(3)
    agent = replace_line(base, 2, "agent 2\n")
    current_old = replace_line(base, 2, "user 2\n")
    old_plan, new_plan = plan_change_apply(
        renamed(tmp_path, base, agent), base, agent, {"old.py": current_old, "new.py": None}
    )
    assert old_plan.kind == "delete"
    assert (new_plan.kind, new_plan.new_text) == ("create", current_old)
    assert [c.path for c in new_plan.conflicts] == ["new.py"]
