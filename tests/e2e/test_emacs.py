"""The review flow in a real Emacs 28 with eglot 1.9, in batch mode: the agent's hints in
Flymake, the quickfix for one hunk, "Apply agent #1 to this file" from the source actions
(refused once, then accepted), all through eglot's own code paths. eglot 1.9 advertises no
position encodings (so UTF-16), no codeAction/resolve and no window.showMessage."""

from __future__ import annotations

import shutil
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

SCRIPT = Path(__file__).parent / "editors" / "review.el"
EMACS = shutil.which("emacs")
FILE_ACTION = "Apply agent #1 to this file"


def utf16_units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


@pytest.mark.skipif(EMACS is None, reason="emacs is not installed (apt: emacs-nox elpa-eglot)")
def test_review_in_emacs_with_eglot(tmp_path: Path, server_env: dict[str, str]) -> None:
    assert EMACS is not None
    repo = make_sample_repo(tmp_path)
    config, result_file = write_config(tmp_path, repo, file_action=FILE_ACTION)
    run = run_editor(
        [EMACS, "--batch", "-l", str(SCRIPT)],
        {**server_env, "FORKYARD_TEST_CONFIG": str(config)},
        result_file,
        cwd=repo,
        timeout=75,
    )
    assert "Cannot open load file" not in run.stderr, f"is elpa-eglot installed?\n{run.stderr}"
    assert run.returncode == 0 and run.result and run.result["ok"], run.explain()
    result = run.result

    hints = result["diagnostics"]
    assert [d["line"] for d in hints] == HUNK_LINES
    assert all(d["type"] == "eglot-note" for d in hints), "Information is a note in Flymake"
    assert hints[0]["text"].startswith("forkyard: agent #1: sed -i ")
    assert result["position_encoding"] == "utf-16", "eglot 1.9 asks for none: the default"
    assert hints[0]["lsp_end_character"] == utf16_units(GREETING)
    assert (hints[0]["beg_column"], hints[0]["end_column"]) == (0, len(GREETING)), "whole line"
    assert any("agent #1" in m and "done" in m for m in result["messages"]), result["messages"]

    assert result["hunk_line_after"] == '    return "héllo 😀 forkyard"'
    assert result["text_after_hunk"] == AFTER_HUNK, "only that hunk"
    assert result["modified_after_hunk"] is True, "the edit is in the buffer, not saved"
    assert [d["line"] for d in result["diagnostics_after_hunk"]] == HUNK_LINES[1:]

    assert FILE_ACTION in result["menu"]
    assert result["unchanged_after_refusal"] is True
    assert result["text_after_file"] == AGENT_VERSION
    assert result["text_after_undo"] == AFTER_HUNK, "one apply, one undo step"
    assert (repo / "app.py").read_text() == APP, "Emacs decides when to write the file"
    assert result["server_stopped"] is True
    applies = [c for c in result["commands"] if c["command"] == "forkyard.apply"]
    assert [c.get("result", {}).get("applied") for c in applies] == [True, False, True], applies
    assert "refusal_error" not in result, "a user's 'no' is `applied: false`, not an error"
