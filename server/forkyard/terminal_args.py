"""The terminal front's command line, kept apart from `terminal.py` so that parsing any
`forkyard` command imports nothing heavy (the daemon's detach step parses it too)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_commands(commands: Any) -> None:
    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = commands.add_parser(name, help=help_text)
        parser.set_defaults(terminal=name)
        parser.add_argument("--repo", type=Path, default=Path("."), help="default: .")
        return parser

    command("agents", "list the repository's agents").add_argument("--json", action="store_true")
    dispatch = command("dispatch", "start an agent on a task")
    dispatch.add_argument("task")
    dispatch.add_argument("--role", default="worker")
    dispatch.add_argument("--backend", default=None, help="default: llm")
    dispatch.add_argument(
        "--n", type=int, choices=range(1, 11), default=None, metavar="K",
        help="best of K: start K agents on the task, grouped (1-10)",
    )  # fmt: skip
    dispatch.add_argument(
        "--cluster", action="store_const", const="cluster", dest="placement", default=None,
        help="run it on the configured Ray cluster ([cluster] address)",
    )  # fmt: skip
    chat = command("chat", "send a chat message and stream the reply")
    chat.add_argument("text")
    chat.add_argument("--thread", default=None, help="go on in this thread")
    log = command("log", "an agent's log")
    log.add_argument("agent")
    log.add_argument("--follow", action="store_true", help="until the agent ends")
    command("diff", "an agent's diff").add_argument("agent")
    agent = command("agent", "act on one agent")
    agent.add_argument("agent")
    agent.add_argument(
        "--materialize", action="store_true",
        help="make its overlay worktree an ordinary full one, at the same path",
    )  # fmt: skip
    command("apply", "apply done agents to the files on disk (three-way), in order").add_argument(
        "agent", nargs="+", help="one or more agents; several stop at the first conflict"
    )
