from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from forkyard_protocol import REQUESTS, describe_validation_error
from forkyard_protocol.messages import AgentDispatchParams, AgentRef
from forkyard_protocol.schema import schema_text

SCHEMA = Path(__file__).resolve().parents[2] / "protocol" / "schema" / "forkyard.schema.json"


def test_committed_schema_is_what_the_models_generate() -> None:
    assert SCHEMA.read_text() == schema_text(), "stale schema: run `uv run forkyard schema`"


def test_every_request_in_the_schema() -> None:
    text = schema_text()
    for method in REQUESTS:
        assert f'"{method}"' in text


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
