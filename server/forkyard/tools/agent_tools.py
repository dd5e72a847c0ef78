"""The tools of the built-in agent loop (PROTOCOL.md, "Tools of the built-in agent loop"),
and the server-side enforcement of roles and per-tool policy around them.

Nothing here trusts the model: a tool its role lacks is refused even when the model
calls it by name; arguments are validated against a pydantic model per tool; paths are
confined to the agent's root; explorers never write, whatever their configuration says.
Every call returns text for the model (errors included) and never raises for bad input,
so a confused model gets a chance to correct itself instead of crashing the agent.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import anyio.to_thread
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from forkyard.models.types import ToolSpec
from forkyard.settings import WRITE_TOOLS, RoleConfig, Settings
from forkyard.tools import file_tools
from forkyard.tools.command_tool import SandboxProbe, run_command
from forkyard.tools.confine import PathRefused
from forkyard.tools.sandbox import probe_sandbox
from forkyard.tools.search import (
    SearchResult,
    list_paths,
    ripgrep_path,
    search_with_python,
    search_with_ripgrep,
)
from forkyard.tools.truncate import truncate_output

ApprovalAnswer = Literal["allow_once", "allow_for_agent", "deny"]
#: `AgentContext.request_approval`: asks the user whether `tool` may run on `detail`.
Approver = Callable[[str, str], Awaitable[ApprovalAnswer]]

FINISH = "finish"


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ListFilesArgs(_Args):
    path: str = "."
    glob: str | None = None


class ReadFileArgs(_Args):
    path: str
    start_line: int | None = Field(default=None, ge=1)
    end_line: int | None = Field(default=None, ge=1)


class SearchArgs(_Args):
    pattern: str = Field(min_length=1)
    path: str = "."
    glob: str | None = None


class WriteFileArgs(_Args):
    path: str
    content: str


class EditFileArgs(_Args):
    path: str
    old_text: str
    new_text: str


class DeleteFileArgs(_Args):
    path: str


class RunCommandArgs(_Args):
    command: str = Field(min_length=1)
    timeout_seconds: float | None = Field(default=None, gt=0)


class FinishArgs(_Args):
    summary: str


ARGUMENT_MODELS: dict[str, type[_Args]] = {
    "list_files": ListFilesArgs,
    "read_file": ReadFileArgs,
    "search": SearchArgs,
    "write_file": WriteFileArgs,
    "edit_file": EditFileArgs,
    "delete_file": DeleteFileArgs,
    "run_command": RunCommandArgs,
    FINISH: FinishArgs,
}
#: Every tool the loop knows, in the order they are offered.
TOOL_NAMES: tuple[str, ...] = tuple(ARGUMENT_MODELS)


def _schema(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


_PATH = {"type": "string", "description": "Path relative to the working directory."}
_GLOB = {"type": "string", "description": "Only files matching this glob, e.g. '*.py'."}

TOOL_SPECS: dict[str, ToolSpec] = {
    spec.name: spec
    for spec in [
        ToolSpec(
            name="list_files",
            description="List the files under a directory, recursively, without the files "
            "git ignores.",
            parameters=_schema(
                {"path": {**_PATH, "description": "Directory; default '.'."}, "glob": _GLOB},
                [],
            ),
        ),
        ToolSpec(
            name="read_file",
            description="Read a text file, whole or lines start_line..end_line (1-based, "
            "inclusive).",
            parameters=_schema(
                {
                    "path": _PATH,
                    "start_line": {"type": "integer", "minimum": 1},
                    "end_line": {"type": "integer", "minimum": 1},
                },
                ["path"],
            ),
        ),
        ToolSpec(
            name="search",
            description="Search file contents for a regular expression; prints "
            "path:line:text for each matching line.",
            parameters=_schema(
                {
                    "pattern": {"type": "string", "description": "A regular expression."},
                    "path": {**_PATH, "description": "Directory or file; default '.'."},
                    "glob": _GLOB,
                },
                ["pattern"],
            ),
        ),
        ToolSpec(
            name="write_file",
            description="Create a file or replace its whole content.",
            parameters=_schema({"path": _PATH, "content": {"type": "string"}}, ["path", "content"]),
        ),
        ToolSpec(
            name="edit_file",
            description="Replace old_text with new_text in a file. old_text must occur "
            "exactly once: copy it exactly and include enough surrounding lines.",
            parameters=_schema(
                {"path": _PATH, "old_text": {"type": "string"}, "new_text": {"type": "string"}},
                ["path", "old_text", "new_text"],
            ),
        ),
        ToolSpec(
            name="delete_file",
            description="Delete one file.",
            parameters=_schema({"path": _PATH}, ["path"]),
        ),
        ToolSpec(
            name="run_command",
            description="Run a shell command in the working directory, sandboxed: no "
            "network, only the working directory is writable. Returns its output and "
            "exit status.",
            parameters=_schema(
                {
                    "command": {"type": "string", "description": "A /bin/sh command line."},
                    "timeout_seconds": {"type": "number", "exclusiveMinimum": 0},
                },
                ["command"],
            ),
        ),
        ToolSpec(
            name=FINISH,
            description="End your work: summarize what you did or found, for the user.",
            parameters=_schema({"summary": {"type": "string"}}, ["summary"]),
        ),
    ]
}


@dataclass(frozen=True)
class ToolResult:
    """What a tool call gives back to the model."""

    text: str
    is_error: bool = False
    #: Set by `finish`: the run is over, with this summary.
    finish_summary: str | None = None


def permitted_tools(role: RoleConfig, writable: bool) -> tuple[str, ...]:
    """The tools an agent may call: its role's known tools, without any writing tool
    when it may not write (explorers), plus `finish` always."""
    return tuple(
        name
        for name in TOOL_NAMES
        if name == FINISH or (name in role.tools and (writable or name not in WRITE_TOOLS))
    )


async def _deny_without_approver(_tool: str, _detail: str) -> ApprovalAnswer:
    """For contexts that cannot ask the user: "ask" then means no."""
    return "deny"


class ToolBox:
    """The tools of one agent: what it is offered, and every call it makes.

    `remembered` holds the tools the user allowed "for this agent"; pass the same set to
    every run of one agent so that the answer outlives a follow-up."""

    def __init__(
        self,
        *,
        root: Path,
        repo_root: Path,
        writable: bool,
        role: RoleConfig,
        settings: Settings,
        environ: Mapping[str, str],
        approve: Approver | None = None,
        remembered: set[str] | None = None,
        ripgrep: str | Literal["auto"] | None = "auto",
        sandbox_probe: SandboxProbe = probe_sandbox,
    ) -> None:
        """`ripgrep`: path of `rg`; "auto" finds it on PATH; None searches in Python."""
        self.root = root
        self.repo_root = repo_root
        self.writable = writable
        self.role = role
        self.settings = settings
        self.environ = environ
        self.permitted = permitted_tools(role, writable)
        self._approve = approve or _deny_without_approver
        self.remembered = remembered if remembered is not None else set()
        self._ripgrep = ripgrep_path() if ripgrep == "auto" else ripgrep
        self._sandbox_probe = sandbox_probe

    @property
    def max_chars(self) -> int:
        return self.settings.agent.max_tool_output_chars

    def specs(self) -> list[ToolSpec]:
        """The tools offered to the model: the permitted ones, less those the role's
        policy denies outright (offering a tool that is always refused wastes steps)."""
        return [
            TOOL_SPECS[name]
            for name in self.permitted
            if name == FINISH or self.role.policy.get(name) != "deny"
        ]

    async def call(self, name: str, arguments: str) -> ToolResult:
        """Run one tool call as the model made it (`arguments`: raw JSON text)."""
        allowed = ", ".join(spec.name for spec in self.specs())
        if name not in ARGUMENT_MODELS:
            return ToolResult(f"unknown tool {name!r}; the tools are: {allowed}", is_error=True)
        if name not in self.permitted:
            why = " (this agent may not write)" if name in WRITE_TOOLS else ""
            return ToolResult(
                f"tool {name!r} is not allowed for this agent's role{why}; allowed tools: "
                f"{allowed}",
                is_error=True,
            )
        if name != FINISH and self.role.policy.get(name) == "deny":
            return ToolResult(f"{name} is refused: the role's policy denies it", is_error=True)
        parsed = _parse_arguments(name, arguments)
        if isinstance(parsed, str):
            return ToolResult(parsed, is_error=True)
        if name != FINISH and self.role.policy.get(name) == "ask":
            refusal = await self._ask(name, _approval_detail(parsed))
            if refusal is not None:
                return ToolResult(refusal, is_error=True)
        try:
            result = await self._run(parsed)
        except (PathRefused, file_tools.ToolFailure) as error:
            return ToolResult(str(error), is_error=True)
        except UnicodeDecodeError:
            return ToolResult("the file is not UTF-8 text", is_error=True)
        except OSError as error:
            return ToolResult(f"{name} failed: {error.strerror or error}", is_error=True)
        except (RuntimeError, ValueError) as error:
            # What the standard library raises for paths it cannot take (pathlib's
            # "Symlink loop", an embedded NUL): the tree is hostile, not the server
            # broken, and the model can still choose another path.
            return ToolResult(f"{name} failed: {error}", is_error=True)
        return ToolResult(
            truncate_output(result.text, self.max_chars), result.is_error, result.finish_summary
        )

    async def permission(self, name: str, detail: str) -> str | None:
        """Why the role refuses `name` on `detail` (a path, a command), else None;
        asks the person where its policy says "ask". For agents that run their own
        tools (ACP) and ask us first."""
        if name not in self.permitted:
            why = " (this agent may not write)" if name in WRITE_TOOLS else ""
            return f"{name} is not allowed for this agent's role{why}"
        if self.role.policy.get(name) == "deny":
            return f"{name} is refused: the role's policy denies it"
        if self.role.policy.get(name) == "ask":
            return await self._ask(name, detail)
        return None

    async def _ask(self, name: str, detail: str) -> str | None:
        """None when the call may go ahead, else the refusal for the model."""
        if name in self.remembered:
            return None
        answer = await self._approve(name, detail)
        if answer == "allow_for_agent":
            self.remembered.add(name)
            return None
        if answer == "allow_once":
            return None
        return f"{name} was denied by the user; do not retry it, find another way or finish"

    async def _run(self, args: _Args) -> ToolResult:
        root = self.root
        match args:
            case ListFilesArgs():
                return await self._list_files(args)
            case ReadFileArgs():
                text = await anyio.to_thread.run_sync(
                    file_tools.read_file,
                    root,
                    args.path,
                    args.start_line,
                    args.end_line,
                    self.max_chars,
                )
                return ToolResult(text)
            case SearchArgs():
                return await self._search(args)
            case WriteFileArgs():
                self._check_writable()
                text = await anyio.to_thread.run_sync(
                    file_tools.write_file, root, args.path, args.content
                )
                return ToolResult(text)
            case EditFileArgs():
                self._check_writable()
                text = await anyio.to_thread.run_sync(
                    file_tools.edit_file, root, args.path, args.old_text, args.new_text
                )
                return ToolResult(text)
            case DeleteFileArgs():
                self._check_writable()
                text = await anyio.to_thread.run_sync(file_tools.delete_file, root, args.path)
                return ToolResult(text)
            case RunCommandArgs():
                self._check_writable()
                limit = self.settings.command_timeout_seconds
                text, failed = await run_command(
                    args.command,
                    root=root,
                    repo_root=self.repo_root,
                    writable=self.writable,
                    environ=self.environ,
                    timeout_seconds=min(args.timeout_seconds or limit, limit),
                    allow_unsandboxed=self.settings.allow_unsandboxed_commands,
                    probe=self._sandbox_probe,
                    max_chars=self.max_chars,
                    settings=self.settings,
                )
                return ToolResult(text, is_error=failed)
            case FinishArgs():
                return ToolResult("finished", finish_summary=args.summary)
        raise AssertionError(f"no implementation for {type(args).__name__}")

    def _check_writable(self) -> None:
        # `permitted` already keeps writing tools from explorers; this is the backstop.
        if not self.writable:
            raise file_tools.ToolFailure("this agent may not write")

    async def _list_files(self, args: ListFilesArgs) -> ToolResult:
        relative = await self._existing(args.path)
        paths = await list_paths(self.root, relative, args.glob, self.environ)
        if not paths:
            where = f"{args.path}" + (f" matching {args.glob!r}" if args.glob else "")
            return ToolResult(f"no files under {where}")
        return ToolResult(_bounded_listing(paths, self.max_chars))

    async def _search(self, args: SearchArgs) -> ToolResult:
        relative = await self._existing(args.path)
        limit = self.max_chars - 200
        found: SearchResult | str
        if self._ripgrep:
            found = await search_with_ripgrep(
                self._ripgrep, self.root, args.pattern, relative, args.glob, limit
            )
        else:
            found = await search_with_python(
                self.root, args.pattern, relative, args.glob, limit, self.environ
            )
        if isinstance(found, str):
            return ToolResult(found, is_error=True)
        if not found.lines:
            return ToolResult(f"no matches for {args.pattern!r} in {args.path}")
        text = "\n".join(found.lines)
        if found.truncated:
            text += "\n[... more matches not shown; narrow the search with path or glob ...]"
        return ToolResult(text)

    async def _existing(self, path: str) -> str:
        """An existing confined path as git and ripgrep want it: relative to the root."""
        return await anyio.to_thread.run_sync(file_tools.existing_relative, self.root, path)


def _parse_arguments(name: str, arguments: str) -> _Args | str:
    """The validated arguments, or an error message the model can act on."""
    try:
        raw = json.loads(arguments) if arguments.strip() else {}
    except ValueError as error:
        return (
            f"the arguments of {name} are not valid JSON ({error}); send one JSON object, "
            f"e.g. {_example(name)}"
        )
    if not isinstance(raw, dict):
        return f"the arguments of {name} must be a JSON object, e.g. {_example(name)}"
    try:
        return ARGUMENT_MODELS[name].model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in problem['loc']) or '(arguments)'}: "
            f"{_problem_text(problem)}"
            for problem in error.errors()
        )
        return f"invalid arguments for {name}: {problems}; expected e.g. {_example(name)}"


def _problem_text(problem: Any) -> str:
    if problem["type"] == "extra_forbidden":
        return "unknown argument"
    if problem["type"] == "missing":
        return "required"
    return str(problem["msg"])


def _example(name: str) -> str:
    spec = TOOL_SPECS[name]
    properties: dict[str, Any] = spec.parameters["properties"]
    example = {key: f"<{value.get('type', 'value')}>" for key, value in properties.items()}
    return json.dumps(example)


def _approval_detail(args: _Args) -> str:
    """What the user is asked about: the exact command, else the path (or pattern)."""
    if isinstance(args, RunCommandArgs):
        return args.command
    if isinstance(args, SearchArgs):
        return f"{args.pattern} in {args.path}"
    return str(getattr(args, "path", ""))


def _bounded_listing(paths: list[str], max_chars: int) -> str:
    """As many paths as fit, then how many were left out."""
    shown: list[str] = []
    size = 0
    budget = max_chars - 120
    for path in paths:
        if size + len(path) + 1 > budget:
            break
        shown.append(path)
        size += len(path) + 1
    text = "\n".join(shown)
    if len(shown) < len(paths):
        text += (
            f"\n[... {len(paths) - len(shown)} more of {len(paths)} files not shown; "
            f"narrow with path or glob ...]"
        )
    return text


def short_argument(name: str, arguments: str, width: int = 60) -> str:
    """The call's main argument, for progress lines: a path, pattern or command."""
    try:
        raw = json.loads(arguments)
    except ValueError:
        raw = None
    value: object = arguments
    if isinstance(raw, dict):
        key = {"run_command": "command", "search": "pattern", FINISH: "summary"}.get(name, "path")
        value = raw.get(key, "")
    text = " ".join(str(value).split())
    return text if len(text) <= width else text[: width - 1] + "…"
