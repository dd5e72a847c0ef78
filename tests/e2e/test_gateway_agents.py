"""The real Codex CLI, Claude Code and aider through the model gateway, end to end.

Each program runs sandboxed with no network: its one way out is the gateway's socket,
reached through a relay on the sandbox's own loopback, with a token of its run where the
API key would be. These tests attack that from inside: the key is looked for in the
sandbox's processes and files, a command the program runs tries to reach a listener on
the host, a budget stops a program in the middle of its work.
"""

from __future__ import annotations

import contextlib
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import StartServer
from tests.e2e.test_external_agents import (
    AGENT_TIMEOUT,
    ORIGINAL_APP,
    PROGRAMS,
    TASK,
    backend_options,
    model_calls,
)
from tests.e2e.test_usage import run_again
from tests.fakes.agent_context import FAKE_API_KEY, processes_in
from tests.fakes.model_server import Reply
from tests.fakes.responses_server import ResponsesModelServer

pytestmark = pytest.mark.timeout(120)

#: What every gateway token starts with (forkyard.gateway.grants.TOKEN_PREFIX).
TOKEN_PREFIX = b"fy-gw-"


@pytest.fixture
def server_env(server_env: dict[str, str]) -> dict[str, str]:
    """The daemon's environment holds the keys (the fake model checks them arrive)."""
    keys = {"OPENAI_API_KEY": FAKE_API_KEY, "ANTHROPIC_API_KEY": FAKE_API_KEY}
    return {**server_env, **keys, "CLAUDE_CODE_MAX_RETRIES": "0"}


@pytest.fixture
def model() -> Iterator[ResponsesModelServer]:
    with ResponsesModelServer(default=Reply(text="(unscripted reply)")) as server:
        yield server


@pytest.fixture
def host_listener() -> Iterator[socket.socket]:
    """A TCP listener on the host's loopback, where a user's database or dev server
    would be: nothing in a sandbox may connect to it."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    yield listener
    listener.close()


def connections_accepted(listener: socket.socket) -> int:
    count = 0
    while True:
        try:
            connection, _ = listener.accept()
        except BlockingIOError:
            return count
        connection.close()
        count += 1


def process_texts(pids: list[int]) -> list[bytes]:
    """The environment and command line of each process (those still alive)."""
    texts = []
    for pid in pids:
        for name in ("environ", "cmdline"):
            with contextlib.suppress(OSError):
                texts.append(Path(f"/proc/{pid}/{name}").read_bytes())
    return texts


def files_holding(root: Path, needle: bytes) -> list[Path]:
    found = []
    for path in root.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink() and needle in path.read_bytes():
                found.append(path)
        except OSError:
            pass
    return found


@pytest.mark.parametrize("kind", list(PROGRAMS))
async def test_the_key_is_nowhere_in_the_sandbox_and_the_upstream_gets_it(
    start_server: StartServer,
    model: ResponsesModelServer,
    repo: Path,
    server_env: dict[str, str],
    kind: str,
) -> None:
    program = PROGRAMS[kind]
    first, *rest = program.edit_script
    held = Reply(text=first.text, tool_calls=first.tool_calls, hold=True)
    model.script(held, *rest)
    client = await start_server(repo, initialization_options=backend_options(program, model))
    agent = await client.dispatch(TASK, backend=kind)
    running = await client.wait_for_agent(agent["id"], {"running"}, timeout=AGENT_TIMEOUT)
    await held.started()

    # While the program waits on its model: every process of its sandbox.
    pids = await processes_in(Path(running["worktree"]))
    assert pids, f"{kind} should be running"
    texts = process_texts(pids)
    assert not [text for text in texts if FAKE_API_KEY.encode() in text]
    assert any(TOKEN_PREFIX in text for text in texts), "the program got no gateway token"
    held.release()
    done = await client.wait_for_agent(agent["id"], timeout=AGENT_TIMEOUT)

    assert done["state"] == "done", done
    # What the program kept (its home, sessions, config) and its worktree hold no key.
    state = Path(server_env["FORKYARD_STATE_DIR"])
    assert files_holding(state / "agent-homes", FAKE_API_KEY.encode()) == []
    assert files_holding(Path(done["worktree"]), FAKE_API_KEY.encode()) == []
    # The upstream got the real key on every call, never a token.
    header, value = program.auth_header
    for call in model_calls(program, model):
        assert call.headers[header] == value
        assert TOKEN_PREFIX.decode() not in str(call.headers)


#: Run inside the sandbox by the program's own tool: connect to the host's listener and
#: to an outside address, and count where the key shows (its environment, every visible
#: process's, its home, its TMPDIR, the worktree). The pattern matches the key without
#: containing it, so the probe's own command line does not count.
PROBE = """\
python3 -c "
import socket
for name, address in (('probe', ('127.0.0.1', {port})), ('probe-outside', ('192.0.2.1', 80))):
    try:
        s = socket.socket()
        s.settimeout(3)
        code = s.connect_ex(address)
    except OSError as error:  # codex's own sandbox refuses the socket itself
        code = error.errno
    print(name + ':', code)
" 2>&1
seen=$( (env; cat /proc/[0-9]*/environ /proc/[0-9]*/cmdline) 2>/dev/null \
| tr '\\000' '\\n' | grep -c '{pattern}')
files=$(grep -rls '{pattern}' "$HOME" "${{TMPDIR:-/tmp}}" . 2>/dev/null | wc -l)
echo "leaks: $seen $files"
"""
#: FAKE_API_KEY as a pattern that matches it and does not contain it.
KEY_PATTERN = FAKE_API_KEY[:4] + "[" + FAKE_API_KEY[4] + "]" + FAKE_API_KEY[5:]


@pytest.mark.parametrize(
    ("kind", "tool", "argument"),
    [("claude", "Bash", "command"), ("codex", "exec_command", "cmd")],
)
async def test_a_command_the_program_runs_reaches_nothing_and_finds_no_key(
    start_server: StartServer,
    model: ResponsesModelServer,
    repo: Path,
    host_listener: socket.socket,
    kind: str,
    tool: str,
    argument: str,
) -> None:
    program = PROGRAMS[kind]
    probe = PROBE.format(port=host_listener.getsockname()[1], pattern=KEY_PATTERN)
    model.script(
        Reply(text="Probing.", tool_calls=[(tool, {argument: probe})]),
        Reply(text="Probed."),
    )
    client = await start_server(repo, initialization_options=backend_options(program, model))
    agent = await client.dispatch("Probe the network", backend=kind)
    done = await client.wait_for_agent(agent["id"], timeout=AGENT_TIMEOUT)

    assert done["state"] == "done", done
    calls = model_calls(program, model)
    assert len(calls) >= 2, "the program never sent the probe's output back"
    result = calls[-1].text
    # The probe ran (its output came back to the model) and connected to nothing:
    # connect_ex gave an error number, not 0.
    outcomes = re.findall(r"probe(-outside)?: (\d+)", result)
    assert len(outcomes) == 2, result[-3000:]
    assert all(int(errno) != 0 for _, errno in outcomes), outcomes
    assert connections_accepted(host_listener) == 0
    # The key is nowhere the program's own commands can look.
    assert re.findall(r"leaks: (\d+) (\d+)", result) == [("0", "0")], result[-3000:]


@pytest.mark.parametrize("kind", list(PROGRAMS))
async def test_the_agent_s_usage_is_what_the_model_reported(
    start_server: StartServer, model: ResponsesModelServer, repo: Path, kind: str
) -> None:
    program = PROGRAMS[kind]
    model.script(*program.edit_script)
    client = await start_server(repo, initialization_options=backend_options(program, model))
    agent = await client.dispatch(TASK, backend=kind)
    done = await client.wait_for_agent(agent["id"], timeout=AGENT_TIMEOUT)

    assert done["state"] == "done", done
    reported = model.reported_usage
    assert reported, "the fake model reported no usage"
    assert done["usage"] == {
        "inputTokens": sum(usage.input_tokens for usage in reported),
        "outputTokens": sum(usage.output_tokens for usage in reported),
        "cachedTokens": sum(usage.cached_tokens for usage in reported),
        "costUsd": None,  # "fake-model" has no price
    }


@pytest.mark.parametrize("kind", ["claude", "codex"])
async def test_a_budget_stops_the_program_mid_run_and_a_follow_up_finishes_it(
    start_server: StartServer, model: ResponsesModelServer, repo: Path, kind: str
) -> None:
    program = PROGRAMS[kind]
    edit, final = program.edit_script
    model.script(edit, final)
    client = await start_server(repo, initialization_options=backend_options(program, model))
    # One token: the first call may start (nothing is spent yet), the second may not.
    agent = await client.dispatch(TASK, backend=kind, maxTokens=1)
    failed = await client.wait_for_agent(agent["id"], timeout=AGENT_TIMEOUT)

    assert failed["state"] == "failed", failed
    assert failed["error"].startswith("budget reached ("), failed["error"]
    assert len(model_calls(program, model)) == 1, "the refused call reached the model"
    # The work done before the refusal is kept: the edit is the agent's change.
    assert failed["changes"] == {"files": 1, "additions": 1, "deletions": 1}
    worktree = Path(failed["worktree"])
    assert (worktree / "src/app.py").read_text() == ORIGINAL_APP.replace("a + b", "b + a")
    assert (repo / "src/app.py").read_text() == ORIGINAL_APP

    # The scripted final reply is still waiting: the follow-up's first call gets it.
    done = await run_again(client, agent["id"], maxTokens=1_000_000)

    assert done["state"] == "done", done
    assert done["summary"] == program.summary
    assert done["changes"] == {"files": 1, "additions": 1, "deletions": 1}
    assert len(model_calls(program, model)) == 2


#: What the fake model does wrong, and what the agent's error must then say: the
#: status, or the program's own words for it (codex calls a 500 "high demand").
UPSTREAM_FAILURES: dict[str, tuple[Reply, tuple[str, ...]]] = {
    "429": (Reply(status=429, error_message="slow down, fake client"), ("429",)),
    "500": (Reply(status=500, error_message="the fake model is down"), ("500", "high demand")),
    "garbage": (Reply(garbage=True), ("502",)),
    "hang": (Reply(hang=True), ("504",)),
}


@pytest.mark.parametrize("failure", list(UPSTREAM_FAILURES))
@pytest.mark.parametrize("kind", ["claude", "codex"])
async def test_an_upstream_failure_fails_the_program_with_an_error_of_its_api(
    start_server: StartServer,
    model: ResponsesModelServer,
    repo: Path,
    kind: str,
    failure: str,
) -> None:
    program = PROGRAMS[kind]
    reply, said = UPSTREAM_FAILURES[failure]
    model.script(reply)
    # No retries (the programs would retry a 429 or a 5xx for minutes), and a short
    # upstream timeout for the hang.
    options = backend_options(program, model, env=["CLAUDE_CODE_MAX_RETRIES"])
    options["gateway"] = {"upstreamTimeoutSeconds": 3}
    client = await start_server(repo, initialization_options=options)
    agent = await client.dispatch(TASK, backend=kind)
    failed = await client.wait_for_agent(agent["id"], timeout=AGENT_TIMEOUT)

    assert failed["state"] == "failed", failed
    assert any(words in failed["error"] for words in said), failed["error"]
    assert FAKE_API_KEY not in failed["error"]
    assert len(model_calls(program, model)) == 1, "the program retried"
    assert failed["changes"] == {"files": 0, "additions": 0, "deletions": 0}
