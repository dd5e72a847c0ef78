"""Git for Forkyard: the user's checkout, snapshots of it, and the agents' worktrees.

Everything goes through the system `git` in async subprocesses, each given its `cwd` and
an explicit environment, so that agents working side by side never share process state
and the event loop never waits on git. Two promises to the user shape this module:

- Their checkout is never touched: a snapshot of it is taken through a temporary copy of
  the index, so their index, working tree, HEAD and stash stay exactly as they were.
- Nothing is lost that is not in a ref: snapshots live under `refs/forkyard/snapshots/`,
  an agent's work is committed to its branch, and a discarded worktree's last state is
  kept under a ref the caller names before the worktree and its branch go away.
"""

from __future__ import annotations

import os
import re
import shutil
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread

from forkyard.workspace.hardened import (
    WorktreeGit,
    WorktreeTampered,
    WorktreeUnknown,
    agent_git,
    checkout_git,
    find_admin_dir,
    parse_ident,
)
from forkyard.workspace.overlay import ensure_mounted, remove_layer
from forkyard.workspace.overlay_stage import stage_worktree
from forkyard.workspace.runner import (
    GitError,
    GitResult,
    git_environment,
    run_git,
    tree_through_a_copy_of,
)

#: Re-exported: the rest of Forkyard imports git's errors and runner from here.
__all__ = [
    "GitError",
    "GitResult",
    "WorktreeGit",
    "WorktreeTampered",
    "WorktreeUnknown",
    "git_environment",
    "run_git",
]


SNAPSHOT_REF_PREFIX = "refs/forkyard/snapshots/"
SNAPSHOT_MESSAGE = "forkyard: snapshot of the checkout"
KEEP_ON_REMOVE_MESSAGE = "forkyard: uncommitted work, kept when the worktree was removed"
FALLBACK_IDENTITY = ("Forkyard", "forkyard@localhost")
#: Agents' branches are `forkyard/<number>-<slug>`: the only branches the server commits to.
AGENT_BRANCH_PREFIX = "refs/heads/forkyard/"

#: `git worktree list` meeting a worktree's records while another process writes them.
_HALF_WRITTEN = re.compile(r"failed to read .*worktrees/")
_LIST_ATTEMPTS = 5


async def checkout_tree(root: Path, env: Mapping[str, str]) -> str:
    """The tree sha of the checkout at `root` exactly as it is on disk: tracked files as
    modified, deletions, and untracked files that are not ignored.

    `git add -A` runs against a temporary copy of the checkout's index, never the index
    itself. Copying (with its timestamps) keeps git's cached stat data, so only files
    that changed are read again: fast on large repositories, and racy-git safe.
    """
    index = root / (await run_git("rev-parse", "--git-path", "index", cwd=root, env=env)).line

    base_env = env

    async def run(*args: str, env: Mapping[str, str]) -> GitResult:
        return await run_git(*args, cwd=root, env={**base_env, **env})

    return await tree_through_a_copy_of(index, run)


@dataclass(frozen=True)
class WorktreeInfo:
    """One entry of `git worktree list`; `branch` is the short name ("forkyard/3-x")."""

    path: Path
    head: str | None
    branch: str | None
    detached: bool = False
    bare: bool = False
    locked: bool = False
    prunable: bool = False


def parse_worktree_list(output: bytes) -> list[WorktreeInfo]:
    """Entries of `git worktree list --porcelain -z`: fields end in NUL, entries in an
    empty field. Paths are decoded as the file system does, so any name survives."""
    entries: list[WorktreeInfo] = []
    fields: dict[str, bytes] = {}
    for field in output.split(b"\0"):
        if field:
            key, _, value = field.partition(b" ")
            fields[key.decode("ascii", errors="replace")] = value
            continue
        if "worktree" in fields:
            branch = fields.get("branch")
            entries.append(
                WorktreeInfo(
                    path=Path(os.fsdecode(fields["worktree"])),
                    head=fields["HEAD"].decode("ascii") if "HEAD" in fields else None,
                    branch=(
                        os.fsdecode(branch).removeprefix("refs/heads/")
                        if branch is not None
                        else None
                    ),
                    detached="detached" in fields,
                    bare="bare" in fields,
                    locked="locked" in fields,
                    prunable="prunable" in fields,
                )
            )
        fields = {}
    return entries


def slugify(title: str, max_len: int = 40) -> str:
    """A branch-name-safe slug of an agent's title: ASCII letters, digits and hyphens,
    lowercase, at most `max_len` characters, cut at a word boundary when possible, and
    never empty (branches are `forkyard/<number>-<slug>`)."""
    ascii_title = (
        unicodedata.normalize("NFKD", title).encode("ascii", errors="ignore").decode("ascii")
    )
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_title.lower()).strip("-")
    if len(slug) > max_len:
        cut = slug[: max_len + 1]
        boundary = cut.rfind("-")
        slug = cut[:boundary] if boundary > 0 else slug[:max_len]
        slug = slug.strip("-")
    return slug or "agent"


def _spelled_as_given(start: Path, toplevel: Path) -> Path:
    """`toplevel` (which git gives with symlinks resolved) as the caller spelled it, when
    the caller reached it through a symlink: file URIs must match the editor's paths."""
    for candidate in (start.absolute(), *start.absolute().parents):
        if candidate.resolve() == toplevel:
            return candidate
    return toplevel


class Repository:
    """The user's checkout, and the worktrees Forkyard makes from it.

    Commands that write refs or worktree metadata hold `write_lock` for just that step,
    so git never sees two of our writes to the same repository at once (they would fail
    on ref and index locks); slow reads (snapshots, diffs, checkouts) run unlocked.
    """

    def __init__(self, root: Path, common_dir: Path, env: Mapping[str, str] | None = None):
        self.root = root
        self.common_dir = common_dir
        self.env = git_environment(env)
        self.write_lock = anyio.Lock()
        self._commit_env: dict[str, str] | None = None
        self._agent_identity: dict[str, str] | None = None
        self._agent_config: tuple[str, ...] | None = None

    @classmethod
    async def discover(cls, path: Path, env: Mapping[str, str] | None = None) -> Repository:
        """The repository whose checkout contains `path` (a folder or a file in one)."""
        environment = git_environment(env)
        start = path if await anyio.Path(path).is_dir() else path.parent
        try:
            found = await run_git(
                "rev-parse",
                "--path-format=absolute",
                "--show-toplevel",
                "--git-common-dir",
                cwd=start,
                env=environment,
                check=False,
            )
        except GitError as exc:  # `start` does not exist
            raise GitError(f"not a git repository: {path}") from exc
        lines = found.stdout.splitlines()
        if found.returncode != 0 or len(lines) != 2:
            raise GitError(f"not a git repository: {path}", stderr=found.stderr)
        toplevel, common_dir = (Path(os.fsdecode(line)) for line in lines)
        root = await anyio.to_thread.run_sync(_spelled_as_given, start, toplevel)
        return cls(root, common_dir, environment)

    async def git(
        self, *args: str, cwd: Path | None = None, env: Mapping[str, str] | None = None
    ) -> GitResult:
        """Run git in the checkout (or `cwd`) with this repository's environment."""
        return await run_git(*args, cwd=cwd or self.root, env=self.env if env is None else env)

    async def resolve(self, ref: str, cwd: Path | None = None) -> str:
        """The full sha of the commit `ref` names; GitError if it names none."""
        if not ref or ref.startswith("-"):
            raise GitError(f"unknown revision: {ref!r}")
        found = await run_git(
            "rev-parse",
            "--verify",
            "--quiet",
            "--end-of-options",
            f"{ref}^{{commit}}",
            cwd=cwd or self.root,
            env=self.env,
            check=False,
        )
        if found.returncode != 0:
            raise GitError(f"unknown revision: {ref!r} is not a commit in {self.root}")
        return found.line

    async def commit_environment(self) -> dict[str, str]:
        """The environment for commands that create commits: the user's identity when git
        has one, else Forkyard's, so snapshots work on machines never set up for git."""
        if self._commit_env is None:
            env = dict(self.env)
            for role in ("AUTHOR", "COMMITTER"):
                known = await run_git(
                    "var", f"GIT_{role}_IDENT", cwd=self.root, env=env, check=False
                )
                if known.returncode != 0:
                    env[f"GIT_{role}_NAME"], env[f"GIT_{role}_EMAIL"] = FALLBACK_IDENTITY
            self._commit_env = env
        return self._commit_env

    async def agent_identity(self) -> dict[str, str]:
        """Who commits an agent's work: the identity git gives in the user's checkout,
        fixed here because git on an agent's worktree reads no global config."""
        if self._agent_identity is None:
            env = await self.commit_environment()
            identity: dict[str, str] = {}
            for role in ("AUTHOR", "COMMITTER"):
                known = await run_git(
                    "var", f"GIT_{role}_IDENT", cwd=self.root, env=env, check=False
                )
                name, email = (known.returncode == 0 and parse_ident(known.line)) or (
                    FALLBACK_IDENTITY
                )
                identity[f"GIT_{role}_NAME"], identity[f"GIT_{role}_EMAIL"] = name, email
            self._agent_identity = identity
        return self._agent_identity

    async def agent_config(self) -> tuple[str, ...]:
        """The user's settings that decide which files an agent's work holds and how
        (ignore file, line endings), carried over as `-c` because git on an agent's
        worktree reads no global config. None of them can run a program."""
        if self._agent_config is None:
            found = await run_git(
                "config", "-z", "--path", "--get-regexp", r"^core\.(excludesfile|autocrlf|eol)$",
                cwd=self.root, env=self.env, check=False,
            )  # fmt: skip
            settings = []
            for entry in found.stdout.split(b"\0"):
                key, _, value = os.fsdecode(entry).partition("\n")
                if key:
                    settings.append(f"{key}={value}")
            self._agent_config = tuple(settings)
        return self._agent_config

    async def worktree_git(self, worktree: Path) -> WorktreeGit:
        """git for a worktree an agent worked in: its git dir from the repository's own
        records, nothing it planted run (see `hardened`). WorktreeUnknown when the
        folder is not one of this repository's worktrees."""
        config = await self.agent_config()
        await ensure_mounted(worktree)
        return await agent_git(
            self.common_dir,
            worktree,
            self.env,
            root=self.root,
            extra_config=config,
        )

    async def checkout_git(self, worktree: Path) -> WorktreeGit:
        """git for checking the user's commits out into a worktree no agent has used."""
        await ensure_mounted(worktree)
        return await checkout_git(self.common_dir, worktree, self.env, root=self.root)

    async def _commit_tree(self, tree: str, parent: str, message: str, cwd: Path) -> str:
        env = await self.commit_environment()
        made = await run_git(
            "commit-tree", "--no-gpg-sign", tree, "-p", parent, "-m", message, cwd=cwd, env=env
        )
        return made.line

    async def snapshot(self, base_ref: str = "HEAD") -> str:
        """A commit on top of `base_ref` holding the checkout as the user sees it now,
        uncommitted and untracked (not ignored) files included; `base_ref`'s own sha
        when there is nothing uncommitted. The user's index, files, HEAD and stash are
        left alone. The snapshot is kept under refs/forkyard/snapshots/<sha>.
        """
        base = await self.resolve(base_ref)
        tree = await checkout_tree(self.root, self.env)
        if tree == (await self.git("rev-parse", f"{base}^{{tree}}")).line:
            return base
        snapshot = await self._commit_tree(tree, base, SNAPSHOT_MESSAGE, self.root)
        async with self.write_lock:
            await self.git("update-ref", f"{SNAPSHOT_REF_PREFIX}{snapshot}", snapshot)
        return snapshot

    async def add_worktree(self, path: Path, branch: str, commit: str) -> None:
        """A new worktree at `path` on a new branch `branch` starting at `commit`.

        Only the registration (branch and worktree metadata) holds the write lock; the
        checkout of the files, which takes a while on big repositories, runs after it in
        the new worktree alone. A failed checkout removes the half-made worktree again.
        """
        await anyio.Path(path.parent).mkdir(parents=True, exist_ok=True)
        async with self.write_lock:
            await self.git(
                "worktree", "add", "--quiet", "--no-checkout", "-b", branch, str(path), commit
            )
        try:
            checkout = await self.checkout_git(path)
            await checkout.run("reset", "--hard", "--quiet", "--no-recurse-submodules")
        except BaseException:
            with anyio.CancelScope(shield=True):
                async with self.write_lock:
                    await run_git(
                        "worktree",
                        "remove",
                        "--force",
                        str(path),
                        cwd=self.root,
                        env=self.env,
                        check=False,
                    )
                    await run_git("branch", "-D", branch, cwd=self.root, env=self.env, check=False)
            raise

    async def commit_worktree(
        self, worktree: Path, message: str, *, tampered_ok: bool = False
    ) -> str | None:
        """Commit everything in one of our worktrees (its own index is ours to use) onto
        its branch; the new sha, or None when there was nothing to commit.

        Plumbing rather than `git commit`, through `worktree_git`: no hook, filter or
        signing setup runs, prompts or fails for an agent's files. A worktree whose
        `.git` the agent changed is committed all the same (git is told where the
        worktree's records are, so that `.git` plays no part and the agent's files stay
        reviewable on its branch), then WorktreeTampered says so, unless `tampered_ok`
        (removing the worktree: the user is done with it).
        """
        git = await self.worktree_git(worktree)
        commit = await self._commit_work(git, message)
        if git.tampered is not None and not tampered_ok:
            raise git.tampered_error(commit)
        return commit

    async def _commit_work(self, git: WorktreeGit, message: str) -> str | None:
        await stage_worktree(git.worktree, git.run, {})
        tree = (await git.run("write-tree")).line
        head = await self._worktree_head(git)
        if tree == (await git.run("rev-parse", f"{head}^{{tree}}")).line:
            return None
        await self._check_agent_branch(git)
        who = await self.agent_identity()
        made = await git.run(
            "commit-tree", "--no-gpg-sign", tree, "-p", head, "-m", message, env=who
        )
        commit = made.line
        async with self.write_lock:
            # Updating HEAD with the old value moves the branch HEAD points to, and fails
            # rather than losing a commit if something else moved it meanwhile.
            await git.run("update-ref", "-m", message, "HEAD", commit, head, env=who)
        return commit

    async def _check_agent_branch(self, git: WorktreeGit) -> None:
        """Refuse to commit through a HEAD that names a branch other than an agent's:
        an agent that could write its worktree's records (unsandboxed) would otherwise
        have the server's commit move the user's own branch."""
        symbolic = await git.run("symbolic-ref", "--quiet", "HEAD", check=False)
        branch = symbolic.line
        if symbolic.returncode == 0 and not branch.startswith(AGENT_BRANCH_PREFIX):
            raise WorktreeTampered(
                f"agent worktree {git.worktree}: its HEAD was changed to {branch}, which is "
                f"not an agent's branch; nothing was committed, the agent's files are kept "
                "there; your repository was not touched"
            )

    async def _worktree_head(self, git: WorktreeGit) -> str:
        found = await git.run("rev-parse", "--verify", "--quiet", "HEAD^{commit}", check=False)
        if found.returncode != 0:
            raise GitError(f"worktree {git.worktree} has no commit checked out")
        return found.line

    async def list_worktrees(self) -> list[WorktreeInfo]:
        """Every worktree of the repository, the user's own checkout first.

        git writes a worktree's records (`worktrees/<id>/gitdir`, `commondir`, ...) one
        file at a time and reads them without a lock: a list during `worktree add` or
        `prune` dies on a half-written entry ("failed to read .../commondir"). So it
        runs under `write_lock`, which every registration and removal of ours holds;
        one of another process's (`forkyard gc`, the user's git) is waited out by a
        few bounded retries."""
        for attempt in range(_LIST_ATTEMPTS):
            async with self.write_lock:
                listed = await run_git(
                    "worktree", "list", "--porcelain", "-z",
                    cwd=self.root, env=self.env, check=False,
                )  # fmt: skip
            if listed.returncode == 0:
                return parse_worktree_list(listed.stdout)
            if attempt + 1 == _LIST_ATTEMPTS or not _HALF_WRITTEN.search(listed.stderr):
                break
            await anyio.sleep(0.02 * 2**attempt)
        message = listed.stderr.strip() or "(no message)"
        raise GitError(f"`git worktree list` failed in {self.root}: {message}", stderr=message)

    async def _find_worktree(self, worktree: Path) -> WorktreeInfo | None:
        wanted = await anyio.Path(worktree).resolve()
        for info in await self.list_worktrees():
            if await anyio.Path(info.path).resolve() == wanted:
                return info
        return None

    async def branch_tip(self, branch: str) -> str | None:
        """The commit `refs/heads/<branch>` points to, None if there is no such branch."""
        found = await run_git(
            "rev-parse",
            "--verify",
            "--quiet",
            f"refs/heads/{branch}^{{commit}}",
            cwd=self.root,
            env=self.env,
            check=False,
        )
        return found.line if found.returncode == 0 else None

    async def remove_worktree(self, worktree: Path, branch: str | None, keep_ref: str) -> str:
        """Remove a worktree and its branch, keeping its last state under `keep_ref`
        (uncommitted work is committed first). Returns the kept sha.

        A worktree folder already deleted by hand is fine: its metadata is pruned and its
        last known HEAD (else the branch tip) is kept. If the branch holds work that the
        kept commit does not contain, that tip is kept too, under `<keep_ref>-branch`.
        """
        present = await anyio.Path(worktree).is_dir()
        head: str | None
        tampered = False
        if present:
            git = await self.worktree_git(worktree)
            await self._commit_work(git, KEEP_ON_REMOVE_MESSAGE)
            head = await self._worktree_head(git)
            tampered = git.tampered is not None
        else:
            info = await self._find_worktree(worktree)
            head = info.head if info else None
        branch_tip = await self.branch_tip(branch) if branch else None
        kept = head or branch_tip
        if kept is None:
            raise GitError(f"no worktree at {worktree} and no branch {branch!r} to keep")
        branch_has_more = False
        if branch_tip is not None and branch_tip != kept:
            contained = await run_git(
                "merge-base",
                "--is-ancestor",
                branch_tip,
                kept,
                cwd=self.root,
                env=self.env,
                check=False,
            )
            branch_has_more = contained.returncode != 0
        async with self.write_lock:
            await self.git("update-ref", "-m", KEEP_ON_REMOVE_MESSAGE, keep_ref, kept)
            if branch_has_more and branch_tip is not None:
                await self.git("update-ref", f"{keep_ref}-branch", branch_tip)
        admin = await anyio.to_thread.run_sync(find_admin_dir, self.common_dir, worktree)
        if present and await remove_layer(worktree, admin):
            present = False  # an overlay worktree: its work is in `keep_ref`, its layer gone
        if tampered and present:
            # git would read that `.git` to check the worktree before removing it; the
            # work is in `keep_ref`, so the folder goes by hand and git prunes its record.
            await anyio.to_thread.run_sync(shutil.rmtree, worktree)
            present = False
        async with self.write_lock:
            if present:
                await self.git("worktree", "remove", "--force", str(worktree))
            else:
                await self.git("worktree", "prune")
            if branch is not None and branch_tip is not None:
                await self.git("branch", "-D", branch)
        return kept
