"""Where agents' changes meet (`workspace/overlaps.py`): hunks on the same or
neighbouring lines overlap, hunks with a line between them do not, and an agent on
another base is compared through the changes between the bases."""

from __future__ import annotations

from pathlib import Path

import pytest

from forkyard.workspace.diff import parse_zero_context_diff
from forkyard.workspace.overlaps import (
    AgentSpans,
    BaseMap,
    SortedSpans,
    overlaps_with,
    spans_touch,
)
from forkyard_protocol.models import FileChange
from tests.helpers import git, make_repo

BASE = "".join(f"line {i}\n" for i in range(1, 21))


def changes_of(repo: Path, text: str, path: str = "f.txt") -> list[FileChange]:
    (repo / path).write_text(text)
    diff = git(repo, "diff", "-U0", "--inter-hunk-context=0", "--", path)
    git(repo, "checkout", "-q", "--", path)
    return parse_zero_context_diff(diff, repo)


def replace(text: str, number: int, new: str) -> str:
    lines = text.splitlines(keepends=True)
    lines[number - 1] = new + "\n"
    return "".join(lines)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo", {"f.txt": BASE})


def test_same_line_and_next_line_overlap_a_line_between_does_not(repo: Path) -> None:
    on_5 = AgentSpans.of("a", "base", changes_of(repo, replace(BASE, 5, "five")))
    on_5_too = AgentSpans.of("b", "base", changes_of(repo, replace(BASE, 5, "FIVE")))
    on_6 = AgentSpans.of("c", "base", changes_of(repo, replace(BASE, 6, "six")))
    on_7 = AgentSpans.of("d", "base", changes_of(repo, replace(BASE, 7, "seven")))
    insert_after_4 = AgentSpans.of(
        "e", "base", changes_of(repo, BASE.replace("line 4\n", "line 4\nnew\n"))
    )
    found = overlaps_with(on_5, [on_5_too, on_6, on_7, insert_after_4], {})
    assert found == {"b": ["f.txt"], "c": ["f.txt"], "e": ["f.txt"]}
    assert overlaps_with(on_7, [on_5], {}) == {}


def test_spans_touch_walks_both_lists() -> None:
    assert spans_touch([(0, 1), (10, 12)], [(5, 6), (12, 12)])
    assert not spans_touch([(0, 1), (10, 12)], [(3, 4), (14, 15)])


def test_one_span_against_many_agrees_with_the_walk() -> None:
    disjoint = [(0, 1), (10, 12), (20, 20)]
    sorted_spans = SortedSpans(disjoint)
    for start in range(25):
        for end in (start, start + 1, start + 3):
            expected = spans_touch([(start, end)], disjoint)
            assert sorted_spans.touches((start, end)) == expected, (start, end)
    assert not SortedSpans([]).touches((0, 0))
    whole = SortedSpans([*disjoint, (0, 1 << 40)])
    assert all(whole.touches((n, n + 1)) for n in range(30)), "a long span reaches past others"


def test_an_agent_on_another_base_is_compared_through_the_bases_changes(repo: Path) -> None:
    # The second agent's base has three lines more at the top: its line 8 is line 5 here.
    other_base = "a\nb\nc\n" + BASE
    mine = AgentSpans.of("a", "one", changes_of(repo, replace(BASE, 5, "five")))
    git(repo, "commit", "-qam", "x", "--allow-empty")
    (repo / "f.txt").write_text(other_base)
    git(repo, "commit", "-qam", "other base")
    theirs_on_8 = AgentSpans.of("b", "two", changes_of(repo, replace(other_base, 8, "five")))
    theirs_on_12 = AgentSpans.of("c", "two", changes_of(repo, replace(other_base, 12, "nine")))
    texts = {("one", "f.txt"): BASE, ("two", "f.txt"): other_base}
    assert overlaps_with(mine, [theirs_on_8, theirs_on_12], texts) == {"b": ["f.txt"]}
    assert BaseMap(other_base, BASE).span((7, 8)) == (4, 5)
