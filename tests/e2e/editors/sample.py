"""The repository and agent both editor tests review, so that Neovim and Emacs are held
to the same expectations."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tests.helpers import make_repo

#: The first hunk's line has a two-byte and a four-byte (astral) character before the
#: change, so a column counted in the wrong position encoding lands in the wrong place.
GREETING = '    return "héllo 😀 world"'
APP = (
    "def greet():\n"
    + GREETING
    + "\n\n\n"
    + "".join(f"def f{i}():\n    return {i}\n\n\n" for i in range(12))
)
#: Three one-line hunks: the greeting, and two further down.
TASK = "sed -i 's/world\"$/forkyard\"/; s/return 5$/return 50/; s/return 9$/return 90/' app.py"
AFTER_HUNK = APP.replace('world"', 'forkyard"')
AGENT_VERSION = AFTER_HUNK.replace("return 5\n", "return 50\n").replace("return 9\n", "return 90\n")
HUNK_LINES = [APP.splitlines().index(line) for line in (GREETING, "    return 5", "    return 9")]


def make_sample_repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo", {"app.py": APP})


def write_config(tmp_path: Path, repo: Path, **extra: Any) -> tuple[Path, Path]:
    """The scenario's parameters for the editor script; returns (config, result file)."""
    result = tmp_path / "result.json"
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "repo": str(repo),
                "file": str(repo / "app.py"),
                "server_cmd": [sys.executable, "-m", "forkyard.cli", "serve"],
                "task": TASK,
                "expected_hunks": len(HUNK_LINES),
                "result": str(result),
                "timeout_ms": 30_000,
                **extra,
            }
        )
    )
    return config, result
