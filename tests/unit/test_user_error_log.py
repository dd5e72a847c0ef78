"""The log filter that keeps user errors to one line must leave a real bug's traceback:
the one clue there is to a crash."""

from __future__ import annotations

import io
import logging

import pytest
from pygls.exceptions import JsonRpcException

from forkyard.errors import InvalidRequest, WrongState
from forkyard.lsp.server import PYGLS_RPC_LOGGER

pytestmark = pytest.mark.timeout(10)


def _fail(exc: Exception) -> None:
    raise exc


def logged(exc: Exception) -> str:
    """What pygls's request logger writes for a request that raised `exc`."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    logger = logging.getLogger(PYGLS_RPC_LOGGER)
    logger.addHandler(handler)
    try:
        try:
            _fail(exc)
        except Exception:
            logger.exception('Exception occurred for message "%s"', 7)
    finally:
        logger.removeHandler(handler)
    return out.getvalue()


def test_a_bug_keeps_its_traceback() -> None:
    text = logged(KeyError("oops"))
    assert "Traceback" in text and "KeyError" in text


def test_an_internal_json_rpc_error_keeps_its_traceback() -> None:
    assert "Traceback" in logged(JsonRpcException("boom", -32603))


@pytest.mark.parametrize(
    "exc",
    [
        JsonRpcException("agentId: no agent with id or number '9'", -32602),
        JsonRpcException("agent #2 is running", -32803),
        InvalidRequest("task: empty"),
        WrongState("agent #2 is running"),
    ],
)
def test_a_user_error_is_one_line(exc: Exception) -> None:
    text = logged(exc)
    assert "Traceback" not in text
    assert text.count("\n") == 1 and "user error" in text, text
