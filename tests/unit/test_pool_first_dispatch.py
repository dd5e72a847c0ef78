"""A dispatch right after the server starts never waits for the warm pool to fill: with
no ready worktree the agent gets a fresh one at once, the pool filling behind it; and in
a burst, the first fresh checkout is not slowed down by the ones dispatched after it.
Asserted on the order of events, with the pool's fill held by a hook, never on time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from forkyard.settings import WorktreeSettings
from forkyard.workspace import pool as pool_module
from forkyard.workspace.git import GitResult, Repository, WorktreeGit
from forkyard.workspace.overlay import ModeChoice
from forkyard.workspace.pool import BACKGROUND_NICENESS, QUEUED_NICENESS, WorktreePool
from tests.helpers import GIT_ENV
from tests.unit.test_orchestrator_failures import dispatch, running

pytestmark = pytest.mark.timeout(90)


class HeldFill:
    """Replaces the pool's background git: the fill's commands (at the background
    niceness) wait until `release`; `reached` is set when the fill first got there.
    Every other command runs, and the niceness of each is recorded."""

    def __init__(self, original: Any) -> None:
        self.original = original
        self.reached = anyio.Event()
        self.release = anyio.Event()
        self.calls: list[tuple[Path, str]] = []

    async def __call__(
        self, git: WorktreeGit, *args: str, niceness: str = BACKGROUND_NICENESS
    ) -> GitResult:
        self.calls.append((git.worktree, niceness))
        if niceness == BACKGROUND_NICENESS:
            self.reached.set()
            await self.release.wait()
        result: GitResult = await self.original(git, *args, niceness=niceness)
        return result


@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch) -> HeldFill:
    hook = HeldFill(pool_module.background_git)
    monkeypatch.setattr(pool_module, "background_git", hook)
    # Full worktrees whatever the machine allows: their checkouts are what is held here.
    monkeypatch.setattr(pool_module, "choose_mode", lambda *_: ModeChoice("full", "tests"))
    return hook


async def test_the_first_dispatch_runs_while_the_pool_is_still_filling(
    repo: Path, tmp_path: Path, held: HeldFill
) -> None:
    async with running(repo, tmp_path) as (app, watch, _told):
        pool = app.orchestrator.pool
        with anyio.fail_after(30):
            await held.reached.wait()  # the fill is in its first checkout, held there
        seen_running: list[int] = []

        def running_while_filling() -> bool:
            agent = watch.agents.get(first.id)
            if agent is not None and agent.state == "running" and not seen_running:
                seen_running.append(len(pool.ready))
            return bool(seen_running)

        first = await dispatch(app, "echo first > first.txt", "first")
        await watch.until(running_while_filling)
        done = await watch.final(first.id)

        assert seen_running == [0], "running before the pool had a worktree ready"
        assert done.state == "done", done.error
        assert not held.release.is_set() and pool.ready == [], "the fill is still held"
        _agent, log = await app.orchestrator.read(first.id)
        assert any("(fresh)" in entry.text for entry in log), [e.text for e in log]

        held.release.set()
        with anyio.fail_after(60):
            await pool.wait_ready(1)  # and the pool fills behind it


async def test_in_a_burst_later_fresh_checkouts_yield_to_the_first(
    repo: Path, tmp_path: Path, held: HeldFill
) -> None:
    """Started together, every checkout after the first runs at the queued niceness:
    the first runs at the server's own priority, as if alone."""
    repository = await Repository.discover(repo, env=GIT_ENV)
    settings = WorktreeSettings(pool_size=0)
    pool = WorktreePool(
        repository, tmp_path / ".pool", tmp_path / ".trash", lambda: settings, settle_seconds=0
    )
    head = await repository.resolve("HEAD")
    paths = [tmp_path / "agents" / f"{n}-agent" for n in range(1, 5)]
    reports: dict[Path, str] = {}

    async def make(path: Path) -> None:
        reports[path] = await pool.make_worktree(path, branch=f"forkyard/{path.name}", commit=head)

    with anyio.fail_after(60):
        async with anyio.create_task_group() as task_group:
            for path in paths:
                task_group.start_soon(make, path)

    niced = dict(held.calls)
    assert paths[0] not in niced, "the first checkout runs at the server's priority"
    assert [niced.get(path) for path in paths[1:]] == [QUEUED_NICENESS] * 3
    for path in paths:
        assert "(fresh)" in reports[path]
        assert (path / "src/app.py").read_text() == "def add(a, b):\n    return a + b\n"
    # Once none runs, the next one is first again.
    held.calls.clear()
    late = tmp_path / "agents" / "5-agent"
    await pool.make_worktree(late, branch="forkyard/5-agent", commit=head)
    assert held.calls == []
