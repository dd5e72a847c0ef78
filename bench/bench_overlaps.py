"""Review across agents: what overlaps and apply-in-order cost.

1. Overlaps when the 32nd agent finishes on the 5,000-line file of bench_review.py (every
   agent changes it, 33 hunks each): through a real front and daemon, from the last
   agent's `done` to its overlaps announced; and the comparison alone (the worker
   thread's part), against 31 agents on its base and against 31 on other bases (each
   base a few lines longer at the top, so every span is carried over).
2. `forkyard/agent/applyAll` of 10 agents on 100 files each (10 disjoint lines of every
   file), against a client that answers `workspace/applyEdit` on disk.

    uv run python bench/bench_overlaps.py [--agents 32] [--apply-agents 10] [--files 100]
    uv run python bench/bench_overlaps.py --quick   # CI: 4 agents, 3 applied on 10 files
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from lsprotocol import types
from pygls.uris import to_fs_path

from forkyard.client import ForkyardClient
from forkyard.daemon.control import stop_and_wait
from forkyard.workspace.overlaps import AgentSpans, overlaps_with
from forkyard_protocol.models import FileChange, Hunk

LINES = 5_000
STEP = 150
SMALL_LINES = 40
GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@forkyard.invalid",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@forkyard.invalid",
}


def make_repo(root: Path, files: int) -> str:
    root.mkdir(parents=True)
    big = "".join(f"value_{i} = compute({i})  # line {i}\n" for i in range(LINES))
    (root / "big.py").write_text(big)
    (root / "pkg").mkdir()
    for index in range(files):
        text = "".join(f"v{n} = {index * 100 + n}\n" for n in range(SMALL_LINES))
        (root / "pkg" / f"m{index:03d}.py").write_text(text)
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "bench"]):
        subprocess.run(["git", *args], cwd=root, check=True, env=GIT_ENV)
    return big


# --- the comparison alone ------------------------------------------------------------------


def agent_spans(k: int, base: str, shift: int = 0) -> AgentSpans:
    hunks = [
        Hunk(
            id=f"h{k}-{step}",
            old_start=1 + k + STEP * step + shift,
            old_lines=1,
            new_start=1 + k + STEP * step + shift,
            new_lines=1,
            header="",
            text="",
        )
        for step in range(LINES // STEP)
    ]
    change = FileChange(path="big.py", uri="file:///big.py", status="modified", hunks=hunks)
    return AgentSpans.of(f"agent-{k}", base, [change])


def time_comparison(agents: int, big: str, rounds: int) -> None:
    last = agent_spans(agents - 1, "base")
    same = [agent_spans(k, "base") for k in range(agents - 1)]
    # Other bases: base k has k*3 lines more at the top, and its spans sit that far down.
    texts: dict[tuple[str, str], str | None] = {("base", "big.py"): big}
    other = []
    for k in range(agents - 1):
        extra = "".join(f"# the person's line {n}\n" for n in range(3 * (k + 1)))
        texts[(f"base-{k}", "big.py")] = extra + big
        other.append(agent_spans(k, f"base-{k}", shift=3 * (k + 1)))
    for name, others in (("the same base", same), ("31 other bases", other)):
        timings = []
        found: dict[str, list[str]] = {}
        for _ in range(rounds):
            started = time.perf_counter()
            found = overlaps_with(last, others, texts)  # a fresh map cache each time
            timings.append((time.perf_counter() - started) * 1000)
        label = name if agents == 32 else name.replace("31", str(agents - 1))
        print(
            f"overlaps of agent {agents} against {agents - 1} ({label}), "
            f"{LINES // STEP} hunks each on a {LINES}-line file: median "
            f"{statistics.median(timings):.2f} ms, max {max(timings):.2f} ms "
            f"({len(found)} overlapping, n={rounds})"
        )


# --- through the real server -----------------------------------------------------------------


def answer_edits(client: ForkyardClient) -> list[float]:
    """The client's `workspace/applyEdit`: text edits written to the files on disk (none
    is open), as an editor does for closed files. Returns when each edit was answered."""
    answered: list[float] = []

    @client.lsp.feature(types.WORKSPACE_APPLY_EDIT)  # type: ignore[untyped-decorator]
    def apply_edit(params: types.ApplyWorkspaceEditParams) -> types.ApplyWorkspaceEditResult:
        for change in params.edit.document_changes or []:
            if isinstance(change, types.TextDocumentEdit):
                path = Path(to_fs_path(change.text_document.uri) or "")
                edits = [e for e in change.edits if isinstance(e, types.TextEdit)]
                path.write_text(apply_text_edits(path.read_text(), edits))
        for uri, text_edits in (params.edit.changes or {}).items():
            path = Path(to_fs_path(uri) or "")
            path.write_text(apply_text_edits(path.read_text(), list(text_edits)))
        answered.append(time.perf_counter())
        return types.ApplyWorkspaceEditResult(applied=True)

    return answered


def apply_text_edits(text: str, edits: list[types.TextEdit]) -> str:
    """ASCII text: UTF-16 units are characters."""
    lines = text.split("\n")

    def offset(position: types.Position) -> int:
        before = sum(len(line) + 1 for line in lines[: position.line])
        return min(len(text), before + position.character)

    spans = sorted(
        ((offset(e.range.start), offset(e.range.end), e.new_text) for e in edits), reverse=True
    )
    for start, end, new_text in spans:
        text = text[:start] + new_text + text[end:]
    return text


async def overlaps_end_to_end(client: ForkyardClient, agents: int) -> None:
    ids = []
    for k in range(agents):
        lines = [1 + k + STEP * step for step in range(LINES // STEP)]
        script = "; ".join(f"{n}s/.*/changed_{k}_{n} = {k}/" for n in lines)
        agent = await client.dispatch(f"sed -i '{script}' big.py", backend="command")
        ids.append(agent["id"])
    for agent_id in ids:
        ended = await client.wait_for_agent(agent_id, timeout=600)
        if ended["state"] != "done":
            raise SystemExit(f"agent {agent_id} ended {ended['state']}: {ended}")
    updates: list[tuple[str, Any]] = list(client.notifications)
    changed = [
        (params["agent"], at)
        for (method, params), at in zip(updates, client.arrivals, strict=True)
        if method == "forkyard/agent/changed"
    ]
    done_at: dict[str, float] = {}
    for agent, at in changed:
        if agent["state"] == "done":
            done_at.setdefault(agent["id"], at)  # its first: the overlaps come after
    last = max(done_at, key=lambda agent_id: done_at[agent_id])

    def overlaps_of_last() -> float | None:
        notes: list[tuple[str, Any]] = list(client.notifications)
        for (method, params), at in zip(notes, client.arrivals, strict=True):
            agent = params.get("agent") if method == "forkyard/agent/changed" else None
            if agent and agent["id"] == last and agent["state"] == "done" and agent["overlaps"]:
                return at
        return None

    announced = await client.wait_until(overlaps_of_last, timeout=120)
    print(
        f"agent {agents} of {agents} done -> its overlaps announced (real daemon, "
        f"{agents - 1} done agents on the {LINES}-line file): "
        f"{(announced - done_at[last]) * 1000:.1f} ms"
    )
    for agent_id in ids:
        await client.request("forkyard/agent/discard", {"agentId": agent_id})


async def apply_all(client: ForkyardClient, root: Path, agents: int, files: int) -> None:
    answered = answer_edits(client)
    ids = []
    for k in range(agents):
        line = 1 + 4 * k  # three untouched lines between two agents' lines
        command = f"for f in pkg/*.py; do sed -i '{line}s/$/  # agent {k}/' $f; done"
        agent = await client.dispatch(command, backend="command")
        ids.append(agent["id"])
    for agent_id in ids:
        ended = await client.wait_for_agent(agent_id, timeout=600)
        if ended["state"] != "done" or ended["changes"]["files"] != files:
            raise SystemExit(f"agent {agent_id} ended wrong: {ended}")
    started = time.perf_counter()
    result = await client.request("forkyard/agent/applyAll", {"agentIds": ids})
    took = time.perf_counter() - started
    if result["stoppedAt"] is not None or not all(r["applied"] for r in result["results"]):
        raise SystemExit(f"applyAll stopped: {result}")
    sample = (root / "pkg" / "m000.py").read_text()
    if sample.count("# agent") != agents:
        raise SystemExit(f"not every agent landed: {sample}")
    steps = [b - a for a, b in zip([started, *answered], answered, strict=False)]
    print(
        f"applyAll of {agents} agents x {files} files (each its own applyEdit): "
        f"{took * 1000:.0f} ms, {took * 1000 / agents:.0f} ms per agent "
        f"(slowest agent {max(steps) * 1000:.0f} ms)"
    )


async def run(root: Path, state: Path, args: argparse.Namespace) -> None:
    env = {**os.environ, "FORKYARD_STATE_DIR": str(state)}
    client = await ForkyardClient.start(root, env, initialization_options={"maxParallelAgents": 8})
    try:
        await overlaps_end_to_end(client, args.agents)
        await apply_all(client, root, args.apply_agents, args.files)
    finally:
        await client.stop()
        await stop_and_wait(state, now=True)  # the bench's own daemon goes too


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--agents", type=int, default=32)
    parser.add_argument("--apply-agents", type=int, default=10)
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="small sizes: for CI")
    args = parser.parse_args()
    if args.quick:
        args.agents, args.apply_agents, args.files, args.rounds = 4, 3, 10, 5
    work = Path(tempfile.mkdtemp(prefix="forkyard-bench-"))
    try:
        big = make_repo(work / "repo", args.files)
        time_comparison(args.agents, big, args.rounds)
        anyio.run(run, work / "repo", work / "state", args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
