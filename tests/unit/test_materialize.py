"""Materialize through the daemon's API, in process: a follow-up sent while an agent's
overlay worktree is being materialized is refused (it would run in a worktree being
unmounted and checked out again), and once it is materialized a follow-up runs in the
full worktree at the same path, as in any other. A full worktree answers at once."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest

from forkyard.errors import WrongState
from forkyard.orchestrator import materialize as materialize_module
from forkyard.workspace.git import Repository
from forkyard.workspace.overlay import layer_of
from tests.unit.test_daemon_api import running_daemon

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(os.geteuid() != 0, reason="the server mounts overlays as root only"),
]


class HeldMaterialize:
    """The workspace step of materialize, held until `release` once it was reached."""

    def __init__(self) -> None:
        self.original = materialize_module.materialize_worktree
        self.reached = anyio.Event()
        self.release = anyio.Event()

    async def __call__(self, repository: Repository, worktree: Path, *, workers: int = 0) -> bool:
        self.reached.set()
        await self.release.wait()
        return await self.original(repository, worktree, workers=workers)


async def test_a_follow_up_waits_for_materialize_then_runs_in_the_full_worktree(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = HeldMaterialize()
    monkeypatch.setattr(materialize_module, "materialize_worktree", held)
    async with running_daemon(repo, tmp_path) as daemon:
        front, _ = await daemon.attach("editor")
        orchestrator = daemon.session(front).app.orchestrator
        if (await orchestrator.pool.choose_mode()).mode != "overlay":
            pytest.skip("this run uses full worktrees")
        agent_id = await daemon.dispatch(front, "command", "one", task="echo one > one.txt")
        done = await front.final(agent_id)
        assert done.state == "done" and done.worktree
        worktree = Path(done.worktree)
        assert layer_of(worktree) is not None
        ref = {"agentId": agent_id}

        answers: list[dict[str, object]] = []

        async def materialize() -> None:
            answers.append(await daemon.call(front, "forkyard/agent/materialize", ref))

        async with anyio.create_task_group() as task_group:
            task_group.start_soon(materialize)
            with anyio.fail_after(30):
                await held.reached.wait()
            follow_up = {**ref, "text": "echo two > two.txt"}
            with pytest.raises(WrongState, match="being materialized"):
                await daemon.call(front, "forkyard/agent/message", follow_up)
            with pytest.raises(WrongState, match="being materialized"):
                await daemon.call(front, "forkyard/agent/materialize", ref)
            held.release.set()
        [answer] = answers
        assert answer["agent"]["worktree"] == str(worktree)  # type: ignore[index]
        assert layer_of(worktree) is None and not os.path.ismount(worktree)

        queued = await daemon.call(front, "forkyard/agent/message", follow_up)
        assert queued["agent"]["state"] == "queued"
        ends = await front.until(
            lambda: [e.agent for e in front.agent_events(agent_id) if e.agent.state == "done"][1:]
        )
        again = ends[0]
        assert again.state == "done", again.error
        assert again.worktree == str(worktree)
        assert (worktree / "one.txt").read_text() == "one\n"
        assert (worktree / "two.txt").read_text() == "two\n"
        assert layer_of(worktree) is None, "the follow-up did not make it an overlay again"
        files = await daemon.call(front, "forkyard/agent/diff", ref)
        assert sorted(change["path"] for change in files["files"]) == ["one.txt", "two.txt"]
        # Full now: a second materialize answers at once, with nothing held.
        held.release = anyio.Event()
        held.reached = anyio.Event()
        monkeypatch.setattr(materialize_module, "materialize_worktree", held.original)
        after = await daemon.call(front, "forkyard/agent/materialize", ref)
        assert after["agent"]["state"] == "done"
