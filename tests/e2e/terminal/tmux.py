"""A real terminal for editor tests: tmux runs the editor on its own server socket, the
test types with send-keys as a person would and reads the screen with capture-pane.

Waiting is always for something on the screen (or a file), bounded by a deadline: the
poll interval is only how often the screen is looked at, never what the test relies on.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

TMUX = shutil.which("tmux")
POLL_SECONDS = 0.05


class Terminal:
    """One tmux session of `width` x `height` running `argv` in `cwd` with `env`."""

    def __init__(self, width: int = 100, height: int = 30) -> None:
        assert TMUX is not None
        self.socket = f"forkyard-test-{uuid.uuid4().hex[:12]}"
        self.width = width
        self.height = height
        #: Every screen the test looked at, so that a prompt that came and went is seen.
        self.screens: list[str] = []

    def _tmux(self, *args: str, check: bool = True) -> str:
        assert TMUX is not None
        done = subprocess.run(
            [TMUX, "-L", self.socket, *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=10,
        )
        return done.stdout

    def start(self, argv: Sequence[str], *, cwd: Path, env: Mapping[str, str]) -> None:
        # tmux starts the command through the default shell with the server's environment:
        # give the session exactly `env`, so nothing of the test runner's leaks in.
        command = ["env", "-i", *(f"{k}={v}" for k, v in env.items()), *argv]
        self._tmux(
            "-f", "/dev/null",
            "new-session", "-d",
            "-x", str(self.width), "-y", str(self.height),
            "-c", str(cwd),
            "--", *command,
        )  # fmt: skip
        self._tmux("set-option", "-g", "remain-on-exit", "on")

    def type(self, text: str) -> None:
        """Type `text` literally, as a person would."""
        self._tmux("send-keys", "-l", "--", text)

    def key(self, *keys: str) -> None:
        """Press named keys: "Escape", "Enter", "C-c"."""
        self._tmux("send-keys", *keys)

    def screen(self) -> str:
        text = self._tmux("capture-pane", "-p", "-J")
        self.screens.append(text)
        return text

    def wait_for(self, what: str, ready: Callable[[str], bool], timeout: float = 30) -> str:
        """The screen once `ready(screen)` holds; AssertionError naming `what` and showing
        the screen after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if ready(screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; the screen:\n{screen}")
            time.sleep(POLL_SECONDS)

    def close(self) -> None:
        self._tmux("kill-server", check=False)
