"""The review's editor data: diagnostics over agents' hunks and the code actions
that apply or discard them, as pure functions of texts and reviews (diagnostics are
computed in worker threads)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lsprotocol import types

from forkyard.errors import InvalidRequest
from forkyard.lsp.positions import diagnostic_range
from forkyard.review.service import AgentReview, FileReview
from forkyard.workspace.hunks import line_changes, split_lines
from forkyard.workspace.overlaps import SortedSpans, hunk_spans
from forkyard_protocol.models import Agent, Hunk

SOURCE = "forkyard"
SOURCE_KIND = "source.forkyard"


SEVERITIES = {
    "hint": types.DiagnosticSeverity.Hint,
    "information": types.DiagnosticSeverity.Information,
    "warning": types.DiagnosticSeverity.Warning,
}


def hunk_diagnostics(
    text: str,
    pairs: list[tuple[AgentReview, FileReview]],
    encoding: str,
    severity: str = "information",
) -> list[types.Diagnostic]:
    """Diagnostics over every applicable hunk of every agent changing this file, at the
    `diagnostic_severity` setting's severity (a hint is drawn as almost nothing, so
    Information unless the person asks). Pure and blocking: runs in a worker thread."""
    level = SEVERITIES.get(severity, types.DiagnosticSeverity.Information)
    lines = split_lines(text)
    found: list[types.Diagnostic] = []
    #: The person's edits over each base text (agents of one base share them).
    edited: dict[str, SortedSpans] = {}
    #: Each file review's spans, for the overlap of every hunk against it.
    spans: dict[int, SortedSpans] = {}
    for review, file in pairs:
        hunks = {h.id: h for h in file.change.hunks}
        agent = review.agent
        base = file.base_text
        if base is not None and base != text and base not in edited:
            edited[base] = edit_spans(base, lines)
        yours = edited.get(base) if base is not None else None
        for hunk in file.located(text):
            if not hunk.applies:
                continue
            start_line, start_char, end_line, end_char = diagnostic_range(
                hunk,
                lines,
                encoding,  # type: ignore[arg-type]
            )
            hunk_lines = hunks[hunk.hunk_id].text.splitlines()
            added = sum(1 for line in hunk_lines if line.startswith("+"))
            removed = sum(1 for line in hunk_lines if line.startswith("-"))
            message = f"agent #{agent.number}: {agent.title} (+{added} -{removed})"
            if also := also_changed_by(review, file, hunks[hunk.hunk_id], pairs, spans):
                message += "; also changed by " + _agents_phrase(also)
            if yours and yours.touches(hunk_spans([hunks[hunk.hunk_id]])[0]):
                message += "; next to your edit"
            found.append(
                types.Diagnostic(
                    range=types.Range(
                        start=types.Position(line=start_line, character=start_char),
                        end=types.Position(line=end_line, character=end_char),
                    ),
                    severity=level,
                    source=SOURCE,
                    message=message,
                    data={"agentId": agent.id, "hunkId": hunk.hunk_id},
                )
            )
    return found


def edit_spans(base_text: str, current_lines: list[str]) -> SortedSpans:
    """The base lines the person's text changes (unsaved edits included), as spans."""
    changes = line_changes(split_lines(base_text), current_lines)
    return SortedSpans([(c.start, c.end) for c in changes])


def also_changed_by(
    review: AgentReview,
    file: FileReview,
    hunk: Hunk,
    pairs: list[tuple[AgentReview, FileReview]],
    spans: dict[int, SortedSpans] | None = None,
) -> list[int]:
    """Numbers of the agents that overlap this one here (`Agent.overlaps`) and whose
    hunks in this file touch this hunk; with another base, every overlapping one."""
    path = file.change.path
    overlapping = {o.agent_id for o in review.agent.overlaps if path in o.paths}
    if not overlapping:
        return []
    [mine] = hunk_spans([hunk])
    found = []
    cache = {} if spans is None else spans
    for other, other_file in pairs:
        if other.agent.id not in overlapping:
            continue
        same_base = other_file.base_text == file.base_text and not other_file.change.binary
        if same_base:
            theirs = cache.get(id(other_file))
            if theirs is None:
                theirs = cache[id(other_file)] = SortedSpans(hunk_spans(other_file.change.hunks))
            if not theirs.touches(mine):
                continue
        found.append(other.agent.number)
    return sorted(found)


def _agents_phrase(numbers: list[int]) -> str:
    if len(numbers) == 1:
        return f"agent #{numbers[0]}"
    return "agents " + ", ".join(f"#{n}" for n in numbers)


def kind_wanted(kind: str, only: Sequence[str] | None) -> bool:
    """Whether a client's `only` filter (e.g. "source", "quickfix") admits `kind`."""
    if not only:
        return True
    name = str(getattr(kind, "value", kind))
    wanted = [str(getattr(o, "value", o)) for o in only]
    return any(name == w or name.startswith(f"{w}.") for w in wanted)


def make_action(
    title: str,
    kind: str,
    agent: Agent,
    paths: list[str] | None,
    hunk_ids: list[str] | None,
    diagnostics: list[types.Diagnostic],
    lazy: bool,
) -> types.CodeAction:
    """Listing is cheap: actions carry `data`; resolving gives the command, and the edit
    is built when the command runs, against the user's text as it is then, and sent as
    one `workspace/applyEdit`. Clients that cannot resolve get the command at once."""
    discard = title.startswith("Discard")
    data: dict[str, Any] = {
        "agentId": agent.id,
        "title": title,
        "action": "discard" if discard else "apply",
    }
    if not discard:
        data |= {"paths": paths, "hunkIds": hunk_ids}
    action = types.CodeAction(
        title=title,
        kind=kind,
        diagnostics=diagnostics or None,
        is_preferred=kind == types.CodeActionKind.QuickFix or None,
        data=data,
    )
    return action if lazy else resolve_action(action)


def resolve_action(action: types.CodeAction) -> types.CodeAction:
    data = action.data if isinstance(action.data, dict) else {}
    agent_id = data.get("agentId")
    if not isinstance(agent_id, str):
        raise InvalidRequest("data: not a Forkyard code action")
    if data.get("action") == "discard":
        action.command = types.Command(
            title=action.title, command="forkyard.discard", arguments=[agent_id]
        )
    else:
        arguments = [agent_id, data.get("paths"), data.get("hunkIds")]
        action.command = types.Command(
            title=action.title, command="forkyard.apply", arguments=arguments
        )
    return action
