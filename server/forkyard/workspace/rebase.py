"""Moving an agent's work onto the person's current checkout, in its worktree.

The agent's branch starts at its base (a snapshot of the checkout when it was dispatched)
and holds its work on top. Rebasing takes a new snapshot (the person's HEAD with their
uncommitted changes), merges the agent's work from its old base onto it three-way, and
makes that the branch: its diff against the new base is again only the agent's own work.

git 2.39's `merge-tree --write-tree` has no `--merge-base`, and the history's merge base
(the commit the old snapshot was made on) would count the person's old uncommitted
changes as the agent's; so the merge is between the agent's tip and a bridge commit, the
new snapshot's tree with the old base as parent, which makes the old base the merge base.

Nothing is lost: the worktree's files are committed first, and the old tip is kept under
`refs/forkyard/rebased/<n>-<sha>`. With conflicts the new tip holds git's conflict
markers in those files, for the person or a follow-up of the agent to resolve.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from forkyard.workspace.git import AGENT_BRANCH_PREFIX, GitError, Repository
from forkyard.workspace.hardened import WorktreeTampered
from forkyard.workspace.runner import run_git

REBASED_REF_PREFIX = "refs/forkyard/rebased/"
BRIDGE_MESSAGE = "forkyard: the person's checkout, over the agent's old base (rebase bridge)"


@dataclass(frozen=True)
class RebaseOutcome:
    #: The new base commit (a snapshot of the checkout, or HEAD itself when clean).
    base: str
    #: The branch's new tip.
    commit: str
    #: Paths left with conflict markers.
    conflicts: list[str]
    #: Where the old tip is kept; None when nothing moved (already on that base).
    kept_ref: str | None


async def rebase_worktree(
    repository: Repository,
    worktree: Path,
    old_base: str,
    *,
    number: int,
    message: str,
    onto: str = "HEAD",
) -> RebaseOutcome:
    """Rebase the agent's worktree `worktree` (based on `old_base`) onto a snapshot of
    the checkout at `onto`. GitError when git cannot; the worktree is then as it was."""
    await repository.commit_worktree(worktree, message)
    git = await repository.worktree_git(worktree)
    if git.tampered is not None:
        raise git.tampered_error()
    tip = (await git.run("rev-parse", "--verify", "HEAD^{commit}")).line
    new_base = await repository.snapshot(onto)
    if new_base == old_base:
        return RebaseOutcome(old_base, tip, [], None)
    env = await repository.commit_environment()
    root = repository.root
    base_tree = (await repository.git("rev-parse", f"{new_base}^{{tree}}")).line
    bridge = (
        await run_git(
            "commit-tree", "--no-gpg-sign", base_tree, "-p", old_base, "-m", BRIDGE_MESSAGE,
            cwd=root, env=env,
        )
    ).line  # fmt: skip
    merged = await run_git(
        "merge-tree", "--write-tree", "--name-only", "-z", bridge, tip,
        cwd=root, env=repository.env, check=False,
    )  # fmt: skip
    if merged.returncode not in (0, 1):
        raise GitError(
            f"cannot rebase agent #{number}: {merged.stderr.strip() or 'git merge-tree failed'}",
            stderr=merged.stderr,
        )
    tree, conflicts = _parse_merge_tree(merged.stdout)
    who = await repository.agent_identity()
    commit = (
        await run_git(
            "commit-tree", "--no-gpg-sign", tree, "-p", new_base, "-m", message,
            cwd=root, env={**env, **who},
        )
    ).line  # fmt: skip
    kept_ref = f"{REBASED_REF_PREFIX}{number}-{tip[:12]}"
    symbolic = await git.run("symbolic-ref", "--quiet", "HEAD", check=False)
    if symbolic.returncode != 0 or not symbolic.line.startswith(AGENT_BRANCH_PREFIX):
        raise WorktreeTampered(
            f"agent worktree {worktree}: its HEAD is not an agent's branch; not rebased"
        )
    async with repository.write_lock:
        await repository.git("update-ref", kept_ref, tip)
        await git.run("reset", "--hard", "--quiet", commit)
    return RebaseOutcome(new_base, commit, conflicts, kept_ref)


def _parse_merge_tree(output: bytes) -> tuple[str, list[str]]:
    """`merge-tree --write-tree --name-only -z`: the tree, then the conflicted paths,
    then an empty field and git's messages."""
    fields = output.split(b"\0")
    tree = os.fsdecode(fields[0]).strip()
    conflicts: list[str] = []
    for raw in fields[1:]:
        if not raw:
            break
        path = os.fsdecode(raw)
        if path not in conflicts:
            conflicts.append(path)
    return tree, conflicts
