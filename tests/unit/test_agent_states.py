"""The agent state table (`orchestrator/states.py`) is the one place a state move is
decided. If a move the orchestrator really makes were missing, a user would see an agent
fail with "cannot go from X to Y" in the middle of a normal life; if an illegal move were
allowed, an editor could show an agent applied and then running again. And a state the
orchestrator writes must be in the table, or `check_move` would refuse it at run time."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path
from typing import get_args

import pytest

from forkyard.orchestrator import states as states_module
from forkyard.orchestrator.states import TRANSITIONS, IllegalTransition, check_move
from forkyard_protocol.models import FINAL_STATES, AgentState

pytestmark = pytest.mark.timeout(30)

ORCHESTRATOR_DIR = Path(states_module.__file__).parent

#: Each life an agent really has, as the orchestrator walks it.
LIVES: dict[str, list[AgentState | None]] = {
    "dispatched, run, applied": [None, "queued", "starting", "running", "done", "applied"],
    "cancelled while queued": [None, "queued", "cancelled"],
    "cancelled while starting": [None, "queued", "starting", "cancelled"],
    "cancelled while running": [None, "queued", "starting", "running", "cancelled"],
    "failed while running": [None, "queued", "starting", "running", "failed"],
    "failed to start": [None, "queued", "starting", "failed"],
    "follow-up of a done agent": ["running", "done", "queued", "starting", "running", "done"],
    "follow-up of a failed agent": ["failed", "queued"],
    "follow-up of a cancelled agent": ["cancelled", "queued"],
    "follow-up of an interrupted agent": ["interrupted", "queued"],
    "daemon stopped while running": ["running", "interrupted"],
    "daemon stopped while queued": ["queued", "interrupted"],
}


@pytest.mark.parametrize("life", LIVES, ids=list(LIVES))
def test_every_move_of_a_normal_life_is_allowed(life: str) -> None:
    path = LIVES[life]
    for old, new in itertools.pairwise(path):
        assert new is not None
        check_move(1, old, new)  # raises if the table forgot a real move


@pytest.mark.parametrize("final", sorted(FINAL_STATES - {"discarded"}))
def test_every_final_state_can_be_discarded(final: AgentState) -> None:
    check_move(1, final, "discarded")


def test_staying_in_a_state_is_not_a_move() -> None:
    """Progress updates keep the state: they must never be refused."""
    for state in get_args(AgentState):
        check_move(1, state, state)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("done", "running"),
        ("discarded", "queued"),
        ("applied", "done"),
        (None, "done"),
        (None, "running"),
        ("queued", "done"),
        ("applied", "queued"),
        ("failed", "done"),
    ],
)
def test_an_illegal_move_raises_naming_both_states(old: AgentState | None, new: AgentState) -> None:
    with pytest.raises(IllegalTransition) as raised:
        check_move(7, old, new)
    message = str(raised.value)
    assert "#7" in message
    assert f"from {old} to {new}" in message


def test_the_table_knows_every_state_and_only_states() -> None:
    """A state the protocol names but the table lacks could be entered by nobody and
    left by nobody; a target outside the protocol would fail validation later."""
    known = set(get_args(AgentState))
    assert set(TRANSITIONS) == known | {None}
    for old, targets in TRANSITIONS.items():
        assert targets <= known, f"{old} -> {targets - known}"
    assert TRANSITIONS["discarded"] == frozenset(), "discarded is the end"


def _states_written(source: str) -> list[tuple[int, str]]:
    """Every string literal in the `state=` keyword of a call to `_update(` or
    `finish(` (the runner's, which passes its `state` on to `_update`), with its line:
    conditional expressions (`"done" if ok else "failed"`) give both."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        name = getattr(node.func, "attr", getattr(node.func, "id", None))
        if name not in ("_update", "finish"):
            continue
        for keyword in node.keywords:
            if keyword.arg != "state":
                continue
            for inner in ast.walk(keyword.value):
                if isinstance(inner, ast.Constant) and isinstance(inner.value, str):
                    found.append((inner.lineno, inner.value))
    return found


def test_every_state_the_orchestrator_writes_is_in_the_table() -> None:
    known = {target for targets in TRANSITIONS.values() for target in targets}
    written: list[tuple[str, int, str]] = []
    for path in sorted(ORCHESTRATOR_DIR.glob("*.py")):
        for line, state in _states_written(path.read_text(encoding="utf-8")):
            written.append((path.name, line, state))
    # The scan itself must see the moves it is meant to guard, or it proves nothing.
    seen = {state for _file, _line, state in written}
    assert {"starting", "running", "done", "failed", "cancelled", "discarded"} <= seen, seen
    assert {"queued", "applied", "interrupted"} <= seen, seen
    unknown = [(file, line, state) for file, line, state in written if state not in known]
    assert unknown == [], f"states written but not reachable in TRANSITIONS: {unknown}"


def test_the_scan_finds_a_state_that_bypasses_the_table() -> None:
    """The scan must be able to fail: a new `_update(state="paused")` is caught."""
    source = (
        "async def f(self, runtime):\n"
        '    await self._update(runtime, state="paused", progress=None)\n'
        '    await self.finish(runtime, outcome, state="done" if ok else "stalled")\n'
    )
    assert _states_written(source) == [(2, "paused"), (3, "done"), (3, "stalled")]
