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
import time
from pathlib import Path
from typing import ClassVar

import anyio
import anyio.to_thread

from forkyard.agents.base import AgentContext, RunOutcome
from forkyard.agents.external_output import SUMMARY_LINES, PlainOutputReader, failure
from forkyard.agents.external_runtime import (
    ExternalProgramBackend,
    Invocation,
    Launch,
    ProgramSpec,
    install_root,
)
from forkyard.tools.process import ProcessResult
from forkyard.workspace.git import GitError, Repository

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
    # Aider wraps its output at the terminal's width, 80 columns without a terminal.
    "COLUMNS": "400",
}
#: Lines aider prints for an API error it gave up on (it still exits 0).
API_ERROR = re.compile(r"^litellm\.\w+(Error|Exception)\b|^Error: ", re.MULTILINE)
#: Where aider caches the model list it downloads, and where litellm ships a copy of it.
MODEL_INFO_CACHE = ".aider/caches/model_prices_and_context_window.json"
LITELLM_MODEL_INFO = (
    "lib/python3*/site-packages/litellm/model_prices_and_context_window_backup.json"
)
#: Aider refetches a cache older than a day; refresh it well before.
MODEL_INFO_MAX_AGE_SECONDS = 12 * 3600
#: At most this many lines of the model's reply make the summary.
REPLY_LINES = 20
#: Lines that make no summary: token counts, costs, aider's banner.
NOISE = re.compile(
    r"^(Tokens: |Cost: |Aider v|Model: |Git repo: |Repo-map: |Main model: |Detected dumb term"
    r"|Restored previous conversation history)"
)


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
            argv += ["--model", aider_model(config.model, launch.access.url)]
        # The gateway, which forwards to the configured base_url (or OpenAI's) with the
        # real key; the program's "key" is this run's token.
        argv += ["--openai-api-base", launch.access.url]
        argv += config.args
        env = dict(QUIET_ENV)
        env["OPENAI_API_KEY"] = launch.access.token
        env.update(await _private_git(context, launch.home.path))
        await anyio.to_thread.run_sync(_seed_model_info, launch.program, launch.home.path)
        root = context.cwd
        caches_before = await anyio.to_thread.run_sync(_tag_caches, root)

        async def remove_new_caches() -> None:
            """The repository map's cache is aider's bookkeeping, not the agent's work,
            and would show up in the diff."""
            if context.writable:
                await anyio.to_thread.run_sync(_remove_new_caches, root, caches_before)

        return Invocation(argv=argv, env=env, output=AiderOutput(context), after=remove_new_caches)


async def _private_git(context: AgentContext, home: Path) -> dict[str, str]:
    """Git variables that give aider its own index and object store, reading the
    repository's objects through an alternate: aider `git add`s every file it creates,
    and the repository (the worktree's git metadata included) is read-only in the
    sandbox. Nothing aider does with git reaches the user's repository or the agent's
    branch; Forkyard records the worktree itself. {} outside a git repository.

    This runs on the host, on a follow-up after the agent has worked in its worktree
    too: so the worktree's index and the object store are found from the repository's
    own records, and git there runs hardened (`Repository.worktree_git`), never by
    discovery through a `.git` or config the agent could have planted (an fsmonitor
    hook would run on `update-index`)."""
    try:
        repository = await Repository.discover(context.repo_root, context.environ)
        if context.writable:
            git = await repository.worktree_git(context.cwd)
            # GitPython, which aider reads the worktree's own index with (it ignores
            # GIT_INDEX_FILE), cannot read a version 4 index (the user's `index.version`
            # or `feature.manyFiles` gives one): aider would report "Unable to read
            # staged files" and miss them. Only the agent's worktree: an explorer's
            # directory is the user's checkout.
            await git.run("update-index", "--index-version", "3", check=False)
            index, objects = git.index, repository.common_dir / "objects"
        else:
            # The user's checkout, which agents cannot write: git as everywhere there.
            found = await repository.git(
                "rev-parse", "--git-path", "index", "--git-path", "objects"
            )
            paths = found.text.splitlines()
            if len(paths) != 2:
                return {}
            index, objects = (repository.root / path for path in paths)
    except GitError:
        return {}
    private_index = home / "git-index"
    private_objects = home / "git-objects"

    def copy_index() -> None:
        private_objects.mkdir(exist_ok=True)
        if index.is_file():
            shutil.copyfile(index, private_index)
        else:
            private_index.unlink(missing_ok=True)

    await anyio.to_thread.run_sync(copy_index)
    return {
        "GIT_INDEX_FILE": str(private_index),
        "GIT_OBJECT_DIRECTORY": str(private_objects),
        "GIT_ALTERNATE_OBJECT_DIRECTORIES": str(await anyio.Path(objects).resolve()),
    }


def _seed_model_info(program: Path, home: Path) -> None:
    """Give aider the model list litellm ships, as the cache of the one it would
    download from GitHub at every start (it waits seconds for that where the network
    is slow or absent). Refreshed while aider considers it fresh (a day)."""
    target = home / MODEL_INFO_CACHE
    try:
        if time.time() - target.stat().st_mtime < MODEL_INFO_MAX_AGE_SECONDS:
            return
    except OSError:
        pass
    shipped = sorted(install_root(program).glob(LITELLM_MODEL_INFO))
    if shipped:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shipped[-1], target)


def _tag_caches(root: Path) -> set[Path]:
    return set(root.glob(TAGS_CACHE_GLOB))


def _remove_new_caches(root: Path, before: set[Path]) -> None:
    for path in _tag_caches(root) - before:
        shutil.rmtree(path, ignore_errors=True)


class AiderOutput(PlainOutputReader):
    """Aider's text output. Its summary is the model's last reply (the lines before
    aider's "Tokens: ..." line) and the edits aider applied after it."""

    def __init__(self, context: AgentContext) -> None:
        super().__init__(context, "aider")
        self.api_errors: list[str] = []
        self._block: list[str] = []
        self.last_reply: list[str] = []
        self.applied: list[str] = []

    async def line(self, stream: str, line: str) -> None:
        if API_ERROR.search(line):
            self.api_errors.append(line.strip())
        if stream == "stdout":
            self._read(line)
        await super().line(stream, line)

    def _read(self, line: str) -> None:
        if line.startswith("Tokens: "):
            self.last_reply, self._block, self.applied = self._block, [], []
        elif NOISE.match(line):
            self._block = []
        elif line.startswith("Applied edit to "):
            self.applied.append(line.strip())
        elif line.strip() or self._block:
            self._block.append(line)

    def summary_lines(self) -> list[str]:
        if not self.last_reply:
            return [line for line in self.lines if not NOISE.match(line)][-SUMMARY_LINES:]
        reply = [line for line in self.last_reply][:REPLY_LINES]
        while reply and not reply[-1].strip():
            reply.pop()
        return [*reply, *self.applied]

    def outcome(self, result: ProcessResult) -> RunOutcome:
        outcome = super().outcome(result)
        if outcome.ok and self.api_errors:
            detail = f"the model could not be reached: {self.api_errors[-1]}"
            return RunOutcome(False, outcome.summary, failure("aider", result, detail))
        return outcome
