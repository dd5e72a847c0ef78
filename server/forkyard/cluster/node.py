"""The node's side of a cluster agent: a Ray actor (`AgentHost`) in a worker process.

The node holds, per repository, one bare git repository of the commits it was sent
(`<root>/<repo>/repo.git`) and the worktrees of the agents it ran. A commit it already has
is never sent again: ten agents on one base cost one bundle per node. The agent runs
exactly as it would on the person's machine (the same backends, sandbox, tools and
hardened git); what it reports (log, progress, usage, approval questions) streams back to
the orchestrator in batches, and its work goes back as a bundle of its branch. The node
never touches the store: the orchestrator stays its only writer.

This module is imported by Ray in the worker (and by the daemon only to name the class);
it imports Ray only inside the methods that need it.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from forkyard.agents.base import ApprovalAnswer, Backend, RunOutcome
from forkyard.cluster.protocol import (
    NODE_DIR_ENV,
    Collected,
    NodeEvent,
    NodeSpec,
    Prepared,
    node_root,
)
from forkyard.cluster.remote_context import RemoteContext
from forkyard.workspace.git import Repository
from forkyard.workspace.hardened import find_admin_dir
from forkyard.workspace.overlay import choose_mode, ensure_mounted, overlay_support, remove_layer
from forkyard.workspace.overlay_make import make_overlay_worktree
from forkyard.workspace.runner import git_environment, run_git
from forkyard.workspace.setup import SetupError, run_setup_command

BACKGROUND_NICENESS = 10
#: Events sent back in one batch at most; progress is folded to the newest per batch.
BATCH_EVENTS = 200
#: A result bundle larger than this is refused: the agent's worktree stays on the node.
MAX_RESULT_BYTES = 2 << 30


def node_backends(spec: NodeSpec) -> dict[str, Backend]:
    """The backends a node can run: the built-in ones and the configured programs."""
    from forkyard.agents.command import CommandBackend
    from forkyard.agents.external import external_backends
    from forkyard.agents.llm import LlmBackend

    return {
        **external_backends(spec.settings),
        "command": CommandBackend(),
        "llm": LlmBackend(),
    }


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """A lock across the node's worker processes: two agents on one base must not both
    fetch it (nor git see two writers of one repository)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class AgentHost:
    """One agent's run on a node; an async actor, so that `answer` and `stop` arrive
    while `run` streams."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.environ = dict(os.environ if environ is None else environ)
        self.root = node_root(self.environ)
        self._task: asyncio.Task[RunOutcome] | None = None
        self._context: RemoteContext | None = None
        self._needs_setup = False

    # --- where the agent is ---------------------------------------------------------

    async def where(self) -> dict[str, Any]:
        import ray

        node_id = ray.get_runtime_context().get_node_id()
        address = next(
            (
                n["NodeManagerAddress"]
                for n in ray.nodes()  # type: ignore[no-untyped-call]
                if n.get("NodeID") == node_id
            ),
            "unknown",
        )
        return {
            "node_id": node_id,
            "address": address,
            "pid": os.getpid(),
            "root": str(self.root),
        }

    def _repository(self, spec: NodeSpec) -> Repository:
        bare = self.root / spec.repo_key / "repo.git"
        return Repository(bare, bare, git_environment(self.environ))

    def _worktree(self, spec: NodeSpec) -> Path:
        return self.root / spec.repo_key / "worktrees" / spec.agent_id

    # --- the worktree ---------------------------------------------------------------

    async def prepare(self, spec: NodeSpec, shipment: list[Any]) -> Prepared:
        """The agent's worktree at `spec.start_commit`: kept from its last run on this
        node when it is still there at that commit, else made from the node's repository,
        which fetches the commit's bundle (`shipment[0]`, an object ref in a list so that
        Ray does not send it unasked) only when it lacks the commit."""
        if spec.settings.agent_priority == "background" and os.nice(0) < BACKGROUND_NICENESS:
            # This worker process is the agent's alone: it runs at background priority,
            # as the agent's commands do (they are niced again inside the sandbox).
            os.nice(BACKGROUND_NICENESS - os.nice(0))
        repository = self._repository(spec)
        worktree = self._worktree(spec)
        shipped = 0
        lock = self.root / spec.repo_key / "lock"
        await anyio.to_thread.run_sync(lambda: lock.parent.mkdir(parents=True, exist_ok=True))
        async with _ThreadLock(lock):
            if not await anyio.Path(repository.root / "HEAD").exists():
                await run_git("init", "--quiet", "--bare", str(repository.root), cwd=self.root)
            if not await _has_commit(repository, spec.start_commit):
                data: bytes = await shipment[0]
                shipped = len(data)
                await _fetch_bundle(repository, data, spec.start_commit)
        await _prune_stale(repository, worktree.parent, spec.settings.worktree.gc_grace_seconds)
        if await _at_commit(repository, worktree, spec):
            await ensure_mounted(worktree)
            return Prepared(str(worktree), shipped, reused=True)
        await _drop_worktree(repository, worktree, spec.branch)
        # A full worktree is each agent's own checkout: made unlocked, side by side.
        if await self._mode(spec) == "overlay":
            # Locked across the node's workers: the base checkout shared by agents on one
            # tree is made once, by the first; the others' overlays take milliseconds.
            async with _ThreadLock(lock):
                await make_overlay_worktree(
                    repository,
                    worktree,
                    branch=spec.branch,
                    commit=spec.start_commit,
                    worktrees_dir=worktree.parent,
                    checkout_workers=spec.settings.worktree.checkout_workers,
                )
        else:
            await repository.add_worktree(worktree, spec.branch, spec.start_commit)
        self._needs_setup = True
        return Prepared(str(worktree), shipped, reused=False)

    async def _mode(self, spec: NodeSpec) -> str:
        """Overlay worktrees where this node can mount them (as at home), else full."""
        support = await overlay_support(self.root)
        return choose_mode(spec.settings.worktree.mode, self.environ, support).mode

    # --- the run --------------------------------------------------------------------

    async def run(self, spec: NodeSpec, instruction: str) -> AsyncIterator[list[NodeEvent]]:
        """The backend's run, as batches of events; the last batch ends with the
        outcome. Ray streams each batch to the orchestrator as it is yielded."""
        worktree = self._worktree(spec)
        backend = node_backends(spec).get(spec.backend)
        if backend is None:
            yield [NodeEvent("outcome", (False, "", f"this node has no {spec.backend} backend"))]
            return
        context = RemoteContext(spec, worktree, self.environ)
        self._context = context
        self._task = asyncio.ensure_future(self._set_up_and_run(backend, context, instruction))
        task = self._task
        while True:
            batch = await context.next_batch(task, BATCH_EVENTS)
            if batch:
                yield batch
            if task.done() and context.drained():
                break
        try:
            outcome = task.result()
        except asyncio.CancelledError:
            outcome = RunOutcome(False, "", "cancelled")
        except Exception as exc:
            outcome = RunOutcome(False, "", f"{type(exc).__name__}: {exc}")
        yield [NodeEvent("outcome", (outcome.ok, outcome.summary, outcome.error))]

    async def _set_up_and_run(
        self, backend: Backend, context: RemoteContext, instruction: str
    ) -> RunOutcome:
        """`[worktree] setup` first, in a worktree made for this run, as at home. The
        ignored files `copy` and `link` bring are the person's, on their machine: not
        here."""
        config = context.settings.worktree
        if self._needs_setup:
            if config.copy_files or config.link or config.worktreeinclude:
                await context.log(
                    "setup", "ignored files (copy, link) are not brought on cluster nodes"
                )
            if config.setup:
                try:
                    await run_setup_command(
                        config.setup,
                        worktree=context.cwd,
                        checkout=context.cwd,
                        settings=context.settings,
                        environ=context.environ,
                        extra_env=context.extra_env,
                        log=context.log,
                    )
                except SetupError as exc:
                    return RunOutcome(False, "", str(exc))
            self._needs_setup = False
        return await backend.run(context, instruction)

    async def answer(self, request_id: str, answer: ApprovalAnswer) -> None:
        if self._context is not None:
            self._context.answer(request_id, answer)

    async def refuse(self, error: str) -> None:
        """A budget shared with other agents (the day's, the thread's) was reached."""
        if self._context is not None:
            self._context.shared_refusal = error

    async def stop(self) -> bool:
        """Cancel the run: the backend's processes are ended as on a cancel at home."""
        task = self._task
        if task is None or task.done():
            return False
        task.cancel()
        with anyio.move_on_after(30):
            await asyncio.wait({task})
        return True

    # --- the result -----------------------------------------------------------------

    async def collect(self, spec: NodeSpec, message: str) -> Collected:
        """The agent's work committed on its branch and bundled against its start commit
        (which the person's repository has); no bundle when there is nothing new."""
        repository = self._repository(spec)
        worktree = self._worktree(spec)
        if not await anyio.Path(worktree).is_dir():
            return Collected(None, None, f"the node has no worktree for agent #{spec.number}")
        problem: str | None = None
        try:
            await repository.commit_worktree(worktree, message)
        except Exception as exc:
            problem = str(exc)
        tip = (await repository.git("rev-parse", f"refs/heads/{spec.branch}")).line
        if tip == spec.start_commit:
            return Collected(tip, None, problem)
        bundle = self.root / spec.repo_key / f"result-{spec.agent_id}.bundle"
        try:
            await repository.git(
                "bundle", "create", "--quiet", str(bundle),
                f"refs/heads/{spec.branch}", f"^{spec.start_commit}",
            )  # fmt: skip
            size = (await anyio.Path(bundle).stat()).st_size
            if size > MAX_RESULT_BYTES:
                return Collected(tip, None, f"its work is {size} bytes, over the limit")
            data = await anyio.Path(bundle).read_bytes()
        finally:
            await anyio.Path(bundle).unlink(missing_ok=True)
        return Collected(tip, data, problem)

    async def forget(self, spec: NodeSpec) -> None:
        """The agent is applied or discarded: its worktree on this node goes."""
        await _drop_worktree(self._repository(spec), self._worktree(spec), spec.branch)


class _ThreadLock:
    """`_locked` held from async code: the flock is taken in a worker thread."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._manager: Any = None

    async def __aenter__(self) -> None:
        self._manager = _locked(self._path)
        await anyio.to_thread.run_sync(self._manager.__enter__)

    async def __aexit__(self, *exc: object) -> None:
        await anyio.to_thread.run_sync(self._manager.__exit__, None, None, None)


async def _has_commit(repository: Repository, commit: str) -> bool:
    found = await run_git(
        "cat-file", "-e", f"{commit}^{{commit}}", cwd=repository.root, env=repository.env,
        check=False,
    )  # fmt: skip
    return found.returncode == 0


async def _fetch_bundle(repository: Repository, data: bytes, commit: str) -> None:
    path = repository.root / f"incoming-{commit}.bundle"
    await anyio.Path(path).write_bytes(data)
    try:
        await repository.git(
            "fetch", "--quiet", "--no-tags", "--no-write-fetch-head", str(path),
            f"+refs/forkyard/ship/{commit}:refs/forkyard/bases/{commit}",
        )  # fmt: skip
    finally:
        await anyio.Path(path).unlink(missing_ok=True)


async def _at_commit(repository: Repository, worktree: Path, spec: NodeSpec) -> bool:
    """The agent's worktree from its last run here, unchanged since it was collected."""
    if not await anyio.Path(worktree).is_dir():
        return False
    tip = await run_git(
        "rev-parse", "--verify", "--quiet", f"refs/heads/{spec.branch}",
        cwd=repository.root, env=repository.env, check=False,
    )  # fmt: skip
    return tip.returncode == 0 and tip.line == spec.start_commit


async def _prune_stale(repository: Repository, folder: Path, grace_seconds: float) -> None:
    """Worktrees of this repository's agents not used for the gc grace period go: a
    node keeps them for follow-ups, not for ever (their work went home when they ran)."""

    def stale() -> list[Path]:
        if not folder.is_dir():
            return []
        limit = time.time() - grace_seconds
        return [
            p
            for p in folder.iterdir()
            if not p.name.startswith(".") and p.is_dir() and p.stat().st_mtime < limit
        ]

    for path in await anyio.to_thread.run_sync(stale):
        admin = await anyio.to_thread.run_sync(find_admin_dir, repository.common_dir, path)
        if not await remove_layer(path, admin):
            await anyio.to_thread.run_sync(partial(shutil.rmtree, path, ignore_errors=True))
    await run_git("worktree", "prune", cwd=repository.root, env=repository.env, check=False)


async def _drop_worktree(repository: Repository, worktree: Path, branch: str) -> None:
    admin = await anyio.to_thread.run_sync(find_admin_dir, repository.common_dir, worktree)
    if not await remove_layer(worktree, admin) and await anyio.Path(worktree).exists():
        await anyio.to_thread.run_sync(partial(shutil.rmtree, worktree, ignore_errors=True))
    for args in (("worktree", "prune"), ("branch", "-D", branch)):
        await run_git(*args, cwd=repository.root, env=repository.env, check=False)


__all__ = ["NODE_DIR_ENV", "AgentHost"]
