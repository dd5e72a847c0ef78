"""Review speed: `textDocument/codeAction` and `textDocument/codeLens` latency on a
5,000-line file that 32 done agents each changed in several hunks, and the time from an
agent reaching `done` to its diagnostics being published for a 100-file diff.

    uv run python bench/bench_review.py [--agents 32] [--samples 300]
    uv run python bench/bench_review.py --quick   # CI: 4 agents, 20 samples

An agent that does not end `done` exits non-zero.
"""

from __future__ import annotations

import argparse
import gc
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

from forkyard.client import ForkyardClient
from forkyard.daemon.control import stop_and_wait

LINES = 5_000
SMALL_FILES = 100
GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@forkyard.invalid",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@forkyard.invalid",
}


def make_repo(root: Path) -> str:
    root.mkdir(parents=True)
    big = "".join(f"value_{i} = compute({i})  # line {i}\n" for i in range(LINES))
    (root / "big.py").write_text(big)
    for index in range(SMALL_FILES):
        (root / "pkg").mkdir(exist_ok=True)
        (root / "pkg" / f"m{index:03d}.py").write_text(f"X = {index}\nY = {index * 2}\n")
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "bench"]):
        subprocess.run(["git", *args], cwd=root, check=True, env=GIT_ENV)
    return big


def report(what: str, seconds: list[float]) -> None:
    ms = [t * 1000 for t in seconds]
    print(
        f"{what}: median {statistics.median(ms):.2f} ms, p99 {percentile(ms, 0.99):.2f} ms "
        f"(n={len(ms)})"
    )


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def measure(lsp: Any, uri: str, agents: int, samples: int) -> None:
    """codeAction at lines spread over the file, then codeLens of the whole file."""
    # This process keeps every notification it got (thousands of diagnostics as
    # objects): its own garbage collector's pauses are not the server's latency.
    gc.collect()
    gc.freeze()
    timings = []
    for sample in range(samples):
        line = (sample * 37) % LINES
        started = time.perf_counter()
        await lsp.text_document_code_action_async(
            types.CodeActionParams(
                text_document=types.TextDocumentIdentifier(uri=uri),
                range=types.Range(
                    start=types.Position(line=line, character=0),
                    end=types.Position(line=line, character=0),
                ),
                context=types.CodeActionContext(diagnostics=[]),
            )
        )
        timings.append(time.perf_counter() - started)
    hunks = LINES // 150
    report(f"codeAction on a {LINES}-line file, {agents} done agents x {hunks} hunks", timings)
    lens_timings = []
    for _sample in range(samples):
        started = time.perf_counter()
        found = await lsp.text_document_code_lens_async(
            types.CodeLensParams(text_document=types.TextDocumentIdentifier(uri=uri))
        )
        lens_timings.append(time.perf_counter() - started)
    if len(found or []) != agents * (hunks + 2):
        raise SystemExit(f"expected {agents * (hunks + 2)} lenses, got {len(found or [])}")
    report(
        f"codeLens on the same file ({len(found or [])} lenses, this Python client turning "
        "each into lsprotocol objects)",
        lens_timings,
    )
    report("codeLens as JSON, as VS Code and Neovim take it", await raw_lenses(lsp, uri, samples))


async def raw_lenses(lsp: Any, uri: str, samples: int) -> list[float]:
    """codeLens timed to the parsed JSON answer: editors parse JSON natively, while this
    pygls client's cattrs turns a thousand lenses into objects (~15 ms on its own, not
    the server's latency)."""
    protocol = lsp.protocol
    typed = protocol.get_result_type
    protocol.get_result_type = lambda method: (
        None if method == types.TEXT_DOCUMENT_CODE_LENS else typed(method)
    )
    params = types.CodeLensParams(text_document=types.TextDocumentIdentifier(uri=uri))
    timings = []
    try:
        for _sample in range(samples):
            started = time.perf_counter()
            await protocol.send_request_async(types.TEXT_DOCUMENT_CODE_LENS, params)
            timings.append(time.perf_counter() - started)
    finally:
        protocol.get_result_type = typed
    return timings


async def run(root: Path, state: Path, agents: int, samples: int) -> None:
    env = {**os.environ, "FORKYARD_STATE_DIR": str(state)}
    client = await ForkyardClient.start(root, env, initialization_options={"maxParallelAgents": 8})
    lsp = client.lsp

    def published() -> list[tuple[float, str, int]]:
        # Standard notifications arrive as lsprotocol objects, not the dicts of the
        # client's annotation.
        notifications: list[tuple[str, Any]] = list(client.notifications)
        return [
            (at, params.uri, len(params.diagnostics))
            for (method, params), at in zip(notifications, client.arrivals, strict=True)
            if method == types.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS
        ]

    try:
        ids = []
        for k in range(agents):
            lines = [1 + k + 150 * step for step in range(LINES // 150)]
            script = "; ".join(f"{n}s/.*/changed_{k}_{n} = {k}/" for n in lines)
            agent = await client.dispatch(f"sed -i '{script}' big.py", backend="command")
            ids.append(agent["id"])
        for agent_id in ids:
            ended = await client.wait_for_agent(agent_id, timeout=600)
            if ended["state"] != "done":
                raise SystemExit(f"agent {agent_id} ended {ended['state']}: {ended}")
        uri = (root / "big.py").as_uri()
        seen = sum(1 for _, u, _ in published() if u == uri)
        lsp.text_document_did_open(
            types.DidOpenTextDocumentParams(
                text_document=types.TextDocumentItem(
                    uri=uri, language_id="python", version=1, text=(root / "big.py").read_text()
                )
            )
        )
        # Measured once the front has every agent's review (its diagnostics on the opened
        # buffer count every hunk): while reviews still load, each publishes the file's
        # diagnostics again, which is the arrival of agents, not the cursor's latency.
        everything = agents * (LINES // 150)

        def loaded() -> bool:
            after_open = [n for _, u, n in published() if u == uri][seen:]
            return bool(after_open) and after_open[-1] == everything

        await client.wait_until(loaded, timeout=300)
        await measure(lsp, uri, agents, samples)

        before = len(published())
        wide = await client.dispatch(
            "for f in pkg/*.py; do sed -i 's/^Y = /Y = 1 + /' $f; done", backend="command"
        )
        done = await client.wait_for_agent(wide["id"], timeout=300)
        done_at = time.perf_counter()
        if done["state"] != "done" or done["changes"]["files"] != SMALL_FILES:
            raise SystemExit(f"the {SMALL_FILES}-file agent ended wrong: {done}")

        def all_published() -> bool:
            uris = {u for _, u, n in published()[before:] if n and "/pkg/" in u}
            return len(uris) >= SMALL_FILES

        await client.wait_until(all_published, timeout=120)
        last = max(t for t, u, n in published()[before:] if n and "/pkg/" in u)
        print(
            f"done -> diagnostics published for a {SMALL_FILES}-file diff: "
            f"{(last - done_at) * 1000:.0f} ms (after the done notification arrived)"
        )
    finally:
        await client.stop()
        await stop_and_wait(state, now=True)  # the bench's own daemon goes too


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--agents", type=int, default=32)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--quick", action="store_true", help="4 agents, 20 samples: for CI")
    args = parser.parse_args()
    if args.quick:
        args.agents, args.samples = 4, 20
    work = Path(tempfile.mkdtemp(prefix="forkyard-bench-"))
    try:
        make_repo(work / "repo")
        anyio.run(run, work / "repo", work / "state", args.agents, args.samples)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
