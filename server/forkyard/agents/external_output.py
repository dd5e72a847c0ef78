"""Reading an external program's output: JSON-lines event streams and plain text become
the agent's log lines and progress, then an outcome; secrets never reach either."""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Mapping
from typing import Any, ClassVar, Protocol

from forkyard.agents.base import AgentContext, RunOutcome
from forkyard.tools.process import ProcessResult

SUMMARY_LINES = 5
PROGRESS_CHARS = 120
LOG_TEXT_CHARS = 4000
#: Variables whose values never appear in a log or an error.
SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH", re.IGNORECASE)
MIN_SECRET_CHARS = 4
REDACTED = "[redacted]"


class OutputReader(Protocol):
    """Turns the program's output into log lines and progress, then into an outcome."""

    async def line(self, stream: str, line: str) -> None: ...
    def outcome(self, result: ProcessResult) -> RunOutcome: ...
    @property
    def session_id(self) -> str | None: ...


def last_lines(text: str, count: int = SUMMARY_LINES) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(lines[-count:])


def clip(text: str, limit: int = LOG_TEXT_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + f"… [{len(text) - limit} more chars]"


def first_line(text: str, limit: int = PROGRESS_CHARS) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:limit]
    return ""


def failure(program: str, result: ProcessResult, detail: str | None = None) -> str:
    """Why a run failed, for the agent's `error`: how it ended, the program's own word
    where it gave one, and the tail of its stderr."""
    if result.timed_out:
        head = f"{program} timed out after {result.duration_seconds:.0f} s"
    elif result.returncode < 0:
        head = f"{program} was killed by signal {-result.returncode}"
    elif result.returncode != 0:
        head = f"{program} exited with status {result.returncode}"
    else:
        head = f"{program} failed"
    message = head + (f": {detail}" if detail else "")
    if stderr := last_lines(result.stderr_tail):
        message += f"\nstderr:\n{stderr}"
    return message


class JsonEventReader:
    """Reads a JSON-lines event stream (codex --json, claude stream-json). Lines that are
    not JSON objects are logged as they are and remembered: a program that prints no
    events at all did not run as expected, whatever its exit status."""

    program: ClassVar[str] = "program"

    def __init__(self, context: AgentContext) -> None:
        self.context = context
        self.events = 0
        self.garbage: deque[str] = deque(maxlen=SUMMARY_LINES)
        self._session_id: str | None = None

    @property
    def session_id(self) -> str | None:
        return self._session_id

    async def line(self, stream: str, line: str) -> None:
        if stream == "stderr":
            if line.strip():
                await self.context.log("stderr", line)
            return
        text = line.strip()
        if not text:
            return
        try:
            event: Any = json.loads(text)
        except ValueError:
            event = None
        if not isinstance(event, dict):
            self.garbage.append(line)
            await self.context.log("stdout", line)
            return
        self.events += 1
        await self.event(event)

    async def event(self, event: dict[str, Any]) -> None:
        raise NotImplementedError

    def no_result(self, result: ProcessResult) -> RunOutcome:
        """The outcome when the stream never reached its final event."""
        if result.returncode == 0 and not result.timed_out:
            if self.events == 0:
                shown = "\n".join(self.garbage) or "nothing"
                detail = f"its output was not its JSON event stream; it printed:\n{shown}"
            else:
                detail = "its event stream ended before the final result"
        else:
            detail = None
        return RunOutcome(False, "", failure(self.program, result, detail))


class PlainOutputReader:
    """Reads plain text output: every line to the log, the latest to progress, the last
    lines of stdout as the summary, the exit status as the outcome."""

    def __init__(self, context: AgentContext, program: str) -> None:
        self.context = context
        self.program = program
        self.lines: deque[str] = deque(maxlen=50)

    @property
    def session_id(self) -> str | None:
        return None

    async def line(self, stream: str, line: str) -> None:
        if not line.strip():
            return
        await self.context.log(stream, line)
        if stream == "stdout":
            self.lines.append(line)
            self.context.progress(first_line(line))

    def summary_lines(self) -> list[str]:
        return list(self.lines)[-SUMMARY_LINES:]

    def outcome(self, result: ProcessResult) -> RunOutcome:
        summary = "\n".join(self.summary_lines())
        if result.timed_out or result.returncode != 0:
            return RunOutcome(False, summary, failure(self.program, result))
        return RunOutcome(True, summary or f"{self.program} finished")


class Redactor:
    """Replaces the values of secret-looking variables the program got (API keys,
    tokens) wherever its output repeats them: some APIs quote the key back in errors,
    and the log and the agent's error are shown to the user and stored."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._secrets = sorted(
            {
                value
                for name, value in env.items()
                if SECRET_NAME.search(name) and len(value) >= MIN_SECRET_CHARS
            },
            key=len,
            reverse=True,
        )

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text
