"""`forkyard/agent/rebase`: a done agent's work moved onto the person's current checkout
(their commits and uncommitted changes), in its worktree (`workspace/rebase.py`); then its
change counts, check and overlaps made again, so that its review is fresh. With conflicts
the agent stays `done`, the conflicted files marked in its worktree and listed; a
follow-up may ask the agent to resolve them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from forkyard.errors import InvalidRequest, WrongState
from forkyard.orchestrator.checks import role_check, run_check
from forkyard.orchestrator.runtime import is_dir
from forkyard.workspace.diff import diff_worktree
from forkyard.workspace.git import GitError
from forkyard.workspace.rebase import rebase_worktree
from forkyard_protocol.models import Agent, ChangeCounts

if TYPE_CHECKING:
    from forkyard.orchestrator.orchestrator import Orchestrator


async def rebase(
    orchestrator: Orchestrator, ref: str, onto: str = "HEAD"
) -> tuple[Agent, list[str]]:
    """The agent after the rebase, and the paths left with conflict markers."""
    runtime = orchestrator.resolve(ref)
    agent = runtime.agent
    if agent.state != "done":
        raise WrongState(
            f"agentId: agent #{agent.number} is {agent.state}; only a done agent rebases"
        )
    if not agent.worktree or not await is_dir(agent.worktree):
        raise InvalidRequest(f"agentId: agent #{agent.number} has no worktree to rebase")
    worktree = Path(agent.worktree)
    repository = orchestrator.repository
    try:
        outcome = await rebase_worktree(
            repository,
            worktree,
            agent.base_ref,
            number=agent.number,
            message=f"forkyard: agent #{agent.number}: {agent.title} (rebased)",
            onto=onto,
        )
    except GitError as exc:
        raise InvalidRequest(f"agentId: agent #{agent.number} cannot be rebased: {exc}") from exc
    if outcome.kept_ref is None:
        await orchestrator._log(runtime, "system", "rebase: already on the checkout as it is")
        return agent.model_copy(deep=True), []
    said = f"rebased onto {outcome.base[:12]}; the old work is kept as {outcome.kept_ref}"
    if outcome.conflicts:
        said += "; conflict markers in " + ", ".join(outcome.conflicts)
    await orchestrator._log(runtime, "system", said)
    diff = await diff_worktree(worktree, outcome.base, repository.root, repository=repository)
    changes = ChangeCounts(
        files=len(diff.files),
        additions=sum(f.additions for f in diff.files),
        deletions=sum(f.deletions for f in diff.files),
    )
    # The new base first: the check and the overlaps read it.
    await orchestrator._update(runtime, base_ref=outcome.base, changes=changes)
    check = runtime.agent.check
    if command := role_check(orchestrator, agent.role):
        check = await run_check(orchestrator, runtime, command)
    await orchestrator._update(runtime, check=check, progress=None)
    await orchestrator.runner.record_overlaps(runtime, diff.files)
    return runtime.agent.model_copy(deep=True), outcome.conflicts
