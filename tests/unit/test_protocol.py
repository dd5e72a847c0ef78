from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from forkyard_protocol import NOTIFICATIONS, REQUESTS, describe_validation_error
from forkyard_protocol.messages import AgentDispatchParams, AgentRef
from forkyard_protocol.schema import schema_text

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "protocol" / "schema" / "forkyard.schema.json"
PROTOCOL_DOC = ROOT / "docs" / "protocol.md"


def test_committed_schema_is_what_the_models_generate() -> None:
    assert SCHEMA.read_text() == schema_text(), "stale schema: run `uv run forkyard schema`"


#: Methods the Additions sections of docs/protocol.md name that the server does not answer
#: yet ("Review across agents"). When one is built it moves to REQUESTS, and the test
#: below says to take it out of here.
NOT_BUILT_YET: frozenset[str] = frozenset()


def documented_methods(text: str) -> tuple[set[str], set[str], set[str]]:
    """The methods of docs/protocol.md: those of its request tables (`| method | params |
    result |`), of its notification tables (`| method | params | when |`), and every
    `forkyard/...` name written in backticks anywhere in it."""
    requests: set[str] = set()
    notifications: set[str] = set()
    table: set[str] | None = None
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not line.startswith("|"):
            table = None
        elif cells[:3] == ["method", "params", "result"]:
            table = requests
        elif cells[:3] == ["method", "params", "when"]:
            table = notifications
        elif table is not None and (name := re.fullmatch(r"`(forkyard/[^`\s]+)`", cells[0])):
            table.add(name.group(1))
    # A backtick right before `forkyard/` opens a span (closing ones follow its text);
    # the name ends where the span's first word does: `forkyard/agent/rebase {agentId}`.
    named = set(re.findall(r"`(forkyard/[A-Za-z0-9_/]+)", text))
    return requests, notifications, named


def test_every_method_is_documented_and_every_documented_method_exists() -> None:
    """docs/protocol.md is what client authors read: a method the server answers but the
    doc does not name is one nobody can use, and a documented one the server lacks fails
    every client that believes the doc."""
    requests, notifications, named = documented_methods(PROTOCOL_DOC.read_text())
    assert set(REQUESTS) - requests == set(), "requests missing from the doc's tables"
    assert set(NOTIFICATIONS) - notifications == set(), "notifications missing from the doc"
    assert requests - set(REQUESTS) == set(), "documented requests the server lacks"
    assert notifications - set(NOTIFICATIONS) == set(), "documented notifications it lacks"
    built = set(REQUESTS) | set(NOTIFICATIONS)
    assert named - built - NOT_BUILT_YET == set(), "methods named in the doc that do not exist"
    assert NOT_BUILT_YET & built == set(), "built now: take them out of NOT_BUILT_YET"
    assert named >= NOT_BUILT_YET, "no longer in the doc: take them out of NOT_BUILT_YET"


def test_every_method_is_in_the_committed_schema_with_its_types() -> None:
    """Clients generate their types from the committed schema file (the VS Code
    extension's scripts/gen-protocol.mjs), so each method must be there with the
    definitions of its params and result."""
    schema = json.loads(SCHEMA.read_text())
    defs = schema["$defs"]
    assert set(schema["requests"]) == set(REQUESTS), "stale schema: run `uv run forkyard schema`"
    for method, (params, result) in REQUESTS.items():
        entry = schema["requests"][method]
        assert entry["params"] == {"$ref": f"#/$defs/{params.__name__}"}, method
        assert entry["result"] == {"$ref": f"#/$defs/{result.__name__}"}, method
        assert defs[params.__name__]["type"] == "object", method
        assert defs[result.__name__]["type"] == "object", method
    assert set(schema["notifications"]) == set(NOTIFICATIONS), "stale schema"
    for method, notification in NOTIFICATIONS.items():
        entry = schema["notifications"][method]
        assert entry["params"] == {"$ref": f"#/$defs/{notification.__name__}"}, method
        assert defs[notification.__name__]["type"] == "object", method


def test_params_are_camel_case_on_the_wire_and_defaults_follow_the_protocol() -> None:
    params = AgentDispatchParams.model_validate({"task": "t", "threadId": "th-1"})
    assert params.thread_id == "th-1"
    assert params.role == "worker" and params.base_ref == "HEAD" and params.include_uncommitted
    wire = params.wire()
    assert wire["threadId"] == "th-1" and "includeUncommitted" in wire


def test_agent_number_may_be_sent_as_an_integer() -> None:
    assert AgentRef.model_validate({"agentId": 3}).agent_id == "3"


@pytest.mark.parametrize("raw", [{"agentId": True}, {"agentId": ""}, {"agentId": None}, {}])
def test_bad_agent_ids_name_the_field(raw: dict[str, object]) -> None:
    with pytest.raises(ValidationError) as caught:
        AgentRef.model_validate(raw)
    assert "agentId" in describe_validation_error("forkyard/agent/read", caught.value)
