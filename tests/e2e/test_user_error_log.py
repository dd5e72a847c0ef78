"""A user error (an unknown agent, a wrong state, a backend that is not there) is one line
in the server's log, which VS Code shows in its Output channel: never a Python traceback,
which reads as a crash."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from pygls.exceptions import JsonRpcException

from tests.e2e.conftest import StartServer
from tests.helpers import make_repo

pytestmark = pytest.mark.timeout(60)


async def test_user_errors_are_one_log_line_each(start_server: StartServer, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"})
    log = tmp_path / "serve.log"
    command = [sys.executable, "-m", "forkyard.cli", "serve", "--log-file", str(log)]
    client = await start_server(repo, server_command=command)
    running = await client.dispatch("sleep 30", backend="command", title="sleeper")
    await client.wait_for_agent(running["id"], {"running"})

    codes = []
    for method, params in [
        ("forkyard/agent/cancel", {"agentId": "999"}),
        ("forkyard/agent/apply", {"agentId": running["id"]}),
        ("forkyard/agent/dispatch", {"task": "x", "backend": "no-such-backend"}),
        ("forkyard/agent/read", {}),
    ]:
        with pytest.raises(JsonRpcException) as caught:
            await client.request(method, params)
        codes.append(caught.value.code)
    assert codes == [-32602, -32803, -32602, -32602]
    await client.request("forkyard/agent/cancel", {"agentId": running["id"]})
    await client.stop()

    text = log.read_text()
    assert "Traceback" not in text, text
    lines = [line for line in text.splitlines() if "user error" in line]
    assert len(lines) == 4, text
    assert any("no agent with id or number '999'" in line for line in lines), lines
    assert not [line for line in text.splitlines() if "server error" in line], text
