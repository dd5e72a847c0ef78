"""What the orchestrator and a node send each other: plain, picklable values.

Ray pickles them both ways; keeping them small dataclasses (no live objects, no
secrets: settings carry names of key variables, never keys) keeps what crosses the
network obvious.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import platformdirs

from forkyard.settings import RoleConfig, Settings
from forkyard_protocol import Usage

#: Where a node keeps its repositories and agents' worktrees (default: its cache dir).
NODE_DIR_ENV = "FORKYARD_NODE_DIR"

EventKind = Literal["log", "progress", "usage", "approval", "outcome"]


def node_root(environ: Mapping[str, str]) -> Path:
    configured = environ.get(NODE_DIR_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path(platformdirs.user_cache_dir("forkyard")) / f"node-{os.getuid()}"


@dataclass(frozen=True)
class NodeSpec:
    """One run of one agent on a node."""

    repo_key: str
    agent_id: str
    number: int
    branch: str
    #: The commit its worktree starts from: the base, or its branch's tip for a follow-up.
    start_commit: str
    backend: str
    role_name: str
    role: RoleConfig
    settings: Settings
    #: Variables the agent's commands get whatever the sandbox says (its ports).
    extra_env: Mapping[str, str]
    usage: Usage | None
    budget_usd: float | None
    max_tokens: int | None


@dataclass(frozen=True)
class NodeEvent:
    """`log`: (kind, text); `progress`: (message, percentage); `usage`: a Usage's dict;
    `approval`: (request id, tool, detail); `outcome`: (ok, summary, error)."""

    kind: EventKind
    value: Any


@dataclass(frozen=True)
class Prepared:
    worktree: str
    #: Bytes of the base's bundle this node fetched for this agent (0: it had the commit).
    shipped_bytes: int
    reused: bool


@dataclass(frozen=True)
class Collected:
    #: The branch's tip on the node; None when there was no worktree.
    commit: str | None
    #: A bundle of the branch against the start commit; None: nothing new (or too big),
    #: or written to the file the daemon named (then `size` is its length).
    bundle: bytes | None
    problem: str | None
    size: int = 0
