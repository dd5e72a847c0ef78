"""Per-step overhead of the built-in agent loop, the model excluded; and the cost of the
sandbox for one command.

The loop runs against an in-process model that answers instantly with a fixed cycle of
tool calls (read_file, search, list_files, edit_file, write_file, run_command `true`) on
a generated git repository. The model records when each request starts and when its
answer is complete; Forkyard's time for a step is from one answer to the next request:
running the tool, logging, progress, bookkeeping. The first request's wait (system
prompt with the repository layout) is reported on its own. Then `true` is run 50 times
sandboxed (bwrap) and 50 times unsandboxed through the same process runner.

    uv run python bench/bench_agent_step.py [--files 2000] [--steps 240] [--runs 50]
    uv run python bench/bench_agent_step.py --quick   # CI: small sizes, seconds

Any failure (a tool error, a run that does not finish, a failing command) exits non-zero.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections import defaultdict
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from forkyard.agents.base import AgentContext, ApprovalAnswer
from forkyard.agents.budget import Budget
from forkyard.agents.llm import LlmBackend
from forkyard.models import ChatMessage, Completion, ModelConfig, ToolCall, ToolSpec
from forkyard.models.pricing import add_usage
from forkyard.models.types import StreamEvent
from forkyard.settings import BUILTIN_ROLES, AgentLimits, RoleConfig, Settings
from forkyard.tools.process import run_streaming
from forkyard.tools.sandbox import (
    SandboxPolicy,
    probe_sandbox,
    sandboxed_argv,
    scrubbed_env,
    unsandboxed_argv,
)
from forkyard_protocol import Usage

GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@forkyard.invalid",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@forkyard.invalid",
}


def make_repo(root: Path, files: int) -> None:
    root.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=root, check=True, env=GIT_ENV)
    body = "def function_{n}(value):\n    return value * {n}\n\n" * 20
    for index in range(files):
        directory = root / f"pkg{index // 200:03d}"
        directory.mkdir(exist_ok=True)
        (directory / f"module_{index:05d}.py").write_text(body.format(n=index))
    (root / "target.py").write_text("counter = 0\n")
    subprocess.run(["git", "add", "-A"], cwd=root, check=True, env=GIT_ENV)
    subprocess.run(["git", "commit", "-q", "-m", "bench"], cwd=root, check=True, env=GIT_ENV)


def tool_cycle() -> itertools.cycle[tuple[str, dict[str, object]]]:
    """What the instant model asks for, round and round; edit_file flips a line back and
    forth so that it always finds its old_text exactly once."""
    return itertools.cycle(
        [
            ("read_file", {"path": "pkg000/module_00001.py"}),
            ("search", {"pattern": r"def function_1\d\(", "path": "pkg000"}),
            ("list_files", {"path": "pkg001", "glob": "*.py"}),
            (
                "edit_file",
                {"path": "target.py", "old_text": "counter = 0", "new_text": "counter = 1"},
            ),
            (
                "edit_file",
                {"path": "target.py", "old_text": "counter = 1", "new_text": "counter = 0"},
            ),
            ("write_file", {"path": "scratch/notes.txt", "content": "bench notes\n" * 50}),
            ("run_command", {"command": "true"}),
        ]
    )


@dataclass
class InstantModel:
    """A `ChatModel` that answers at once, recording when it was asked and answered."""

    steps: int
    calls: itertools.cycle[tuple[str, dict[str, object]]] = field(default_factory=tool_cycle)
    asked_at: list[float] = field(default_factory=list)
    answered_at: list[float] = field(default_factory=list)
    tools_called: list[str] = field(default_factory=list)

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[ToolSpec] = (),
        *,
        system: str | None = None,
    ) -> AsyncGenerator[StreamEvent, None]:
        self.asked_at.append(time.perf_counter())
        if len(self.asked_at) > self.steps:
            completion = Completion(text="done")
        else:
            name, arguments = next(self.calls)
            self.tools_called.append(name)
            call = ToolCall(
                id=f"call_{len(self.asked_at)}", name=name, arguments=json.dumps(arguments)
            )
            completion = Completion(text="", tool_calls=(call,), stop_reason="tool_calls")
        self.answered_at.append(time.perf_counter())
        yield completion

    async def aclose(self) -> None:
        pass


@dataclass
class BenchContext:
    """The orchestrator's side of `AgentContext`, minus the orchestrator. Checked against
    the Protocol where it is made (`as_agent_context`), so that a field the context
    grows is a type error here, not an AttributeError in the middle of a run."""

    cwd: Path
    repo_root: Path
    settings: Settings
    role: RoleConfig = field(default_factory=lambda: BUILTIN_ROLES["worker"])
    role_name: str = "worker"
    agent_number: int = 1
    environ: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    extra_env: Mapping[str, str] = field(default_factory=dict)
    log_entries: int = 0
    tool_errors: list[str] = field(default_factory=list)
    usage: Usage | None = None

    @property
    def writable(self) -> bool:
        return True

    async def log(self, kind: str, text: str) -> None:
        self.log_entries += 1
        if kind == "tool_result" and " -> error: " in text:
            self.tool_errors.append(text)

    async def request_approval(self, tool: str, detail: str) -> ApprovalAnswer:
        return "allow_once"

    def progress(self, message: str, percentage: int | None = None) -> None:
        pass

    def add_usage(self, usage: Usage) -> None:
        self.usage = add_usage(self.usage, usage)

    def spent(self) -> Usage | None:
        return self.usage

    def budget(self) -> Budget:
        return Budget()

    def take_followups(self) -> list[str]:
        return []


def as_agent_context(context: BenchContext) -> AgentContext:
    return context


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def describe(name: str, seconds: list[float]) -> str:
    ms = [s * 1000 for s in seconds]
    return (
        f"{name:<36} median {statistics.median(ms):8.2f} ms   p95 {percentile(ms, 0.95):8.2f} ms"
        f"   (n={len(ms)})"
    )


async def bench_loop(repo: Path, steps: int) -> None:
    model = InstantModel(steps)
    settings = Settings(
        models={"default": ModelConfig(model="instant")},
        agent=AgentLimits(max_steps=steps + 10, max_tokens=10**12),
    )
    backend = LlmBackend(model_factory=lambda _config, _environ: model)
    context = BenchContext(cwd=repo, repo_root=repo, settings=settings)
    started = time.perf_counter()
    outcome = await backend.run(as_agent_context(context), "Benchmark the loop.")
    total = time.perf_counter() - started
    await backend.aclose()
    if not outcome.ok:
        raise SystemExit(f"the agent loop failed: {outcome.error}")
    if context.tool_errors:
        raise SystemExit("tool calls failed: " + "; ".join(context.tool_errors[:5]))
    if len(model.tools_called) != steps:
        raise SystemExit(f"the loop made {len(model.tools_called)} tool calls, not {steps}")
    model_time = sum(a - b for a, b in zip(model.answered_at, model.asked_at, strict=True))
    setup = model.asked_at[0] - started
    per_step = [
        model.asked_at[index + 1] - model.answered_at[index]
        for index in range(len(model.answered_at) - 1)
    ]
    by_tool: dict[str, list[float]] = defaultdict(list)
    for name, seconds in zip(model.tools_called, per_step, strict=False):
        by_tool[name].append(seconds)
    print(
        f"loop: {steps} steps in {total * 1000:.0f} ms, {model_time * 1000:.1f} ms of it in "
        f"model.stream; {context.log_entries} log entries"
    )
    print(
        f"{'run start -> first model request':<36} {setup * 1000:8.2f} ms (system prompt, layout)"
    )
    print(describe("per step in Forkyard (all tools)", per_step))
    without_commands = [
        s for name, s in zip(model.tools_called, per_step, strict=False) if name != "run_command"
    ]
    print(describe("per step in Forkyard (no run_command)", without_commands))
    for name in sorted(by_tool):
        print(describe(f"  {name}", by_tool[name]))


async def bench_sandbox(repo: Path, runs: int) -> None:
    status = await probe_sandbox()
    policy = SandboxPolicy(writable=[repo], readable=[repo / ".git"])
    env = scrubbed_env(os.environ, policy)

    async def timed(argv: list[str]) -> float:
        started = time.perf_counter()
        result = await run_streaming(
            argv, cwd=repo, env=env, on_output=lambda _s, _l: None, timeout=30
        )
        if result.returncode != 0:
            raise SystemExit(f"{argv} failed: {result}")
        return time.perf_counter() - started

    plain = [await timed(unsandboxed_argv("true")) for _ in range(runs)]
    print(describe("`true` unsandboxed", plain))
    if not status.available:
        print(f"`true` sandboxed: unavailable ({status.reason})")
        return
    sandboxed = [await timed(sandboxed_argv("true", policy, cwd=repo)) for _ in range(runs)]
    print(describe("`true` sandboxed (bwrap)", sandboxed))
    overhead = statistics.median(sandboxed) - statistics.median(plain)
    print(f"{'sandbox overhead (median)':<36} {overhead * 1000:8.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=2_000)
    parser.add_argument("--steps", type=int, default=240)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument(
        "--quick", action="store_true", help="400 files, 28 steps, 10 runs: for CI, seconds"
    )
    args = parser.parse_args()
    if args.quick:
        args.files, args.steps, args.runs = 400, 28, 10
    work = Path(tempfile.mkdtemp(prefix="forkyard-bench-step-"))
    try:
        repo = work / "repo"
        make_repo(repo, args.files)
        print(f"repository: {args.files} files")
        anyio.run(bench_loop, repo, args.steps)
        anyio.run(bench_sandbox, repo, args.runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
