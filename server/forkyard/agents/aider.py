"""The `aider` backend: aider in its one-shot scripting mode (`--message-file`).

Aider has no structured output: its text output is the log, its last lines the summary,
its exit status the outcome (plus the API errors it reports and then exits 0 on). It
never commits (`--no-auto-commits`: Forkyard records the worktree itself), never touches
.gitignore, and keeps its histories in the agent's private home, so that the worktree's
diff holds only the edits; a follow-up restores the chat history. The `.env` of the
repository is not loaded: the program gets only the variables the settings name.
Explorers run it with `--dry-run` in a read-only sandbox; roles without `run_command`
get `--no-suggest-shell-commands`.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import ClassVar

import anyio.to_thread

from forkyard.agents.base import AgentContext, RunOutcome
from forkyard.agents.external_runtime import (
    ExternalProgramBackend,
    Invocation,
    Launch,
    PlainOutputReader,
    ProgramSpec,
    api_key,
    failure,
)
from forkyard.tools.process import ProcessResult

MESSAGE_FILE = "forkyard-message.md"
CHAT_HISTORY_FILE = ".aider.chat.history.md"
INPUT_HISTORY_FILE = ".aider.input.history"
#: The repository map's cache, which aider writes into the repository's root.
TAGS_CACHE_GLOB = ".aider.tags.cache.v*"
QUIET_FLAGS: tuple[str, ...] = (
    "--yes-always",
    "--no-auto-commits",
    "--no-dirty-commits",
    "--no-gitignore",
    "--no-check-update",
    "--no-show-release-notes",
    "--no-analytics",
    "--no-pretty",
    "--no-fancy-input",
    "--no-show-model-warnings",
    "--no-detect-urls",
    "--no-notifications",
)
QUIET_ENV: dict[str, str] = {
    "AIDER_CHECK_UPDATE": "false",
    "AIDER_ANALYTICS": "false",
    # litellm otherwise downloads its model price list when it is imported.
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "PYTHONUNBUFFERED": "1",
}
#: Lines aider prints for an API error it gave up on (it still exits 0).
API_ERROR = re.compile(r"^litellm\.\w+(Error|Exception)\b|^Error: ", re.MULTILINE)
#: Lines that make no summary: token counts, costs, aider's banner.
NOISE = re.compile(r"^(Tokens: |Cost: |Aider v|Model: |Git repo: |Repo-map: |Main model: )")


def aider_model(model: str, base_url: str | None) -> str:
    """litellm's name for the model: on an OpenAI-compatible base_url a bare name
    needs the `openai/` provider prefix; names that have a provider keep it."""
    if base_url and "/" not in model:
        return f"openai/{model}"
    return model


class AiderBackend(ExternalProgramBackend):
    spec: ClassVar[ProgramSpec] = ProgramSpec(
        kind="aider",
        executable="aider",
        local_paths=("aider-venv/bin/aider",),
        install_hint="python3 -m pip install aider-chat (in its own virtualenv)",
        default_api_key_env="OPENAI_API_KEY",
    )

    async def invocation(
        self, context: AgentContext, launch: Launch, instruction: str, session: str | None
    ) -> Invocation:
        config = launch.config
        home = launch.home.path
        message = home / MESSAGE_FILE
        chat_history = home / CHAT_HISTORY_FILE
        follow_up = await anyio.to_thread.run_sync(chat_history.exists)
        await anyio.to_thread.run_sync(message.write_text, instruction, "utf-8")
        argv = [str(launch.program), "--message-file", str(message), *QUIET_FLAGS]
        argv += ["--env-file", str(home / ".env")]
        argv += ["--chat-history-file", str(chat_history)]
        argv += ["--input-history-file", str(home / INPUT_HISTORY_FILE)]
        if follow_up:
            argv.append("--restore-chat-history")
        if not context.writable:
            argv.append("--dry-run")
        if not context.writable or "run_command" not in context.role.tools:
            argv.append("--no-suggest-shell-commands")
        if config.model:
            argv += ["--model", aider_model(config.model, config.base_url)]
        if config.base_url:
            argv += ["--openai-api-base", config.base_url]
        argv += config.args
        env = dict(QUIET_ENV)
        key_name, key_value = api_key(self.spec, config, context.environ)
        if key_value:
            env["OPENAI_API_KEY"] = key_value
            if key_name and key_name != "OPENAI_API_KEY":
                env[key_name] = key_value
        root = context.cwd
        caches_before = await anyio.to_thread.run_sync(_tag_caches, root)

        async def remove_new_caches() -> None:
            """The repository map's cache is aider's bookkeeping, not the agent's work,
            and would show up in the diff."""
            if context.writable:
                await anyio.to_thread.run_sync(_remove_new_caches, root, caches_before)

        return Invocation(argv=argv, env=env, output=AiderOutput(context), after=remove_new_caches)


def _tag_caches(root: Path) -> set[Path]:
    return set(root.glob(TAGS_CACHE_GLOB))


def _remove_new_caches(root: Path, before: set[Path]) -> None:
    for path in _tag_caches(root) - before:
        shutil.rmtree(path, ignore_errors=True)


class AiderOutput(PlainOutputReader):
    def __init__(self, context: AgentContext) -> None:
        super().__init__(context, "aider")
        self.api_errors: list[str] = []

    async def line(self, stream: str, line: str) -> None:
        if API_ERROR.search(line):
            self.api_errors.append(line.strip())
        await super().line(stream, line)

    def summary_lines(self) -> list[str]:
        return [line for line in self.lines if not NOISE.match(line)]

    def outcome(self, result: ProcessResult) -> RunOutcome:
        outcome = super().outcome(result)
        if outcome.ok and self.api_errors:
            detail = f"the model could not be reached: {self.api_errors[-1]}"
            return RunOutcome(False, outcome.summary, failure("aider", result, detail))
        return outcome
