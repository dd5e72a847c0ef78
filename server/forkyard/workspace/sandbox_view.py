"""What of the user's files an agent's sandbox may read, beyond its own worktree.

The sandbox shows only the system, the toolchains and what it is told (`tools.sandbox`).
An agent in a worktree needs the repository's git directory (read-only, so `git status`
and `git log` work but nothing writes the user's `.git`), the user's folders that
`[worktree] link` linked into its worktree, and what the user granted in
`[sandbox] read_paths`. An explorer works in the user's checkout itself, read-only. Never
the rest: not the checkout's other files (its ignored `.env`), not the home directory,
not the state directory with other agents' worktrees.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import anyio.to_thread

from forkyard.settings import Settings
from forkyard.tools.sandbox_paths import git_read_paths
from forkyard.workspace.runner import git_environment
from forkyard.workspace.setup import ignored_entries, parse_patterns, select_entries


async def sandbox_read_paths(
    *,
    worktree: Path | None,
    checkout: Path,
    settings: Settings,
    environ: Mapping[str, str],
) -> list[Path]:
    """Read-only paths for a command in `worktree` (None: an explorer, whose command
    runs in `checkout`)."""
    paths: list[Path] = []
    if worktree is None:
        paths.append(checkout)
    else:
        paths += await anyio.to_thread.run_sync(git_read_paths, checkout, worktree)
        paths += await linked_folders(checkout, settings.worktree.link)
    paths += settings.sandbox.resolved_read_paths(environ)
    return paths


async def linked_folders(checkout: Path, link: list[str]) -> list[Path]:
    """The checkout's folders that `[worktree] link` links into worktrees: their links
    point there, so the sandbox shows them (read-only). Chosen by the same rule as when
    linking: git-ignored entries of the checkout the patterns select."""
    patterns = parse_patterns(link)
    if not patterns:
        return []
    entries = await ignored_entries(checkout, git_environment())
    selection = await anyio.to_thread.run_sync(select_entries, checkout, entries, [], patterns)
    return [checkout / path for path in selection.link]
