"""What the `acp` backend costs (server/forkyard/agents/acp.py): how soon a real ACP agent
is heard from after its dispatch, and what Forkyard's ACP client adds per update it
receives, compared with a bare client of the ACP SDK.

In one run, in process (a `FakeAgentContext`, no orchestrator or store), against the fake
model servers of the tests (real HTTP on 127.0.0.1, no network):

1. for each real ACP agent that tests/fakes/install_agents.sh installed in `.agents/`
   (claude-acp: @zed-industries/claude-agent-acp against the fake Anthropic Messages API;
   codex-acp: @zed-industries/codex-acp against the fake Responses API; gemini:
   @google/gemini-cli against the fake Gemini API; one that is not
   installed is skipped, saying so), `AcpBackend(name).run(context, "say hello")` with the
   model answering `Reply(text="hello")`, each run in a fresh repository, worktree and
   agent home (so a new session every time). Times from the dispatch (just before
   `run()` is called) to:
   - *first update at the client*: the first `session/update` notification from the
     agent entering Forkyard's `ForkyardAcpClient.session_update` (whatever its kind:
     e.g. claude's available_commands_update, codex's model-metadata warning);
   - *first content at the client*: the same for the first update of the agent's work
     (agent_message_chunk, agent_thought_chunk, tool_call, tool_call_update, plan);
   - *first update at the context*: the first `context.log` of kind assistant,
     reasoning, tool, plan or diff, or the first `context.progress` that is not
     Forkyard's own "starting PROGRAM" / "NAME is working": what a person watching
     the agent would first see of the agent itself. (`command`, `system` and `stderr`
     logs are Forkyard's or the program's noise, not updates, and do not count.)
     Message chunks are buffered into one log entry, so for a reply of text only this
     comes when the turn ends;
   - *end*: `run()` returned (the process is gone, the outcome built).
   Median, min and max over the runs (5; --quick 2), and the agent's package version.
2. the overhead of Forkyard's ACP client per update: the scripted agent
   (tests/fakes/acp_agent.py) sends N updates in one turn (agent_message_chunk,
   agent_thought_chunk, tool_call + tool_call_update, in turn), received (a) through
   `AcpBackend` (sandboxed, `PipeTransport`, `ForkyardAcpClient` logging into the
   context) and (b) by a bare client on the SDK alone (`acp.spawn_agent_process`,
   unsandboxed, a `session_update` that only counts). Measured from the first update
   entering `session_update` to the last one leaving it, so the sandbox's and the
   agent's start, initialize and session/new are excluded: wall time per update and
   the bench process's CPU time (all its threads; the agent is another process) per
   update, for both, and their difference. The difference is what Forkyard's side adds
   per update: its transport (line framing, garbage skipping), the client's handling
   (buffering chunks, flushing them into log entries, progress, tool titles) and the
   FakeAgentContext's list appends; not what a real context costs (the store, events
   to editors). The agent awaits each send, so when the client is the slower side the
   pipe fills and the agent waits for it (wall = CPU); when wall exceeds CPU the client
   waited for the agent, and the wall difference then also holds the agent's pace
   (sandboxed or not) and the machine's load: the CPU difference is the client's cost.
   The best and the median of 5 turns (--quick 2) of each, interleaved, after one
   untimed turn of each.

    uv run python bench/bench_acp.py [--runs 5] [--updates 2000] [--turns 5]
    uv run python bench/bench_acp.py --quick    # CI: 2 runs, 200 updates, 2 turns

Exits non-zero when a run fails, its outcome lacks the reply, an update is missing, or
no ACP agent is installed. Timing the client side patches `acp_session.ForkyardAcpClient`
with a subclass that only records when `session_update` starts and ends (restored after).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import anyio

# The fakes of the tests: the scripted agent, the fake model servers, the fake context.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from acp import PROTOCOL_VERSION, spawn_agent_process
from acp.interfaces import Client
from acp.schema import TextContentBlock
from tests.fakes.agent_context import (
    FAKE_API_KEY,
    FakeAgentContext,
    make_workspace,
    server_environ,
    settings_for,
)
from tests.fakes.gemini_server import FakeGeminiServer
from tests.fakes.model_server import FakeModelServer, Reply
from tests.fakes.responses_server import ResponsesModelServer

from forkyard.agents import acp_session
from forkyard.agents.acp import AcpBackend
from forkyard.agents.acp_client import ForkyardAcpClient
from forkyard.agents.base import AgentContext
from forkyard.agents.external_config import ExternalBackendConfig
from forkyard.agents.external_runtime import local_install_dirs
from forkyard.settings import SandboxSettings

FAKE_AGENT = Path(__file__).resolve().parents[1] / "tests" / "fakes" / "acp_agent.py"
#: Each real agent: its preset, its package (for the version), and its model's API.
AGENTS = {
    "claude-acp": ("@zed-industries/claude-agent-acp", "anthropic"),
    "codex-acp": ("@zed-industries/codex-acp", "responses"),
    "gemini": ("@google/gemini-cli", "gemini"),
}
#: Log kinds that carry what the agent itself reported.
AGENT_LOG_KINDS = frozenset({"assistant", "reasoning", "tool", "plan", "diff"})
#: Updates that carry the agent's work (not its commands list, usage or mode).
CONTENT_KINDS = frozenset(
    {"agent_message_chunk", "agent_thought_chunk", "tool_call", "tool_call_update", "plan"}
)
RUN_TIMEOUT = 180.0


class BenchFailure(Exception):
    """A run failed, or updates went missing."""


@dataclass
class Clock:
    """When updates entered and left a client's `session_update`, and the process's
    CPU time at those moments."""

    count: int = 0
    first_in: float | None = None
    first_cpu: float = 0.0
    last_out: float = 0.0
    last_cpu: float = 0.0
    first_kind: str = ""
    first_content: float | None = None

    def entered(self, update: Any) -> None:
        self.count += 1
        kind = str(getattr(update, "session_update", type(update).__name__))
        if self.first_in is None:
            self.first_in = time.monotonic()
            self.first_cpu = time.process_time()
            self.first_kind = kind
        if self.first_content is None and kind in CONTENT_KINDS:
            self.first_content = time.monotonic()

    def left(self) -> None:
        self.last_out = time.monotonic()
        self.last_cpu = time.process_time()


@dataclass
class TimedContext(FakeAgentContext):
    """A FakeAgentContext that also notes when the agent was first heard from."""

    clock: Clock = field(default_factory=Clock)
    first_report: float | None = None

    async def log(self, kind: str, text: str) -> None:
        if self.first_report is None and kind in AGENT_LOG_KINDS:
            self.first_report = time.monotonic()
        await super().log(kind, text)

    def progress(self, message: str, percentage: int | None = None) -> None:
        own = message.startswith("starting ") or message.endswith(" is working")
        if self.first_report is None and not own:
            self.first_report = time.monotonic()
        super().progress(message, percentage)


class TimedClient(ForkyardAcpClient):
    """Forkyard's client, its `session_update` timed into the context's clock."""

    async def session_update(self, session_id: str, update: Any, **kwargs: Any) -> None:
        clock = cast(TimedContext, self.context).clock
        clock.entered(update)
        await super().session_update(session_id, update, **kwargs)
        clock.left()


@contextlib.contextmanager
def timed_client() -> Iterator[None]:
    """`acp_session.Session` builds its client from its module's name for the class."""
    namespace = vars(acp_session)
    original = namespace["ForkyardAcpClient"]
    namespace["ForkyardAcpClient"] = TimedClient
    try:
        yield
    finally:
        namespace["ForkyardAcpClient"] = original


def as_agent_context(context: TimedContext) -> AgentContext:
    """The fake context as the backend's protocol (the fake may lag behind it)."""
    return cast(AgentContext, context)


class BareClient:
    """The least an SDK client does with an update: count it."""

    def __init__(self) -> None:
        self.clock = Clock()

    async def session_update(self, session_id: str, update: Any, **_: Any) -> None:
        self.clock.entered(update)
        self.clock.left()

    def on_connect(self, conn: Any) -> None:
        return None


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f}"


def spread(values: list[float]) -> str:
    return (
        f"median {ms(statistics.median(values))}  min {ms(min(values))}  max {ms(max(values))} ms"
    )


# -- 1. real agents: dispatch to first update, and to the end ---------------------------


def installed(name: str) -> tuple[Path, str] | None:
    """The folder of the agent's installation and its package version, if installed."""
    package, _api = AGENTS[name]
    for folder in local_install_dirs({}):
        manifest = folder / "node_modules" / package / "package.json"
        if manifest.is_file():
            return folder, str(json.loads(manifest.read_text())["version"])
    return None


@dataclass
class RunTimes:
    client: float
    content: float
    context: float
    end: float
    first_kind: str


async def real_run(name: str, base_url: str, root: Path) -> RunTimes:
    workspace = make_workspace(root)
    config = ExternalBackendConfig(base_url=base_url, model="fake-model")
    context = TimedContext(
        cwd=workspace.worktree,
        repo_root=workspace.repo,
        settings=settings_for(workspace.state_dir, **{name: config}),
        environ=server_environ(
            ANTHROPIC_API_KEY=FAKE_API_KEY,
            OPENAI_API_KEY=FAKE_API_KEY,
            GEMINI_API_KEY=FAKE_API_KEY,
            # Claude Code retries a failing API with backoff; a failure should show at once.
            CLAUDE_CODE_MAX_RETRIES="0",
        ),
    )
    with anyio.fail_after(RUN_TIMEOUT), timed_client():
        start = time.monotonic()
        outcome = await AcpBackend(name).run(as_agent_context(context), "say hello")
        end = time.monotonic()
    if not outcome.ok or "hello" not in outcome.summary:
        tail = "\n".join(f"  {kind}: {text}" for kind, text in context.logs[-8:])
        raise BenchFailure(f"{name}: {outcome!r}\n{tail}")
    clock = context.clock
    if clock.first_in is None or clock.first_content is None or context.first_report is None:
        raise BenchFailure(f"{name}: no update reached the client or the context")
    return RunTimes(
        client=clock.first_in - start,
        content=clock.first_content - start,
        context=context.first_report - start,
        end=end - start,
        first_kind=clock.first_kind,
    )


async def bench_real_agents(runs: int, root: Path) -> list[str]:
    """Part 1; returns the names of the agents measured."""
    print(f"1. dispatch -> first update -> end, 'say hello' (Reply 'hello'), {runs} runs each")
    measured = []
    for name, (package, api) in AGENTS.items():
        found = installed(name)
        if found is None:
            print(
                f"  {name}: not installed ({package}; bash tests/fakes/install_agents.sh), skipped"
            )
            continue
        folder, version = found
        if api == "gemini":
            with FakeGeminiServer() as gemini:
                times = []
                for n in range(runs):
                    gemini.script(Reply(text="hello"))
                    times.append(await real_run(name, gemini.url, root / f"{name}-{n}"))
        else:
            server: FakeModelServer = (
                FakeModelServer(default=Reply(text="hello"))
                if api == "anthropic"
                else ResponsesModelServer(default=Reply(text="hello"))
            )
            with server:
                base_url = (
                    server.anthropic_base_url if api == "anthropic" else server.openai_base_url
                )
                times = [await real_run(name, base_url, root / f"{name}-{n}") for n in range(runs)]
        kinds = sorted({t.first_kind for t in times})
        print(f"  {name} ({package} {version}, in {folder}):")
        print(f"    first update at the client   {spread([t.client for t in times])}")
        print(f"      (its kind: {', '.join(kinds)})")
        print(f"    first content at the client  {spread([t.content for t in times])}")
        print(f"    first update at the context  {spread([t.context for t in times])}")
        print(f"    run end                      {spread([t.end for t in times])}")
        measured.append(name)
    return measured


# -- 2. Forkyard's client against a bare SDK client, per update ------------------------


def write_script(path: Path, updates: int) -> int:
    """A one-turn script of about `updates` updates; returns their exact number."""
    steps: list[dict[str, Any]] = []
    count = 0
    n = 0
    while count < updates:
        n += 1
        steps.append({"type": "message", "text": f"message {n} ", "chunks": 1})
        steps.append({"type": "thought", "text": f"thinking {n}", "chunks": 1})
        steps.append({"type": "tool_call", "id": f"t{n}", "title": f"Read file{n}.py"})
        count += 4  # a tool_call is a tool_call and a tool_call_update
    path.write_text(json.dumps({"capabilities": {"loadSession": False}, "prompts": [steps]}))
    return count


@dataclass
class Turn:
    wall: float
    cpu: float
    count: int


def turn_of(clock: Clock, expected: int, label: str) -> Turn:
    if clock.count != expected or clock.first_in is None:
        raise BenchFailure(f"{label}: {clock.count} updates arrived, {expected} were sent")
    return Turn(clock.last_out - clock.first_in, clock.last_cpu - clock.first_cpu, clock.count)


async def forkyard_turn(script: Path, expected: int, root: Path) -> Turn:
    workspace = make_workspace(root)
    config = ExternalBackendConfig(acp=[sys.executable, str(FAKE_AGENT), str(script)])
    settings = settings_for(workspace.state_dir, fake=config).model_copy(
        update={"sandbox": SandboxSettings(read_paths=[str(FAKE_AGENT.parent), str(script.parent)])}
    )
    context = TimedContext(
        cwd=workspace.worktree,
        repo_root=workspace.repo,
        settings=settings,
        environ=server_environ(),
    )
    with anyio.fail_after(RUN_TIMEOUT), timed_client():
        outcome = await AcpBackend("fake").run(as_agent_context(context), "Go")
    if not outcome.ok:
        raise BenchFailure(f"the scripted agent through AcpBackend: {outcome!r}")
    return turn_of(context.clock, expected, "AcpBackend")


async def bare_turn(script: Path, expected: int, cwd: Path) -> Turn:
    client = BareClient()
    with anyio.fail_after(RUN_TIMEOUT):
        async with spawn_agent_process(
            cast(Client, client), sys.executable, str(FAKE_AGENT), str(script), cwd=cwd
        ) as (connection, _process):
            await connection.initialize(protocol_version=PROTOCOL_VERSION)
            session = await connection.new_session(cwd=str(cwd), mcp_servers=[])
            response = await connection.prompt(
                session_id=session.session_id, prompt=[TextContentBlock(type="text", text="Go")]
            )
    if response.stop_reason != "end_turn":
        raise BenchFailure(f"the scripted agent through the SDK stopped: {response.stop_reason}")
    return turn_of(client.clock, expected, "bare SDK client")


def per_update(turns: list[Turn]) -> tuple[float, float, float, float]:
    """Microseconds per update, wall and CPU: the best turn's, then the median turn's
    (wall and CPU each on its own)."""
    walls = [turn.wall / turn.count * 1e6 for turn in turns]
    cpus = [turn.cpu / turn.count * 1e6 for turn in turns]
    return min(walls), min(cpus), statistics.median(walls), statistics.median(cpus)


async def bench_client_overhead(updates: int, turns: int, root: Path) -> None:
    script = root / "script.json"
    expected = write_script(script, updates)
    print(
        f"2. {expected} updates in one turn (message, thought, tool_call + update), "
        f"{turns} turns each"
    )
    # One turn of each first, untimed: the first use of a path pays for lazy imports and
    # warm-ups (the SDK's first subprocess turn was 2-3 times slower than the next).
    await forkyard_turn(script, expected, root / "warm-up")
    await bare_turn(script, expected, root)
    ours: list[Turn] = []
    bare: list[Turn] = []
    for n in range(turns):
        # Interleaved, the order alternating, so that machine noise hits both alike.
        if n % 2:
            bare.append(await bare_turn(script, expected, root))
        ours.append(await forkyard_turn(script, expected, root / f"ours-{n}"))
        if not n % 2:
            bare.append(await bare_turn(script, expected, root))
    rows = [
        ("AcpBackend (sandboxed, ForkyardAcpClient)", per_update(ours)),
        ("bare SDK client (unsandboxed, no-op)", per_update(bare)),
    ]
    for label, (wall, cpu, wall_median, cpu_median) in rows:
        print(
            f"  {label:42} {wall:6.1f} us/update wall, {cpu:6.1f} us/update CPU "
            f"(best; median {wall_median:.1f} / {cpu_median:.1f})"
        )
    (ours_wall, ours_cpu, *_), (bare_wall, bare_cpu, *_) = (row for _, row in rows)
    print(
        f"  {'Forkyard adds (best - best)':42} {ours_wall - bare_wall:+6.1f} us/update wall, "
        f"{ours_cpu - bare_cpu:+6.1f} us/update CPU"
    )
    walls = ", ".join(
        f"{a.wall * 1000:.0f}/{b.wall * 1000:.0f}" for a, b in zip(ours, bare, strict=True)
    )
    print(f"  (each turn's wall time, ours/bare: {walls} ms)")


async def main_async(args: argparse.Namespace) -> int:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fy-acp-bench-") as directory:
        root = Path(directory)
        measured = await bench_real_agents(args.runs, root / "real")
        (root / "overhead").mkdir()
        await bench_client_overhead(args.updates, args.turns, root / "overhead")
    print(f"total {time.monotonic() - started:.1f} s")
    if not measured:
        print("no real ACP agent is installed: run bash tests/fakes/install_agents.sh")
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5, help="runs per real agent")
    parser.add_argument("--updates", type=int, default=2000, help="updates in the scripted turn")
    parser.add_argument("--turns", type=int, default=5, help="scripted turns per client")
    parser.add_argument("--quick", action="store_true", help="2 runs, 200 updates, 2 turns")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.updates, args.turns = 2, 200, 2
    try:
        return anyio.run(main_async, args)
    except BenchFailure as failure:
        print(f"FAILED: {failure}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
