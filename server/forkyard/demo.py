"""`forkyard demo`: Forkyard's main job, end to end, with no model and no key.

It makes a sample git repository, starts `forkyard serve` as a real subprocess, connects
over stdio as an editor would, dispatches three `command` agents in parallel, shows their
live progress and prints each agent's summary and diff.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.syntax import Syntax
from rich.table import Table

from forkyard.client import ForkyardClient
from forkyard.daemon.control import stop_and_wait

SAMPLE_FILES = {
    "README.md": "# calc\n\nA tiny sample project for the Forkyard demo.\n",
    ".gitignore": "__pycache__/\n",
    "calc/__init__.py": "",
    "calc/ops.py": ("def add(a, b):\n    return a + b\n\n\ndef mul(a, b):\n    return a * b\n"),
    "tests/__init__.py": "",
    "tests/test_ops.py": (
        "import unittest\n\nfrom calc.ops import add, mul\n\n\n"
        "class OpsTest(unittest.TestCase):\n"
        "    def test_add(self):\n        self.assertEqual(add(2, 3), 5)\n\n"
        "    def test_mul(self):\n        self.assertEqual(mul(2, 3), 6)\n"
    ),
}

DEMO_AGENTS = [
    (
        "Add a module docstring to calc/ops.py",
        'sed -i \'1i """Arithmetic helpers for the calc sample."""\\n\' calc/ops.py',
    ),
    (
        "Write a changelog",
        "printf '# Changelog\\n\\n## Unreleased\\n\\n- Start a changelog.\\n' > CHANGELOG.md",
    ),
    (
        "Run the sample's tests",
        "python3 -m unittest discover -s tests -t . -v",
    ),
]
#: Which of DEMO_AGENTS the demo starts from the chat, as a user would type it.
FROM_CHAT = 2

GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "Forkyard Demo",
    "GIT_AUTHOR_EMAIL": "demo@forkyard.invalid",
    "GIT_COMMITTER_NAME": "Forkyard Demo",
    "GIT_COMMITTER_EMAIL": "demo@forkyard.invalid",
}


def make_sample_repo(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for path, text in SAMPLE_FILES.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    env = {**os.environ, **GIT_IDENTITY}
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "calc"]):
        subprocess.run(["git", *args], cwd=root, env=env, check=True)
    return root


def _newest_agent(client: ForkyardClient, number: int) -> dict[str, Any] | None:
    return next((a for a in client.agents.values() if a["number"] == number), None)


async def _print_conversation(
    client: ForkyardClient, console: Console, thread_id: str, agent_id: str
) -> None:
    """The chat thread the third agent came from: the command, the reply, and the
    agent's events, which arrive in the thread by themselves."""

    def events_arrived() -> bool:
        return any(
            method == "forkyard/chat/message"
            and params["message"]["role"] == "event"
            and params["message"]["agentId"] == agent_id
            and "is done" in params["message"]["text"]
            for method, params in client.notifications
        )

    await client.wait_until(events_arrived, timeout=20)
    thread = await client.request("forkyard/thread/read", {"threadId": thread_id})
    table = Table(title="the conversation", expand=True, show_header=False)
    table.add_column("who", style="bold")
    table.add_column("message")
    for message in thread["messages"]:
        table.add_row(message["role"], message["text"])
    console.print(table)


def run_demo(*, keep: bool = False) -> int:
    console = Console()
    workdir = Path(tempfile.mkdtemp(prefix="forkyard-demo-"))
    try:
        return anyio.run(_demo, workdir, console)
    finally:
        if keep:
            console.print(f"sample repository kept in {workdir / 'calc'}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _progress_table(client: ForkyardClient, ids: list[str]) -> Table:
    table = Table(title="Forkyard agents", expand=True)
    for column in ("#", "title", "state", "progress"):
        table.add_column(column)
    styles = {"done": "green", "failed": "red", "running": "yellow", "cancelled": "magenta"}
    for agent_id in ids:
        agent = client.agents[agent_id]
        state = agent["state"]
        progress = (agent.get("progress") or {}).get("message") or ""
        table.add_row(
            str(agent["number"]),
            agent["title"],
            f"[{styles.get(state, 'white')}]{state}[/]",
            progress[-70:],
        )
    return table


async def _demo(workdir: Path, console: Console) -> int:
    started = time.monotonic()
    repo = make_sample_repo(workdir / "calc")
    console.print(f"[bold]Forkyard demo[/] on a sample repository: {repo}")
    env = {**os.environ, "FORKYARD_STATE_DIR": str(workdir / "state")}
    options: dict[str, Any] = {"maxParallelAgents": 3}
    if shutil.which("bwrap") is None:
        console.print(
            "[yellow]bubblewrap is not installed: the demo runs its commands unsandboxed "
            "(apt-get install bubblewrap to sandbox them)[/]"
        )
        options["allowUnsandboxedCommands"] = True
    client = await ForkyardClient.start(repo, env, initialization_options=options)
    failures = 0
    try:
        ids: list[str] = []
        thread_id = ""
        for index, (title, command) in enumerate(DEMO_AGENTS):
            if index == FROM_CHAT:
                chat = await client.request("forkyard/chat", {"text": f"/run {command}"})
                thread_id = chat["threadId"]
                agent = await client.wait_until(lambda: _newest_agent(client, len(ids) + 1))
            else:
                agent = await client.dispatch(command, backend="command", title=title)
            ids.append(agent["id"])
        with Live(_progress_table(client, ids), console=console, refresh_per_second=10) as live:

            def all_finished() -> bool:
                live.update(_progress_table(client, ids))
                return all(
                    client.agents[i]["state"] in ("done", "failed", "cancelled") for i in ids
                )

            await client.wait_until(all_finished, timeout=50)
        for agent_id in ids:
            agent = client.agents[agent_id]
            diff = await client.request("forkyard/agent/diff", {"agentId": agent_id})
            body: list[Any] = [agent.get("summary") or agent.get("error") or ""]
            if diff["patch"]:
                body.append(Syntax(diff["patch"], "diff", theme="ansi_dark"))
            else:
                body.append("(no file changes)")
            ok = agent["state"] == "done"
            failures += 0 if ok else 1
            console.print(
                Panel(
                    Group(*body),
                    title=f"agent #{agent['number']}: {agent['title']} [{agent['state']}]",
                    subtitle=f"branch {agent['branch']}",
                    border_style="green" if ok else "red",
                )
            )
        await _print_conversation(client, console, thread_id, ids[FROM_CHAT])
    finally:
        await client.stop()
        # The demo's daemon is the demo's alone: it goes with it.
        await stop_and_wait(workdir / "state", now=True)
    elapsed = time.monotonic() - started
    verdict = "[green]all agents done[/]" if not failures else f"[red]{failures} failed[/]"
    console.print(f"{verdict} in {elapsed:.1f} s; review with `forkyard serve` in your editor.")
    return 1 if failures else 0
