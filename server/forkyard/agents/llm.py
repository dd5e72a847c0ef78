"""The `llm` backend: the built-in agent loop over the configured chat model.

The loop is deliberately plain: show the model the conversation and its tools, run the
tools it calls, give it the results, repeat until it calls `finish` or answers without
calling a tool. What makes it safe to leave running in the background is around that:
the tools are confined and enforced by `ToolBox`, and every run has budgets (steps, wall
time, tokens) and gives up on a model that keeps repeating the same failing call, so a
confused or hanging model ends as a failed agent with a reason instead of running on.

A follow-up to a finished agent is a new `run` on the same worktree; the conversation is
kept per agent, so the model sees everything it did before and the new instruction as
the next user message.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from forkyard.agents.base import AgentContext, Availability, RunOutcome
from forkyard.agents.budget import budget_reached
from forkyard.models import (
    ChatMessage,
    ChatModel,
    Completion,
    ModelConfig,
    ModelError,
    ToolCall,
    ToolSpec,
    create_chat_model,
    estimate_message_tokens,
    estimate_tokens,
)
from forkyard.models.config import ModelPrice
from forkyard.models.loading import load_sdks
from forkyard.models.pricing import metered, price_for
from forkyard.settings import Settings
from forkyard.tools.agent_tools import Approver, ToolBox, ToolResult, short_argument
from forkyard.tools.command_tool import SandboxProbe
from forkyard.tools.sandbox import probe_sandbox
from forkyard.tools.search import list_paths, ripgrep_path

ModelFactory = Callable[[ModelConfig, Mapping[str, str]], ChatModel]

#: How much of the repository's file list the system prompt shows.
LAYOUT_MAX_PATHS = 300
PROGRESS_CHARS = 120
LOG_ARGUMENT_CHARS = 2000
LOG_RESULT_CHARS = 200
NOT_RUN = "not run: the agent's run ended before this call"
ELIDED = "[older tool output elided to fit the model's context window]"
#: The most recent messages are always sent whole: the model is working with them.
KEEP_RECENT_MESSAGES = 6
#: Share of the context window the history may fill; the rest is for the system
#: prompt's estimate error and the answer.
CONTEXT_SHARE = 0.75


@dataclass
class Conversation:
    """One agent's exchange with the model, kept across its runs."""

    task: str
    messages: list[ChatMessage] = field(default_factory=list)
    #: Tools the user allowed "for this agent".
    approvals: set[str] = field(default_factory=set)

    def settle(self) -> None:
        """Give every tool call a result. A run can end between the model's answer and
        its tool results (budget, cancellation); the providers reject a history with an
        unanswered call, which would break the agent's next follow-up."""
        answered = {m.tool_call_id for m in self.messages if m.role == "tool"}
        for index in range(len(self.messages) - 1, -1, -1):
            message = self.messages[index]
            if message.role != "assistant" or not message.tool_calls:
                continue
            missing = [call for call in message.tool_calls if call.id not in answered]
            if missing:
                insert_at = index + 1
                while insert_at < len(self.messages) and self.messages[insert_at].role == "tool":
                    insert_at += 1
                self.messages[insert_at:insert_at] = [
                    ChatMessage.tool_result(call, NOT_RUN, is_error=True) for call in missing
                ]
            return


class LlmBackend:
    """The built-in agent. One instance serves every agent of the server: it caches one
    chat model per configuration (connection pools) and one conversation per agent;
    `aclose` releases the models."""

    name = "llm"

    def __init__(
        self,
        *,
        model_factory: ModelFactory = create_chat_model,
        sandbox_probe: SandboxProbe = probe_sandbox,
    ) -> None:
        self._model_factory = model_factory
        self._sandbox_probe = sandbox_probe
        self._models: dict[str, ChatModel] = {}
        self._conversations: dict[tuple[str, int], Conversation] = {}

    async def availability(self, settings: Settings) -> Availability:
        name = settings.agent_model
        if name in settings.models:
            return Availability(True)
        return Availability(False, _no_model_reason(name, settings))

    def conversation(self, repo_root: Path, agent_number: int) -> Conversation | None:
        """The kept conversation of an agent, if it ran in this server."""
        return self._conversations.get((str(repo_root), agent_number))

    def forget(self, repo_root: Path, agent_number: int) -> None:
        """Drop an agent's conversation (it was applied or discarded)."""
        self._conversations.pop((str(repo_root), agent_number), None)

    async def aclose(self) -> None:
        models, self._models = list(self._models.values()), {}
        for model in models:
            await model.aclose()

    async def run(self, context: AgentContext, instruction: str) -> RunOutcome:
        settings = context.settings
        model_name = context.role.model or settings.agent_model
        config = settings.models.get(model_name)
        if config is None:
            return RunOutcome(False, "", _no_model_reason(model_name, settings))
        await load_sdks()
        try:
            model = self._model(config, context.environ)
        except ModelError as error:
            return RunOutcome(False, "", str(error))
        key = (str(context.repo_root), context.agent_number)
        conversation = self._conversations.get(key)
        if conversation is None:
            conversation = self._conversations[key] = Conversation(task=instruction)
        conversation.settle()
        conversation.messages.append(ChatMessage.user(instruction))
        toolbox = ToolBox(
            # Looked up on PATH once, in a worker thread: stat calls stay off the loop.
            ripgrep=await anyio.to_thread.run_sync(ripgrep_path),
            root=context.cwd,
            repo_root=context.repo_root,
            writable=context.writable,
            role=context.role,
            settings=settings,
            environ=context.environ,
            approve=_approver(context),
            remembered=conversation.approvals,
            sandbox_probe=self._sandbox_probe,
        )
        agent_run = AgentRun(
            context, model, toolbox, conversation, config.context_tokens, price_for(config)
        )
        limits = settings.agent
        try:
            with anyio.move_on_after(limits.max_seconds) as deadline:
                return await agent_run.run()
        finally:
            conversation.settle()
        assert deadline.cancelled_caught
        return agent_run.failed(
            f"time budget of {limits.max_seconds:g} s exhausted after {agent_run.steps} step(s)"
        )

    def _model(self, config: ModelConfig, environ: Mapping[str, str]) -> ChatModel:
        key = config.model_dump_json()
        model = self._models.get(key)
        if model is None:
            model = self._models[key] = self._model_factory(config, environ)
        return model


class AgentRun:
    """One run of the loop, from an instruction to `finish` (or a budget)."""

    def __init__(
        self,
        context: AgentContext,
        model: ChatModel,
        toolbox: ToolBox,
        conversation: Conversation,
        context_tokens: int | None = None,
        price: ModelPrice | None = None,
    ) -> None:
        self.context = context
        self.context_tokens = context_tokens
        self.price = price
        self.model = model
        self.toolbox = toolbox
        self.conversation = conversation
        self.limits = context.settings.agent
        self.steps = 0
        self.tokens = 0
        #: Seconds spent waiting for the model, to tell Forkyard's overhead from its.
        self.model_seconds = 0.0
        self._last_failure: tuple[str, str] | None = None
        self._failure_count = 0

    def failed(self, error: str) -> RunOutcome:
        return RunOutcome(False, "", error)

    async def run(self) -> RunOutcome:
        system = await self._system_prompt()
        tools = self.toolbox.specs()
        messages = self.conversation.messages
        while True:
            if self.steps >= self.limits.max_steps:
                return self.failed(f"step budget of {self.limits.max_steps} steps exhausted")
            if reached := budget_reached(self.context.spent(), self.context.budget()):
                return self.failed(reached)
            for text in self.context.take_followups():
                messages.append(ChatMessage.user(text))
            self.steps += 1
            try:
                completion = await self._ask(system, tools)
            except ModelError as error:
                return self.failed(str(error))
            messages.append(ChatMessage.assistant(completion.text, completion.tool_calls))
            if completion.text.strip():
                await self.context.log("assistant", completion.text)
            if self.tokens > self.limits.max_tokens:
                return self.failed(
                    f"token budget of {self.limits.max_tokens} tokens exhausted "
                    f"({self.tokens} used)"
                )
            if not completion.tool_calls:
                summary = completion.text.strip() or "the model ended without a summary"
                return RunOutcome(True, summary)
            outcome = await self._run_tools(completion)
            if outcome is not None:
                return outcome

    async def _ask(self, system: str, tools: list[ToolSpec]) -> Completion:
        messages = self.conversation.messages
        if self.context_tokens is not None:
            fixed = estimate_tokens(system) + sum(
                estimate_tokens(spec.model_dump_json()) for spec in tools
            )
            budget = int(self.context_tokens * CONTEXT_SHARE) - fixed
            messages = fit_context(messages, budget)
        started = time.perf_counter()
        completion: Completion | None = None
        try:
            async with aclosing(self.model.stream(messages, tools, system=system)) as stream:
                async for event in stream:
                    if isinstance(event, Completion):
                        completion = event
        finally:
            self.model_seconds += time.perf_counter() - started
        if completion is None:
            raise ModelError("the model's reply ended without a completion", kind="api_error")
        if completion.usage is not None:
            self.tokens += completion.usage.input_tokens + completion.usage.output_tokens
            self.context.add_usage(metered(completion.usage, self.price))
        else:
            self.tokens += (
                estimate_tokens(system)
                + sum(estimate_tokens(spec.model_dump_json()) for spec in tools)
                + sum(estimate_message_tokens(message) for message in messages)
                + estimate_message_tokens(
                    ChatMessage.assistant(completion.text, completion.tool_calls)
                )
            )
        return completion

    async def _run_tools(self, completion: Completion) -> RunOutcome | None:
        """Run the calls of one answer in order; an outcome when the run is over."""
        for call in completion.tool_calls:
            brief = short_argument(call.name, call.arguments)
            self.context.progress(f"step {self.steps}: {call.name} {brief}"[:PROGRESS_CHARS])
            arguments = _cut(call.arguments, LOG_ARGUMENT_CHARS)
            await self.context.log("tool", f"{call.name} {arguments}")
            result = await self.toolbox.call(call.name, call.arguments)
            self.conversation.messages.append(
                ChatMessage.tool_result(call, result.text, is_error=result.is_error)
            )
            await self.context.log("tool_result", _result_line(call, result))
            if result.finish_summary is not None:
                summary = result.finish_summary.strip() or completion.text.strip() or "finished"
                return RunOutcome(True, summary)
            if repeated := self._note_failure(call, result):
                return self.failed(repeated)
        return None

    def _note_failure(self, call: ToolCall, result: ToolResult) -> str | None:
        """The reason to give up when the same call failed too often in a row."""
        if not result.is_error:
            self._last_failure, self._failure_count = None, 0
            return None
        key = (call.name, call.arguments)
        self._failure_count = self._failure_count + 1 if key == self._last_failure else 1
        self._last_failure = key
        if self._failure_count < self.limits.repeated_failure_limit:
            return None
        return (
            f"the model repeated the same failing call {self._failure_count} times in a row: "
            f"{call.name} {_cut(call.arguments, 200)}: {_first_line(result.text)}"
        )

    async def _system_prompt(self) -> str:
        context = self.context
        layout = await repository_layout(context.cwd, context.environ)
        tools = ", ".join(spec.name for spec in self.toolbox.specs())
        if context.writable:
            where = (
                f"You work in {context.cwd}, your own git worktree: a separate checkout of "
                "the user's repository on its own branch. The user reviews your changes "
                "there as a diff and decides what to apply."
            )
        else:
            where = (
                f"You work in {context.cwd}, the user's own checkout, read-only: you may "
                "read and search, never change anything. Report what you find."
            )
        description = f": {context.role.description}" if context.role.description else ""
        return "\n".join(
            [
                f"You are Forkyard agent #{context.agent_number}, a coding agent working "
                f"in the background in the role '{context.role_name}'{description}.",
                where,
                "All paths are relative to that directory; absolute paths and paths "
                "leading outside it are refused.",
                f"Your tools: {tools}.",
                "Read before you edit. edit_file needs old_text that occurs exactly once "
                "in the file. Keep changes focused on the task."
                + (
                    " Commands run sandboxed: no network, only your directory is writable."
                    if "run_command" in tools
                    else ""
                ),
                "When you are done, call finish with a short summary for the user of what "
                "you did or found.",
                "",
                f"Task: {self.conversation.task}",
                "",
                layout,
            ]
        )


def fit_context(messages: list[ChatMessage], budget_tokens: int) -> list[ChatMessage]:
    """The history to send when the model's context window is limited: the oldest tool
    outputs (file contents, command output: the bulk of an agent's history, and stale
    once acted on) replaced by a note until the estimate fits. The conversation itself
    keeps them; the latest messages are never shortened."""
    total = sum(estimate_message_tokens(message) for message in messages)
    if total <= budget_tokens:
        return messages
    fitted = list(messages)
    for index in range(max(len(fitted) - KEEP_RECENT_MESSAGES, 0)):
        message = fitted[index]
        if message.role != "tool" or len(message.text) <= len(ELIDED):
            continue
        total -= estimate_tokens(message.text) - estimate_tokens(ELIDED)
        fitted[index] = message.model_copy(update={"text": ELIDED})
        if total <= budget_tokens:
            break
    return fitted


async def repository_layout(root: Path, environ: Mapping[str, str]) -> str:
    """A short map of the repository for the system prompt: its files, or when there
    are many, the top-level entries with their file counts and the first files."""
    try:
        paths = await list_paths(root, ".", None, environ)
    except OSError:
        return "Repository layout: unavailable."
    if len(paths) <= LAYOUT_MAX_PATHS:
        return f"Repository files ({len(paths)}):\n" + "\n".join(paths)
    counts: dict[str, int] = {}
    for path in paths:
        top = path.split("/", 1)[0] + ("/" if "/" in path else "")
        counts[top] = counts.get(top, 0) + 1
    top_level = "\n".join(
        f"{name} ({count} files)" if name.endswith("/") else name
        for name, count in sorted(counts.items())
    )
    return (
        f"Repository layout ({len(paths)} files). Top level:\n{top_level}\n"
        f"First {LAYOUT_MAX_PATHS} files:\n" + "\n".join(paths[:LAYOUT_MAX_PATHS])
    )


def _approver(context: AgentContext) -> Approver | None:
    """The context's way to ask the user, if it has one (contexts that cannot ask
    make "ask" policies refuse)."""
    approve: Approver | None = getattr(context, "request_approval", None)
    return approve


def _no_model_reason(name: str, settings: Settings) -> str:
    configured = ", ".join(sorted(settings.models)) or "none"
    return (
        f"the llm backend needs a model and no [models.{name}] is configured (configured: "
        f"{configured}); add one to ~/.config/forkyard/config.toml or .forkyard.toml, e.g. "
        f'[models.{name}] provider = "openai", base_url = "http://127.0.0.1:11434/v1", '
        f'model = "qwen2.5-coder:14b"'
    )


def _result_line(call: ToolCall, result: ToolResult) -> str:
    prefix = "error: " if result.is_error else ""
    return f"{call.name} -> {prefix}{_cut(_first_line(result.text), LOG_RESULT_CHARS)}"


def _first_line(text: str) -> str:
    return text.strip().split("\n", 1)[0]


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
