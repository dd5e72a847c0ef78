"""The terminal front end to end: `forkyard dispatch | agents | log | diff | apply | chat`
as a person or a script runs them, each a real process attaching to the real daemon of
its repository (started by the first command), on a real git repository."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import anyio
import pytest

from tests.e2e.conftest import StartServer
from tests.fakes.model_server import FakeModelServer, Reply
from tests.helpers import git

pytestmark = pytest.mark.timeout(120)


async def forkyard(env: dict[str, str], repo: Path, *args: str) -> tuple[int, str, str]:
    command = [sys.executable, "-m", "forkyard.cli", *args, "--repo", str(repo)]
    done = await anyio.run_process(command, env=env, check=False)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def test_dispatch_follow_diff_and_apply_from_a_terminal(
    repo: Path, server_env: dict[str, str]
) -> None:
    task = "echo hello > hello.txt; echo 'def added(): pass' >> src/app.py; echo wrote"
    code, out, err = await forkyard(
        server_env, repo, "dispatch", task, "--backend", "command", "--role", "worker"
    )
    assert code == 0, err
    assert out.startswith("#1 ") and "(worker, command)" in out

    code, out, err = await forkyard(server_env, repo, "log", "1", "--follow")
    assert code == 0, err
    assert "wrote" in out, "follow printed the agent's output and ended with the agent"

    code, out, _ = await forkyard(server_env, repo, "agents", "--json")
    [agent] = json.loads(out)
    assert agent["state"] == "done" and agent["changes"]["files"] == 2

    code, out, _ = await forkyard(server_env, repo, "diff", "1")
    assert "+hello" in out and "+def added(): pass" in out

    # The person edited the same file meanwhile: the three-way merge keeps their line.
    app = repo / "src" / "app.py"
    app.write_text("# mine\n" + app.read_text())
    code, out, err = await forkyard(server_env, repo, "apply", "1")
    assert code == 0, out + err
    assert out.startswith("Applied agent #1 to 2 file(s).")
    assert (repo / "hello.txt").read_text() == "hello\n"
    assert app.read_text().startswith("# mine\n") and "def added(): pass" in app.read_text()
    code, out, _ = await forkyard(server_env, repo, "agents", "--json")
    assert json.loads(out)[0]["state"] == "applied"


async def test_a_bad_agent_number_is_a_clear_error(repo: Path, server_env: dict[str, str]) -> None:
    code, out, err = await forkyard(server_env, repo, "diff", "7")
    assert code == 2
    assert "no agent with id or number '7'" in err and not out


async def test_chat_streams_the_reply_as_it_comes(
    repo: Path, server_env: dict[str, str], fake_model_server: FakeModelServer
) -> None:
    config = Path(server_env["XDG_CONFIG_HOME"]) / "forkyard" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text(
        "[models.default]\n"
        'provider = "openai"\n'
        f'base_url = "{fake_model_server.openai_base_url}"\n'
        'model = "fake-model"\n'
        "max_retries = 0\n"
    )
    reply = Reply(text="streaming words arrive one by one", hold=True, hold_after_chunks=2)
    fake_model_server.script(reply)
    command = [sys.executable, "-m", "forkyard.cli", "chat", "hello", "--repo", str(repo)]
    async with await anyio.open_process(command, env=server_env) as process:
        assert process.stdout is not None
        seen = b""
        with anyio.fail_after(60):
            while b"streaming" not in seen:
                seen += await process.stdout.receive()
        assert process.returncode is None, "the first words came while the model still talks"
        reply.release()
        with anyio.fail_after(60):
            async for chunk in process.stdout:
                seen += chunk
            await process.wait()
    assert process.returncode == 0
    assert seen.decode().strip() == "streaming words arrive one by one"


async def test_gc_goes_through_the_running_daemon_and_editors_see_it(
    start_server: StartServer, repo: Path, server_env: dict[str, str]
) -> None:
    """The daemon owns the worktrees: `forkyard gc` asks it, so an editor attached sees
    the agent lose its worktree at once (its work kept in a ref)."""
    client = await start_server(repo)
    agent = await client.dispatch("echo kept > kept.txt", backend="command")
    done = await client.wait_for_agent(agent["id"])
    worktree = Path(done["worktree"])
    code, out, err = await forkyard(server_env, repo, "gc", "--agent", "1")
    assert code == 0, err
    assert "removed agent #1 (done)" in out and "refs/forkyard/" in out
    assert not worktree.exists()
    await client.wait_until(lambda: client.agents[agent["id"]]["worktree"] is None)
    assert git(repo, "show", "refs/forkyard/removed/1:kept.txt") == "kept\n"
