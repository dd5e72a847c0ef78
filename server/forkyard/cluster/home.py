"""Git between the person's repository and the cluster: a base bundled to be shipped,
and an agent's work fetched home into its local worktree.

Both touch the person's repository only under refs of ours (`refs/forkyard/ship/*` for
the moment a bundle is made, `refs/forkyard/cluster/N` for the moment one is fetched) and
the agent's own branch and worktree.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from forkyard.cluster.protocol import Collected, NodeSpec
from forkyard.orchestrator.runtime import AgentRuntime, is_dir
from forkyard.workspace.git import Repository

if TYPE_CHECKING:
    from forkyard.orchestrator.orchestrator import Orchestrator


async def bundle_commit(repository: Repository, commit: str, path: Path) -> None:
    """A bundle of `commit` and its history at `path`, under the ref a node fetches."""
    ref = f"refs/forkyard/ship/{commit}"
    async with repository.write_lock:
        await repository.git("update-ref", ref, commit)
    try:
        await repository.git("bundle", "create", "--quiet", str(path), ref)
    finally:
        async with repository.write_lock:
            await repository.git("update-ref", "-d", ref)


def incoming_ref(number: int) -> str:
    return f"refs/forkyard/cluster/{number}"


async def bring_home(
    o: Orchestrator, runtime: AgentRuntime, spec: NodeSpec, got: Collected, bundle: Path
) -> None:
    """The node's work on the agent's branch and in its local worktree (made on its
    first return, moved to the new tip after a follow-up), which review then reads."""
    agent = runtime.agent
    if got.problem:
        await o._log(runtime, "system", f"on the node: {got.problem}")
    commit = got.commit or spec.start_commit
    if got.size:
        async with o.repository.write_lock:
            await o.repository.git(
                "fetch", "--quiet", "--no-tags", "--no-write-fetch-head", str(bundle),
                f"+refs/heads/{spec.branch}:{incoming_ref(agent.number)}",
            )  # fmt: skip
        await o._log(runtime, "system", f"its work came back: {got.size:,} bytes")
    assert agent.branch is not None
    if agent.worktree and await is_dir(agent.worktree):
        git = await o.repository.worktree_git(Path(agent.worktree))
        await git.run("reset", "--hard", "--quiet", commit)
    else:
        path = o.worktrees_dir / agent.branch.removeprefix("forkyard/")
        report = await o.pool.make_agent_worktree(
            path, branch=agent.branch, commit=commit, sparse_paths=runtime.sparse_paths or ()
        )
        await o._update(runtime, worktree=str(path))
        await o._log(runtime, "system", f"its work is in {path} ({report})")
    if got.size:
        async with o.repository.write_lock:
            await o.repository.git("update-ref", "-d", incoming_ref(agent.number))
    await anyio.Path(bundle).unlink(missing_ok=True)
