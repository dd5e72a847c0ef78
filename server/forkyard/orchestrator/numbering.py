"""What a new agent starts from: a number no old branch or kept ref uses, and the base
commit (a snapshot of the checkout as the person sees it)."""

from __future__ import annotations

import logging

from forkyard.errors import InvalidRequest
from forkyard.settings import RoleConfig
from forkyard.store import Store
from forkyard.workspace.git import GitError, Repository
from forkyard_protocol.messages import AgentDispatchParams

logger = logging.getLogger(__name__)


async def free_agent_number(store: Store, repository: Repository, repo_key: str) -> int:
    """The next agent number whose branch and kept refs do not exist yet: a lost
    state directory restarts the numbering, and an old agent's branch or discarded
    work must never be reused or overwritten."""
    while True:
        number = await store.next_agent_number(repo_key)
        taken = await repository.git(
            "for-each-ref",
            "--count=1",
            "--format=%(refname)",
            f"refs/heads/forkyard/{number}-*",
            f"refs/forkyard/discarded/{number}",
            f"refs/forkyard/discarded/{number}-branch",
        )
        if not taken.line:
            return number
        logger.info("agent number %s is taken by %s; skipping it", number, taken.line)


async def base_commit(repository: Repository, params: AgentDispatchParams, role: RoleConfig) -> str:
    """The commit the agent starts from; with includeUncommitted a snapshot of the
    checkout as the user sees it, so the agent's diff holds only its own changes."""
    try:
        base = await repository.resolve(params.base_ref)
        if role.worktree and params.include_uncommitted:
            head = await repository.resolve("HEAD")
            if base == head:
                return await repository.snapshot(base)
    except GitError as exc:
        raise InvalidRequest(f"baseRef: {exc}") from exc
    return base
