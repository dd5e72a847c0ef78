"""Test doubles that are real things: servers on 127.0.0.1 speaking real wire formats."""

from tests.fakes.model_server import FakeModelServer, RecordedRequest, Reply

__all__ = ["FakeModelServer", "RecordedRequest", "Reply"]
