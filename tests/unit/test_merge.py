"""The three-way merge behind `forkyard/agent/apply`: the agent's changes land in the
user's edited text, and where both changed the same lines the user's text wins and the
spot is reported."""

from __future__ import annotations

import random
import time

from forkyard.workspace.hunks import split_lines
from forkyard.workspace.merge import ConflictRegion, merge3
from tests.unit.test_hunks import mutate, numbered, random_text, replace_line


def test_changes_on_different_lines_combine() -> None:
    base = numbered(8)
    ours = "header\n" + replace_line(base, 2, "user 2\n")
    theirs = replace_line(base, 6, "agent 6\n") + "footer\n"
    result = merge3(base, ours, theirs)
    assert result.clean
    assert (
        result.text
        == "header\n" + replace_line(replace_line(base, 2, "user 2\n"), 6, "agent 6\n") + "footer\n"
    )


def test_one_sided_merges_take_that_side() -> None:
    base, changed = "a\nb\n", "a\nB\n"
    assert merge3(base, changed, base).text == changed
    assert merge3(base, base, changed).text == changed
    assert merge3(base, changed, changed).text == changed


def test_overlap_keeps_the_users_line_applies_the_rest_and_says_where() -> None:
    base = numbered(12)
    ours = replace_line(base, 10, "user 10\n")
    theirs = replace_line(replace_line(base, 3, "agent 3\n"), 10, "agent 10\n")
    result = merge3(base, ours, theirs)
    assert result.text == replace_line(ours, 3, "agent 3\n")
    assert result.conflicts == [
        ConflictRegion(
            9, 10, "you changed line 10, which the agent also changes; your version was kept"
        )
    ]


def test_conflict_lines_count_in_the_merged_text() -> None:
    base = numbered(6)
    ours = replace_line(base, 5, "user 5a\nuser 5b\n")
    theirs = "agent top\nagent top 2\n" + replace_line(base, 5, "agent 5\n")
    result = merge3(base, ours, theirs)
    [conflict] = result.conflicts
    assert (conflict.start_line, conflict.end_line) == (6, 8)
    assert split_lines(result.text)[6:8] == ["user 5a\n", "user 5b\n"]
    assert conflict.reason.startswith("you changed lines 7-8,")


def test_identical_changes_are_not_conflicts() -> None:
    base = numbered(5)
    both = replace_line(base, 2, "same 2\n")
    ours = both + "user tail\n"
    theirs = replace_line(both, 4, "agent 4\n")
    result = merge3(base, ours, theirs)
    assert result.clean
    assert result.text == replace_line(both, 4, "agent 4\n") + "user tail\n"


def test_user_deleting_what_the_agent_changes_is_a_conflict() -> None:
    base = numbered(6)
    ours = base.replace("line 3\nline 4\n", "")
    theirs = replace_line(base, 4, "agent 4\n")
    result = merge3(base, ours, theirs)
    assert result.text == ours
    assert result.conflicts == [
        ConflictRegion(
            2, 2, "you deleted the lines at line 3, which the agent changes; your version was kept"
        )
    ]


def test_adjacent_changes_both_apply() -> None:
    base = numbered(5)
    ours = replace_line(base, 3, "user 3\n")
    theirs = replace_line(base, 4, "agent 4\n")
    result = merge3(base, ours, theirs)
    assert result.clean
    assert result.text == replace_line(ours, 4, "agent 4\n")


def test_insertion_next_to_a_user_edit_goes_on_its_own_side() -> None:
    base = numbered(4)
    ours = replace_line(base, 3, "user 3\n")
    before = merge3(base, ours, base.replace("line 3\n", "agent before 3\nline 3\n"))
    assert before.clean
    assert before.text == ours.replace("user 3\n", "agent before 3\nuser 3\n")
    after = merge3(base, ours, base.replace("line 3\n", "line 3\nagent after 3\n"))
    assert after.clean
    assert after.text == ours.replace("user 3\n", "user 3\nagent after 3\n")


def test_different_insertions_at_the_same_point_conflict() -> None:
    base = numbered(3)
    ours = base.replace("line 2\n", "line 2\nuser\n")
    theirs = base.replace("line 2\n", "line 2\nagent\n")
    result = merge3(base, ours, theirs)
    assert result.text == ours
    assert [(c.start_line, c.end_line) for c in result.conflicts] == [(2, 3)]
    # The same line appended on both sides is one change, not two.
    assert merge3(base, base + "tail\n", base + "tail\n").text == base + "tail\n"


def test_overlaps_chain_into_one_conflict() -> None:
    base = numbered(8)
    ours = base.replace("line 3\nline 4\nline 5\n", "user 3-5\n")
    theirs = replace_line(replace_line(base, 2, "agent 2\n"), 5, "agent 5\n")
    theirs = replace_line(theirs, 6, "agent 6\n")
    result = merge3(base, ours, theirs)
    assert result.text == replace_line(ours, 2, "agent 2\n")
    assert len(result.conflicts) == 1


def test_crlf_files_stay_crlf() -> None:
    base = "one\r\ntwo\r\nthree\r\nfour\r\n"
    ours = "one\r\nTWO\r\nthree\r\nfour\r\n"
    theirs = "one\r\ntwo\r\nthree\r\nFOUR\r\nfive\r\n"
    result = merge3(base, ours, theirs)
    assert result.clean
    assert result.text == "one\r\nTWO\r\nthree\r\nFOUR\r\nfive\r\n"
    assert "\n" not in result.text.replace("\r\n", "")


def test_agent_adding_the_final_newline_is_taken() -> None:
    base = "a\nb\nc"
    result = merge3(base, "A\nb\nc", "a\nb\nc\n")
    assert result.clean
    assert result.text == "A\nb\nc\n"


def test_agent_changing_the_last_line_keeps_it_without_newline() -> None:
    base = "a\nb\nc"
    result = merge3(base, "A\nb\nc", "a\nb\nC")
    assert result.clean
    assert result.text == "A\nb\nC"


def test_user_and_agent_both_touching_the_last_line_conflict() -> None:
    base = "a\nb"
    result = merge3(base, "a\nuser b", "a\nb\nagent c\n")
    assert result.text == "a\nuser b"
    assert len(result.conflicts) == 1


def test_appending_after_a_line_that_lost_its_newline_never_glues_lines() -> None:
    base = "a\nb\n"
    ours = "a\nb"  # the user removed the final newline
    theirs = "a\nb\nc\n"  # the agent appended a line
    result = merge3(base, ours, theirs)
    assert result.text == ours
    assert len(result.conflicts) == 1
    # The other way round it is fine: the appended line keeps its own ending.
    assert merge3(base, "a\nB\n", "a\nb\nc").text == "a\nB\nc"


def test_random_merges_only_use_lines_of_the_three_texts_and_are_symmetric_when_clean() -> None:
    rng = random.Random(7)
    clean = 0
    for _ in range(2000):
        base = random_text(rng)
        ours, theirs = mutate(rng, base), mutate(rng, base)
        result = merge3(base, ours, theirs)
        known = set(split_lines(base)) | set(split_lines(ours)) | set(split_lines(theirs))
        assert set(split_lines(result.text)) <= known, (base, ours, theirs)
        if result.clean:
            clean += 1
            assert merge3(base, theirs, ours).text == result.text, (base, ours, theirs)
        for conflict in result.conflicts:
            assert 0 <= conflict.start_line <= conflict.end_line <= len(split_lines(result.text))
    assert clean > 500


def test_random_edits_far_apart_always_merge_cleanly() -> None:
    rng = random.Random(11)
    anchor = "==== anchor ====\n"
    for _ in range(500):
        top, bottom = random_text(rng) + "\n", random_text(rng) + "\n"
        base = top + anchor + bottom
        new_top = mutate(rng, top)
        if new_top and not new_top.endswith("\n"):
            new_top += "\n"  # keep the anchor a line of its own
        ours = new_top + anchor + bottom
        theirs = top + anchor + mutate(rng, bottom)
        result = merge3(base, ours, theirs)
        assert result.clean, (base, ours, theirs)
        assert result.text == ours.removesuffix(bottom) + theirs.removeprefix(top + anchor)


def code_like(rng: random.Random, count: int) -> list[str]:
    """Lines like a large source file's: many blank lines and braces, names that repeat."""
    common = ["\n", "\n", "}\n", "    return None\n", "        pass\n"]
    return [
        rng.choice(common) if rng.random() < 0.5 else f"    value_{rng.randrange(count)} = 1\n"
        for _ in range(count)
    ]


def test_large_files_with_repeated_lines_merge_quickly_and_cleanly() -> None:
    rng = random.Random(3)
    base = code_like(rng, 6000)
    ours, theirs = list(base), list(base)
    for n in range(60):
        ours[n * 100 + 10] = f"user {n}\n"
        theirs[n * 100 + 60] = f"agent {n}\n"
    started = time.perf_counter()
    result = merge3("".join(base), "".join(ours), "".join(theirs))
    assert time.perf_counter() - started < 10
    assert result.clean
    expected = list(ours)
    for n in range(60):
        expected[n * 100 + 60] = f"agent {n}\n"
    assert result.text == "".join(expected)


def test_a_file_of_identical_lines_never_loses_the_users_text() -> None:
    base = ["\n" if n % 2 else "    pass\n" for n in range(20000)]
    ours, theirs = list(base), list(base)
    for n in range(100):
        ours[n * 200 + 7] = f"user {n}\n"
        theirs[n * 200 + 107] = f"agent {n}\n"
    started = time.perf_counter()
    result = merge3("".join(base), "".join(ours), "".join(theirs))
    assert time.perf_counter() - started < 10
    merged = split_lines(result.text)
    assert all(f"user {n}\n" in merged for n in range(100))
