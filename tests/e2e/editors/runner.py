"""Running a real editor headless from a test: in its own process group, so that when it
hangs the editor and the language server it started are killed together, and its result
file read back."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class EditorRun:
    returncode: int | None  # None: killed at the deadline
    stdout: str
    stderr: str
    result: dict[str, Any] | None  # what the editor script wrote, if it got that far

    def explain(self) -> str:
        """Everything that helps to see why a run failed, for the assertion message."""
        return (
            f"exit status {self.returncode}\nresult: {json.dumps(self.result, indent=1)}\n"
            f"stdout:\n{self.stdout[-4000:]}\nstderr:\n{self.stderr[-4000:]}"
        )


def run_editor(
    command: list[str], env: dict[str, str], result_file: Path, cwd: Path, timeout: float
) -> EditorRun:
    """Run `command` to completion or until `timeout` seconds have passed."""
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    returncode: int | None
    try:
        stdout, stderr = process.communicate(timeout=timeout)
        returncode = process.returncode
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        returncode = None
    finally:
        # Whatever is left of the group (a server the editor failed to stop) goes too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    result = json.loads(result_file.read_text()) if result_file.exists() else None
    return EditorRun(returncode, stdout, stderr, result)
