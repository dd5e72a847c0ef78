"""Agents' titles and progress lines as the person reads them: a task that fits is its own
title; a long one is cut at a word, a long command told by its words (a sed substitution
as what it replaces) and never cut mid-word; a progress report does not repeat the
command the title already names."""

from __future__ import annotations

from forkyard.lsp.agents import progress_message
from forkyard.orchestrator.titles import MAX_TITLE_CHARS, command_words, title_from_task
from forkyard_protocol.models import Agent, Progress


def test_a_task_that_fits_is_its_own_title() -> None:
    assert title_from_task("sed -i 's/world/forkyard/' app.py", "command") == (
        "sed -i 's/world/forkyard/' app.py"
    )
    assert title_from_task("  fix the tests\nand more detail", "llm") == "fix the tests"
    assert title_from_task("   ", "llm") == "agent"


def test_a_long_command_is_told_by_its_words() -> None:
    command = "sed -i 's/render_everything_now(/render_lazily(/g' src/views/a.py src/views/b.py"
    title = title_from_task(command, "command")
    assert title == "sed -i: render_everything_now( → render_lazily(…"
    assert len(title) <= MAX_TITLE_CHARS
    assert command_words("python -m pytest -x tests/unit > out.log 2>&1") == (
        "python -m pytest -x tests/unit"
    )
    assert command_words("make -j8 all && ./run-suite --verbose | tee log.txt") == (
        "make -j8 all; run-suite --verbose | tee log.txt"
    )


def test_a_long_task_is_cut_at_a_word() -> None:
    task = "Add type hints to every function in the payment module and keep the tests green"
    title = title_from_task(task, "llm")
    assert title == "Add type hints to every function in the payment module and…"
    assert title.endswith("…") and " " + title[:-1].split()[-1] + " " in " " + task + " "


def agent(task: str, message: str | None) -> Agent:
    return Agent.model_validate(
        {
            "id": "a1",
            "number": 1,
            "title": task,
            "task": task,
            "role": "worker",
            "backend": "command",
            "state": "running",
            "baseRef": "0" * 40,
            "createdAt": "2026-01-01T00:00:00Z",
            "updatedAt": "2026-01-01T00:00:00Z",
            "progress": Progress(message=message, percentage=None).wire() if message else None,
            "changes": {"files": 0, "additions": 0, "deletions": 0},
        }
    )


def test_progress_does_not_repeat_the_command() -> None:
    assert progress_message(agent("sed -i s/a/b/ app.py", "$ sed -i s/a/b/ app.py")) == "running"
    assert progress_message(agent("x" * 300, "$ " + "x" * 100)) == "running", "a cut echo"
    assert progress_message(agent("make", "compiling foo.c")) == "compiling foo.c"
    assert progress_message(agent("make", None)) == "running"
