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
        ids = []
        for title, command in DEMO_AGENTS:
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
    finally:
        await client.stop()
    elapsed = time.monotonic() - started
    verdict = "[green]all agents done[/]" if not failures else f"[red]{failures} failed[/]"
    console.print(f"{verdict} in {elapsed:.1f} s; review with `forkyard serve` in your editor.")
    return 1 if failures else 0
