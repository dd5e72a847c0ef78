"""A front and a daemon of different versions: the front says so in one line, and asks
the daemon to stop once no agent runs (then starts its own)."""

from __future__ import annotations

from pathlib import Path

import forkyard
from forkyard.lsp.session import FrontSession
from forkyard_protocol.daemon import DAEMON_PROTOCOL_VERSION, AttachResult
from forkyard_protocol.models import ForkyardCapabilities


def attached(version: str, protocol: int = DAEMON_PROTOCOL_VERSION) -> FrontSession:
    front = FrontSession(Path("/repo"), Path("/state"), {}, None, "test", 900)
    front.attached = AttachResult(
        front_id="front-1",
        daemon_pid=1,
        daemon_version=version,
        protocol=protocol,
        root="/repo",
        state_dir="/state",
        capabilities=ForkyardCapabilities(roles=[], backends=[]),
        problems=[],
        agents=[],
        away=[],
    )
    return front


def test_the_same_version_says_nothing() -> None:
    assert attached(forkyard.__version__).version_mismatch() is None


def test_another_version_is_told_in_one_line() -> None:
    told = attached("0.0.1").version_mismatch()
    assert told is not None and "0.0.1" in told and forkyard.__version__ in told
    assert "\n" not in told and len(told) <= 120
    assert attached(forkyard.__version__, DAEMON_PROTOCOL_VERSION + 1).version_mismatch()
