"""Placing an agent's hunks on the user's current text: what the Hint diagnostics and the
"Apply hunk" code actions point at while the user keeps typing.

The hunks come from real `git diff -U0` output, as the workspace's diff module makes them.
"""

from __future__ import annotations

import random
import re
import subprocess
from itertools import pairwise
from pathlib import Path

import pytest

from forkyard.lsp.positions import diagnostic_range, from_position_units, to_position_units
from forkyard.workspace.apply import plan_file_apply
from forkyard.workspace.hunks import (
    HunkMismatchError,
    LocatedHunk,
    apply_changes,
    line_changes,
    locate_hunks,
    parse_hunk,
    split_lines,
)
from forkyard_protocol.models import Hunk
from tests.helpers import GIT_ENV

HEADER = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


def git_hunks(workdir: Path, old: str, new: str) -> list[Hunk]:
    """The zero-context hunks git itself makes between two texts."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "old").write_bytes(old.encode())
    (workdir / "new").write_bytes(new.encode())
    done = subprocess.run(
        ["git", "diff", "--no-index", "--no-color", "--text", "-U0", "old", "new"],
        cwd=workdir,
        env=GIT_ENV,
        capture_output=True,
        check=False,
    )
    assert done.returncode in (0, 1), done.stderr
    hunks: list[Hunk] = []
    lines: list[str] = []
    header: re.Match[str] | None = None

    def close() -> None:
        if header is not None:
            old_start, old_count, new_start, new_count = header.groups()
            hunks.append(
                Hunk(
                    id=f"h{len(hunks)}",
                    old_start=int(old_start),
                    old_lines=1 if old_count is None else int(old_count),
                    new_start=int(new_start),
                    new_lines=1 if new_count is None else int(new_count),
                    header=header.group(0),
                    text="".join(lines),
                )
            )

    for line in done.stdout.decode().split("\n")[:-1]:
        match = HEADER.match(line)
        if match:
            close()
            header, lines = match, []
        elif header is not None:
            lines.append(line + "\n")
    close()
    return hunks


def numbered(count: int) -> str:
    return "".join(f"line {n}\n" for n in range(1, count + 1))


def replace_line(text: str, number: int, new: str) -> str:
    lines = split_lines(text)
    lines[number - 1] = new
    return "".join(lines)


def test_split_lines_keeps_endings_and_splits_only_on_newline() -> None:
    assert split_lines("") == []
    assert split_lines("a\nb") == ["a\n", "b"]
    assert split_lines("a\r\nb\r\n") == ["a\r\n", "b\r\n"]
    assert split_lines("\n\n") == ["\n", "\n"]
    # Form feeds and Unicode line separators do not end lines for git, so not for us.
    assert split_lines("a\x0cb\u2028c\n") == ["a\x0cb\u2028c\n"]
    for text in ["", "x", "x\n", "a\r\nb", "\n", "é\n😀"]:
        assert "".join(split_lines(text)) == text


def test_parse_hunk_honours_missing_final_newline(tmp_path: Path) -> None:
    [hunk] = git_hunks(tmp_path, "a\nb", "a\nb\n")
    parsed = parse_hunk(hunk)
    assert parsed.old_lines == ("b",)
    assert parsed.change.lines == ("b\n",)
    assert (parsed.change.start, parsed.change.end) == (1, 2)


def test_parse_hunk_rejects_text_that_disagrees_with_its_header() -> None:
    hunk = Hunk(id="x", old_start=1, old_lines=2, new_start=1, new_lines=1, header="", text="-a\n")
    with pytest.raises(HunkMismatchError, match="header"):
        parse_hunk(hunk)


def test_unchanged_text_places_hunks_where_git_put_them(tmp_path: Path) -> None:
    base = numbered(6)
    agent = replace_line(base, 3, "LINE 3\n")
    [located] = locate_hunks(base, base, git_hunks(tmp_path, base, agent))
    assert located == LocatedHunk("h0", 2, 1, True, ["LINE 3\n"])
    assert diagnostic_range(located, split_lines(base)) == (2, 0, 2, len("line 3"))


def test_hunk_moves_with_user_edits_above_it(tmp_path: Path) -> None:
    base = numbered(10)
    agent = replace_line(base, 8, "agent 8\n")
    hunks = git_hunks(tmp_path, base, agent)
    # The user adds three lines at the top and deletes line 2: line 8 is now line 10.
    current = "new a\nnew b\nnew c\n" + base.replace("line 2\n", "")
    [located] = locate_hunks(base, current, hunks)
    assert located.applies
    assert (located.start_line, located.line_count) == (9, 1)
    current_lines = split_lines(current)
    assert current_lines[located.start_line] == "line 8\n"
    assert diagnostic_range(located, current_lines) == (9, 0, 9, 6)


def test_user_edits_below_a_hunk_do_not_move_it(tmp_path: Path) -> None:
    base = numbered(10)
    hunks = git_hunks(tmp_path, base, replace_line(base, 2, "agent 2\n"))
    current = replace_line(base, 9, "user 9\n") + "appended\n"
    [located] = locate_hunks(base, current, hunks)
    assert (located.start_line, located.line_count, located.applies) == (1, 1, True)


def test_user_edit_overlapping_a_hunk_stops_it_applying_but_not_the_others(
    tmp_path: Path,
) -> None:
    base = numbered(12)
    agent = replace_line(replace_line(base, 3, "agent 3\n"), 10, "agent 10\n")
    hunks = git_hunks(tmp_path, base, agent)
    current = "top\n" + replace_line(base, 10, "user 10\n")
    first, second = locate_hunks(base, current, hunks)
    assert first.applies
    assert first.start_line == 3
    assert not second.applies
    assert second.reason == "you changed line 11, which this hunk also changes"
    assert split_lines(current)[second.start_line] == "user 10\n"


def test_hunk_the_user_already_made_no_longer_applies(tmp_path: Path) -> None:
    base = numbered(5)
    agent = replace_line(base, 4, "same\n")
    [located] = locate_hunks(base, agent, git_hunks(tmp_path, base, agent))
    assert not located.applies
    assert located.reason == "your text already has this change"
    assert located.start_line == 3


def test_user_deleting_the_hunks_lines_is_a_collision(tmp_path: Path) -> None:
    base = numbered(6)
    hunks = git_hunks(tmp_path, base, replace_line(base, 4, "agent 4\n"))
    current = base.replace("line 3\nline 4\nline 5\n", "")
    [located] = locate_hunks(base, current, hunks)
    assert not located.applies
    assert located.reason == "you deleted the lines at line 3, which this hunk changes"


def test_insertion_hunk_marks_the_line_it_goes_before(tmp_path: Path) -> None:
    base = numbered(6)
    agent = base.replace("line 3\n", "line 3\nnew x\nnew y\n")
    [hunk] = git_hunks(tmp_path, base, agent)
    assert (hunk.old_start, hunk.old_lines) == (3, 0)
    [located] = locate_hunks(base, base, [hunk])
    assert located == LocatedHunk("h0", 3, 0, True, ["new x\n", "new y\n"])
    assert diagnostic_range(located, split_lines(base)) == (3, 0, 3, 6)
    # An edit of the user's line just above the insertion point does not collide with it.
    current = "u1\nu2\n" + base.replace("line 3\n", "user 3\n")
    [moved] = locate_hunks(base, current, [hunk])
    assert (moved.start_line, moved.line_count, moved.applies) == (5, 0, True)


def test_insertions_at_the_same_point_collide(tmp_path: Path) -> None:
    base = numbered(4)
    hunks = git_hunks(tmp_path, base, base.replace("line 2\n", "line 2\nagent\n"))
    current = base.replace("line 2\n", "line 2\nuser\n")
    [located] = locate_hunks(base, current, hunks)
    assert not located.applies
    assert located.start_line == 2


def test_insertion_at_the_end_marks_the_last_line(tmp_path: Path) -> None:
    base = numbered(3)
    [hunk] = git_hunks(tmp_path, base, base + "tail\n")
    [located] = locate_hunks(base, base, [hunk])
    assert (located.start_line, located.line_count) == (3, 0)
    assert diagnostic_range(located, split_lines(base)) == (2, 0, 2, 6)


def test_deletion_hunk_covers_the_deleted_lines(tmp_path: Path) -> None:
    base = numbered(6)
    [hunk] = git_hunks(tmp_path, base, base.replace("line 4\nline 5\n", ""))
    [located] = locate_hunks(base, base, [hunk])
    assert located == LocatedHunk("h0", 3, 2, True, [])
    assert diagnostic_range(located, split_lines(base)) == (3, 0, 4, 6)


def test_hunk_that_does_not_match_the_base_does_not_apply(tmp_path: Path) -> None:
    hunks = git_hunks(tmp_path, "a\nb\nc\n", "a\nB\nc\n")
    [located] = locate_hunks("x\ny\nz\n", "x\ny\nz\n", hunks)
    assert not located.applies
    assert located.reason is not None
    assert "does not match" in located.reason


def test_hunk_into_an_empty_file(tmp_path: Path) -> None:
    [hunk] = git_hunks(tmp_path, "", "first\nsecond\n")
    [located] = locate_hunks("", "", [hunk])
    assert (located.start_line, located.line_count, located.applies) == (0, 0, True)
    assert diagnostic_range(located, []) == (0, 0, 0, 0)


def test_crlf_ranges_end_before_the_line_break(tmp_path: Path) -> None:
    base = "one\r\ntwo\r\nthree\r\n"
    agent = "one\r\nTWO!\r\nthree\r\n"
    [located] = locate_hunks(base, base, git_hunks(tmp_path, base, agent))
    assert located.new_lines == ["TWO!\r\n"]
    assert diagnostic_range(located, split_lines(base)) == (1, 0, 1, 3)


def test_non_ascii_positions_in_each_encoding() -> None:
    line = "héllo 😀 wörld"
    w = line.index("w")
    assert to_position_units(line, w, "utf-32") == w
    assert to_position_units(line, w, "utf-16") == w + 1  # the emoji is a surrogate pair
    assert to_position_units(line, w, "utf-8") == w + 1 + 3  # é: 2 bytes, 😀: 4 bytes
    for encoding in ("utf-8", "utf-16", "utf-32"):
        for index in range(len(line) + 1):
            units = to_position_units(line, index, encoding)
            assert from_position_units(line, units, encoding) == index
    emoji = line.index("😀")
    assert from_position_units(line, emoji + 1, "utf-16") == emoji  # inside the pair
    assert from_position_units(line, 999, "utf-16") == len(line)


def test_diagnostic_range_in_client_units(tmp_path: Path) -> None:
    base = "héllo 😀 wörld\nnext\n"
    agent = "héllo 😀 world\nnext\n"
    [located] = locate_hunks(base, base, git_hunks(tmp_path, base, agent))
    lines = split_lines(base)
    assert diagnostic_range(located, lines) == (0, 0, 0, 13)
    assert diagnostic_range(located, lines, "utf-16") == (0, 0, 0, 14)
    assert diagnostic_range(located, lines, "utf-8") == (0, 0, 0, 18)  # é, ö: 2; 😀: 4


VOCABULARY = ["a", "b", "def f():", "    return 1", "", "héllo 😀", "x = 1", "}"]


def random_text(rng: random.Random) -> str:
    lines = [rng.choice(VOCABULARY) + "\n" for _ in range(rng.randint(0, 12))]
    text = "".join(lines)
    if text and rng.random() < 0.2:
        text = text[:-1]
    return text


def mutate(rng: random.Random, text: str) -> str:
    lines = split_lines(text)
    for _ in range(rng.randint(1, 3)):
        at = rng.randint(0, len(lines))
        span = rng.randint(0, 2)
        new = [rng.choice(VOCABULARY) + "\n" for _ in range(rng.randint(0, 2))]
        lines[at : at + span] = new
    out = "".join(lines)
    if out and rng.random() < 0.15:
        out = out[:-1] if out.endswith("\n") else out + "\n"
    return out


def test_located_hunks_agree_with_what_applying_them_does(tmp_path: Path) -> None:
    """A hunk shown as applicable applies cleanly, exactly on the lines it marks; one that
    is not is either a conflict or already there."""
    rng = random.Random(20240611)
    checked = 0
    for case in range(150):
        base = random_text(rng)
        agent, current = mutate(rng, base), mutate(rng, base)
        hunks = git_hunks(tmp_path / str(case % 4), base, agent)
        for located in locate_hunks(base, current, hunks):
            plan = plan_file_apply("f", "modified", base, current, agent, {located.hunk_id}, hunks)
            if located.applies:
                lines = split_lines(current)
                start, count = located.start_line, located.line_count
                expected = "".join(lines[:start] + located.new_lines + lines[start + count :])
                assert not plan.conflicts, (base, current, agent, located)
                assert plan.new_text == expected, (base, current, agent, located)
                checked += 1
            else:
                assert plan.conflicts or plan.new_text == current, (base, current, agent)
    assert checked > 100


def test_line_changes_of_large_texts_are_separated_and_exact() -> None:
    """Large regions take the anchored (patience) path; the merge relies on its changes
    being sorted and separated by at least one unchanged line."""
    rng = random.Random(8)
    for _ in range(8):
        base = [
            rng.choice(["\n", "}\n", "    pass\n"])
            if rng.random() < 0.5
            else f"name_{rng.randrange(2000)}\n"
            for _ in range(3000)
        ]
        other = list(base)
        for _ in range(rng.randint(1, 60)):
            at = rng.randrange(len(other))
            other[at : at + rng.randint(0, 4)] = [f"new {rng.random()}\n"] * rng.randint(0, 3)
        changes = line_changes(base, other)
        assert apply_changes(base, 0, len(base), changes) == other
        for before, after in pairwise(changes):
            assert after.start > before.end
