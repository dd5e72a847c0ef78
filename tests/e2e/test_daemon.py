"""The background daemon end to end: real `forkyard serve` fronts over stdio (pytest-lsp),
the real detached `forkyard daemon` they start, real git repositories and sandboxed
commands. Agents outlive editors, every editor sees the same agents and threads, a killed
daemon loses nothing, and only its own user may talk to it."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from forkyard.client import ForkyardClient
from forkyard.daemon.control import ask
from forkyard.daemon.paths import DaemonPaths, read_pid
from tests.e2e.conftest import StartServer
from tests.e2e.editor import Editor
from tests.e2e.test_chat_model import model_options
from tests.e2e.test_llm_agents import CAREFUL_ROLE, answer_approvals, call
from tests.fakes.model_server import FakeModelServer
from tests.helpers import kill_daemon, wait_for_no_process

pytestmark = pytest.mark.timeout(120)

#: An agent that works until the test creates `go` in its worktree.
WAIT_FOR_GO = (
    "echo begun > begun.txt; echo begun; while [ ! -e go ]; do sleep 0.02; done; echo ok > ok.txt"
)


def state_dir(env: dict[str, str]) -> Path:
    return Path(env["FORKYARD_STATE_DIR"])


async def daemon_status(env: dict[str, str]) -> dict[str, Any]:
    raw: dict[str, Any] = await ask(state_dir(env), "daemon/status", {})
    return raw


def daemon_cli(env: dict[str, str], *args: str) -> list[str]:
    """`forkyard daemon ARGS --state-dir` of the test's state directory."""
    where = ["--state-dir", str(state_dir(env))]
    return [sys.executable, "-m", "forkyard.cli", "daemon", *args, *where]


def daemon_processes(env: dict[str, str]) -> list[int]:
    """Pids of `forkyard daemon` processes for this state directory."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            words = cmdline.read_bytes().decode(errors="replace").split("\0")
            status = (cmdline.parent / "stat").read_text()
        except OSError:
            continue
        if status.rsplit(")", 1)[-1].split()[0] == "Z":
            continue
        named = "--state-dir" in words and words[words.index("--state-dir") + 1]
        if "daemon" in words and named == str(state_dir(env)):
            found.append(int(cmdline.parent.name))
    return found


async def wait_until_begun(client: ForkyardClient, agent_id: str) -> dict[str, Any]:
    def begun() -> dict[str, Any] | None:
        agent = client.agents.get(agent_id) or {}
        return agent if (agent.get("progress") or {}).get("message") == "begun" else None

    agent: dict[str, Any] = await client.wait_until(begun)
    return agent


def messages_shown(client: ForkyardClient) -> list[str]:
    """`window/showMessage` texts, as pytest-lsp's client recorded them."""
    return [m.message for m in client.lsp.messages]  # type: ignore[attr-defined]


async def test_two_editors_see_the_same_agent_and_the_same_thread(
    start_server: StartServer, repo: Path, server_env: dict[str, str]
) -> None:
    first = await start_server(repo)
    Editor(first)  # answers workspace/applyEdit as an editor does
    second = await start_server(repo)
    agent = await first.dispatch(WAIT_FOR_GO, backend="command")
    running = await wait_until_begun(second, agent["id"])
    assert running["state"] == "running", "the second editor sees the first one's agent"
    (Path(running["worktree"]) / "go").touch()
    done_first = await first.wait_for_agent(agent["id"])
    done_second = await second.wait_for_agent(agent["id"])
    assert done_first["state"] == done_second["state"] == "done"
    assert done_second["changes"]["files"] == 3
    # Applied in one editor: the other sees the agent's new state.
    applied = await first.request("forkyard/agent/apply", {"agentId": agent["id"]})
    assert applied["applied"], applied
    await second.wait_for_agent(agent["id"], {"applied"})

    # A thread started in one editor goes on in the other.
    chat = await first.request("forkyard/chat", {"text": "/agents"})
    thread = chat["threadId"]
    await second.wait_until(
        lambda: any(
            m == "forkyard/chat/message" and p["message"]["threadId"] == thread
            for m, p in second.notifications
        )
    )
    await second.request("forkyard/chat", {"text": "/help", "threadId": thread})
    await first.wait_until(
        lambda: any(
            m == "forkyard/chat/message"
            and p["message"]["text"] == "/help"
            and p["message"]["threadId"] == thread
            for m, p in first.notifications
        )
    )
    read = await second.request("forkyard/thread/read", {"threadId": thread})
    assert [m["text"] for m in read["messages"] if m["role"] == "user"] == ["/agents", "/help"]
    assert len(daemon_processes(server_env)) == 1
    status = await daemon_status(server_env)
    assert len(status["fronts"]) == 2


async def test_agents_outlive_every_editor_and_the_next_one_is_told(
    start_server: StartServer, repo: Path, server_env: dict[str, str]
) -> None:
    first = await start_server(repo)
    second = await start_server(repo)
    agent = await first.dispatch(WAIT_FOR_GO, backend="command")
    running = await wait_until_begun(first, agent["id"])
    await first.stop()
    await second.stop()

    (Path(running["worktree"]) / "go").touch()
    # No editor is attached: only the daemon's own status can say when the agent ended
    # (attaching is what this test is about), so it is asked until it says so.
    with anyio.fail_after(30):
        while (await daemon_status(server_env))["agents"].get("done") != 1:  # noqa: ASYNC110
            await anyio.sleep(0.05)

    third = await start_server(repo)
    [found] = (await third.request("forkyard/agent/list", {}))["agents"]
    assert found["id"] == agent["id"] and found["state"] == "done"
    diff = await third.request("forkyard/agent/diff", {"agentId": agent["id"]})
    assert sorted(f["path"] for f in diff["files"]) == ["begun.txt", "go", "ok.txt"]
    await third.wait_until(lambda: any("while you were away" in m for m in messages_shown(third)))
    [away] = [m for m in messages_shown(third) if "while you were away" in m]
    assert "#1 done" in away and len(away) <= 64

    fourth = await start_server(repo)
    await fourth.request("forkyard/agent/list", {})
    assert not any("while you were away" in m for m in messages_shown(fourth)), "told once"


async def test_a_killed_daemon_is_restarted_and_its_running_agent_is_interrupted(
    start_server: StartServer, repo: Path, server_env: dict[str, str]
) -> None:
    client = await start_server(repo)
    agent = await client.dispatch(WAIT_FOR_GO + "; sleep 161803", backend="command")
    running = await wait_until_begun(client, agent["id"])
    chat = await client.request("forkyard/chat", {"text": "/agents"})
    old_pid = await kill_daemon(server_env)
    killed_at = time.monotonic()

    listed = await client.request("forkyard/agent/list", {})
    answered_after = time.monotonic() - killed_at
    assert answered_after < 2.0, f"the front answered {answered_after:.2f} s after the kill"
    [restored] = listed["agents"]
    assert restored["state"] == "interrupted"
    assert restored["worktree"] == running["worktree"]
    assert (Path(restored["worktree"]) / "begun.txt").read_text() == "begun\n"
    await client.wait_for_agent(agent["id"], {"interrupted"})
    assert await wait_for_no_process("sleep 161803"), "the sandboxed command died with it"
    assert read_pid(DaemonPaths(state_dir(server_env))) not in (None, old_pid)
    thread = await client.request("forkyard/thread/read", {"threadId": chat["threadId"]})
    assert thread["messages"][0]["text"] == "/agents", "no message is lost"


async def test_two_editors_starting_at_once_start_one_daemon(
    repo: Path, server_env: dict[str, str]
) -> None:
    clients: list[ForkyardClient] = []

    async def start() -> None:
        clients.append(await ForkyardClient.start(repo, server_env))

    try:
        async with anyio.create_task_group() as group:
            for _ in range(3):
                group.start_soon(start)
        for client in clients:
            assert (await client.request("forkyard/agent/list", {})) == {"agents": []}
        assert len(daemon_processes(server_env)) == 1
        assert len((await daemon_status(server_env))["fronts"]) == 3
    finally:
        for client in clients:
            await client.stop()


async def test_a_second_daemon_is_refused_naming_the_first(
    start_server: StartServer, repo: Path, server_env: dict[str, str]
) -> None:
    await start_server(repo)
    pid = read_pid(DaemonPaths(state_dir(server_env)))
    command = [
        sys.executable,
        "-m",
        "forkyard.cli",
        "daemon",
        "--state-dir",
        str(state_dir(server_env)),
    ]
    done = await anyio.run_process(command, env=server_env, check=False)
    assert done.returncode == 1
    assert f"pid {pid}" in done.stderr.decode()
    assert daemon_processes(server_env) == [pid]


async def test_the_state_directory_and_socket_are_the_users_alone(
    start_server: StartServer, repo: Path, server_env: dict[str, str]
) -> None:
    await start_server(repo)
    paths = DaemonPaths(state_dir(server_env))
    assert stat.S_IMODE(paths.state_dir.stat().st_mode) == 0o700
    socket_mode = paths.socket.stat().st_mode
    assert stat.S_ISSOCK(socket_mode) and stat.S_IMODE(socket_mode) == 0o600
    assert paths.log.exists(), "the daemon logs into the state directory"


async def test_the_daemon_runs_in_its_own_session(
    start_server: StartServer, repo: Path, server_env: dict[str, str]
) -> None:
    """Closing the terminal or killing the editor's process group leaves it alone."""
    client = await start_server(repo)
    front = client.server_process
    pid = read_pid(DaemonPaths(state_dir(server_env)))
    assert front is not None and pid is not None
    assert os.getsid(pid) == pid, "a session leader"
    assert os.getpgid(pid) not in (os.getpgid(front.pid), os.getpgid(0))
    parent = int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
    assert parent != front.pid, "not the editor's child: reparented when it detached"


PEER = "forkyard-peer-test"


@pytest.mark.skipif(os.geteuid() != 0, reason="creating another user needs root")
async def test_a_peer_of_another_uid_is_refused(
    start_server: StartServer, repo: Path, server_env: dict[str, str]
) -> None:
    if shutil.which("useradd") is None or shutil.which("setpriv") is None:
        pytest.skip("useradd and setpriv are needed to connect as another user")
    try:
        pwd.getpwnam(PEER)
    except KeyError:
        await anyio.run_process(["useradd", "--system", "--no-create-home", PEER])
    uid = pwd.getpwnam(PEER).pw_uid
    await start_server(repo)
    paths = DaemonPaths(state_dir(server_env))
    # Open the file system's door on purpose, so that only SO_PEERCRED stands between the
    # other user and the daemon.
    for folder in (paths.state_dir, *paths.state_dir.parents):
        if folder == Path("/"):
            break
        folder.chmod(folder.stat().st_mode | 0o711)
    paths.socket.chmod(0o666)
    probe = "\n".join(
        [
            "import socket, sys",
            "s = socket.socket(socket.AF_UNIX)",
            "s.connect(sys.argv[1])",
            "try:",
            '    s.sendall(b\'{"jsonrpc":"2.0","id":1,"method":"daemon/status"}\\n\')',
            "    s.settimeout(10)",
            "    print(repr(s.recv(65536)))",
            "except (BrokenPipeError, ConnectionResetError):",
            "    print('closed')",
        ]
    )
    command = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    done = await anyio.run_process(
        [*command, sys.executable, "-c", probe, str(paths.socket)], check=False
    )
    output = done.stdout.decode() + done.stderr.decode()
    assert done.returncode == 0, output
    assert output.strip() in ("b''", "closed"), f"the daemon answered another user: {output}"
    assert (await daemon_status(server_env))["pid"], "and still answers its own"


async def test_the_daemon_exits_by_itself_when_idle(
    start_server: StartServer, repo: Path, server_env: dict[str, str]
) -> None:
    client = await start_server(repo, initialization_options={"daemonIdleSeconds": 0.3})
    agent = await client.dispatch("true", backend="command")
    await client.wait_for_agent(agent["id"])
    pid = read_pid(DaemonPaths(state_dir(server_env)))
    assert pid is not None
    fd = os.pidfd_open(pid)
    try:
        await client.stop()
        with anyio.fail_after(20):
            await anyio.wait_readable(fd)
    finally:
        os.close(fd)
    assert not DaemonPaths(state_dir(server_env)).socket.exists()


async def test_daemon_status_and_a_stop_that_waits_for_running_agents(
    start_server: StartServer, repo: Path, server_env: dict[str, str]
) -> None:
    client = await start_server(repo)
    agent = await client.dispatch(WAIT_FOR_GO, backend="command")
    running = await wait_until_begun(client, agent["id"])
    status = await anyio.run_process(daemon_cli(server_env, "status", "--json"), env=server_env)
    report = json.loads(status.stdout)
    assert report["pid"] == read_pid(DaemonPaths(state_dir(server_env)))
    assert report["agents"] == {"running": 1}
    assert report["repositories"] == [str(repo)] and len(report["fronts"]) == 1
    for key in ("socket", "version", "uptimeSeconds"):
        assert key in report

    async with await anyio.open_process(daemon_cli(server_env, "stop"), env=server_env) as stop:
        assert stop.stdout is not None
        first = await stop.stdout.receive()
        assert b"stops once its 1 running agent(s) finish" in first
        assert stop.returncode is None, "stop waits while the agent runs"
        (Path(running["worktree"]) / "go").touch()
        with anyio.fail_after(30):
            await stop.wait()
    assert stop.returncode == 0
    await client.wait_for_agent(agent["id"])
    assert client.agents[agent["id"]]["state"] == "done", "finished, not interrupted"


async def test_editing_forkyard_toml_applies_without_telling_the_editor(
    start_server: StartServer, repo: Path
) -> None:
    """No didChangeConfiguration: the daemon watches the file itself."""
    (repo / ".forkyard.toml").write_text("max_parallel_agents = 1\n")
    client = await start_server(repo)
    blocker = await client.dispatch(WAIT_FOR_GO, backend="command")
    waiting = await client.dispatch("true", backend="command")
    running = await wait_until_begun(client, blocker["id"])
    assert client.agents[waiting["id"]]["state"] == "queued"

    (repo / ".forkyard.toml").write_text("max_parallel_agents = 2\nfrobnicate = 1\n")
    assert (await client.wait_for_agent(waiting["id"]))["state"] == "done", "a slot opened"
    await client.wait_until(lambda: any("'frobnicate'" in m for m in messages_shown(client)))
    (Path(running["worktree"]) / "go").touch()
    await client.wait_for_agent(blocker["id"])


async def test_an_approval_is_asked_in_every_editor_and_the_first_answer_wins(
    start_server: StartServer, repo: Path, fake_model_server: FakeModelServer
) -> None:
    fake_model_server.script(
        call("run_command", command="echo approved > approved.txt"),
        call("finish", summary="ran it"),
    )
    options = model_options(fake_model_server, **CAREFUL_ROLE)
    first = await start_server(repo, initialization_options=options)
    second = await start_server(repo, initialization_options=options)
    both_asked = anyio.Event()
    withdrawn = anyio.Event()

    async def answer_at_once(_params: Any) -> str:
        await both_asked.wait()
        return "Allow once"

    async def answer_too_late(_params: Any) -> str:
        await withdrawn.wait()
        return "Deny"  # after the first editor's answer: it must change nothing

    cancelled: list[Any] = []
    protocol = second.lsp.protocol
    handle_notification = protocol._handle_notification

    def record_cancel(method: str, params: Any) -> None:
        if method == "$/cancelRequest":
            cancelled.append(params)
            withdrawn.set()
        handle_notification(method, params)

    # pygls's client cannot cancel a handler it already runs: record what came instead.
    protocol._handle_notification = record_cancel
    asked_first = answer_approvals(first, answer_at_once)
    asked_second = answer_approvals(second, answer_too_late)
    agent = await first.dispatch("needs approval", role="careful")
    await first.wait_until(lambda: asked_first)
    await second.wait_until(lambda: asked_second)
    assert asked_first[0].message == asked_second[0].message
    waiting = await second.wait_until(
        lambda: (
            (second.agents[agent["id"]].get("progress") or {}).get("message")
            == "waiting for your approval: run_command"
        )
    )
    assert waiting and second.agents[agent["id"]]["state"] == "running"
    both_asked.set()

    with anyio.fail_after(30):
        await withdrawn.wait()
    [withdrawal] = cancelled
    assert str(withdrawal.id).startswith("forkyard/approval/"), withdrawal
    done = await second.wait_for_agent(agent["id"])
    assert done["state"] == "done", done
    assert (Path(done["worktree"]) / "approved.txt").read_text() == "approved\n"


async def test_an_editor_opening_while_the_daemon_stops_waits_and_starts_the_next(
    start_server: StartServer, repo: Path, server_env: dict[str, str]
) -> None:
    first = await start_server(repo)
    agent = await first.dispatch(WAIT_FOR_GO, backend="command")
    running = await wait_until_begun(first, agent["id"])
    old = read_pid(DaemonPaths(state_dir(server_env)))
    async with await anyio.open_process(daemon_cli(server_env, "stop"), env=server_env) as stop:
        assert stop.stdout is not None
        assert b"stops once" in await stop.stdout.receive()
        opened: list[ForkyardClient] = []

        async def open_second() -> None:
            opened.append(await start_server(repo))

        log = DaemonPaths(state_dir(server_env)).log
        async with anyio.create_task_group() as group:
            group.start_soon(open_second)
            # Once the stopping daemon turned the second editor away (its log says so;
            # nothing else would tell), the agent finishes and the daemon goes.
            with anyio.fail_after(30):
                while "refused an attach" not in log.read_text():  # noqa: ASYNC110
                    await anyio.sleep(0.05)
            (Path(running["worktree"]) / "go").touch()
        await stop.wait()
    [second] = opened
    [listed] = (await second.request("forkyard/agent/list", {}))["agents"]
    assert listed["state"] == "done", "the stopping daemon finished its agent first"
    assert read_pid(DaemonPaths(state_dir(server_env))) not in (None, old)


async def test_stop_now_interrupts_running_agents_and_keeps_their_worktrees(
    start_server: StartServer, repo: Path, server_env: dict[str, str]
) -> None:
    client = await start_server(repo)
    agent = await client.dispatch(WAIT_FOR_GO, backend="command")
    running = await wait_until_begun(client, agent["id"])
    done = await anyio.run_process(daemon_cli(server_env, "stop", "--now"), env=server_env)
    assert b"the Forkyard daemon stopped" in done.stdout
    # The editor starts the next daemon and learns what happened to its agent.
    interrupted = await client.wait_for_agent(agent["id"], {"interrupted"})
    assert interrupted["worktree"] == running["worktree"]
    assert (Path(running["worktree"]) / "begun.txt").exists()


async def test_an_agent_cannot_reach_the_daemon_socket(
    start_server: StartServer, repo: Path, server_env: dict[str, str]
) -> None:
    """A hostile agent that knows where the daemon listens cannot talk to it: the state
    directory is not in its sandbox, so neither is the socket."""
    client = await start_server(repo)
    socket_path = DaemonPaths(state_dir(server_env)).socket
    probe = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n"
        f"    s.connect({str(socket_path)!r})\n"
        "    print('reached')\n"
        "except OSError as exc:\n"
        "    print('refused', exc)\n"
    )
    (repo / "probe.py").write_text(probe)
    agent = await client.dispatch("python3 probe.py", backend="command")
    done = await client.wait_for_agent(agent["id"])
    log = await client.request("forkyard/agent/read", {"agentId": agent["id"]})
    output = " ".join(entry["text"] for entry in log["log"])
    assert done["state"] == "done", done
    assert "refused" in output and "reached" not in output.replace("refused", ""), output
