"""How an apply went, as the chat's thread and the terminal tell it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ApplyOutcome:
    applied: bool
    paths: list[str]
    conflicts: list[tuple[str, str]]


def apply_outcome_text(number: int, outcome: ApplyOutcome) -> str:
    """How an apply asked for in the chat went, as the thread tells it."""
    if not outcome.applied:
        return f"Agent #{number} was not applied (the editor refused the edit)."
    text = f"Applied agent #{number} to {len(outcome.paths)} file(s)."
    if outcome.conflicts:
        text += "\n\nConflicts, left as you had them:\n" + "\n".join(
            f"- `{path}`: {reason}" for path, reason in outcome.conflicts
        )
    return text
