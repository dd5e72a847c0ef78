"""Pytest fixtures for the fakes; conftest.py imports them so every test can ask."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.model_server import FakeModelServer


@pytest.fixture
def fake_model_server() -> Iterator[FakeModelServer]:
    """A fresh scripted model server on 127.0.0.1 (OpenAI and Anthropic APIs), closed
    after the test; script it with `fake_model_server.script(Reply(...))`."""
    with FakeModelServer() as server:
        yield server
