"""The objects of the Forkyard protocol (PROTOCOL.md, "Objects").

Field names are snake_case in Python and camelCase on the wire; every model accepts both,
so the server can build them from its own code and validate them from JSON alike.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

PROTOCOL_VERSION = 1


class WireModel(BaseModel):
    """Base of every protocol model: camelCase aliases, and extra fields ignored so that a
    newer client can talk to an older server."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        serialize_by_alias=True,
        extra="ignore",
    )

    def wire(self) -> dict[str, object]:
        """The JSON-ready dict sent to a client."""
        return self.model_dump(mode="json", by_alias=True)


AgentState = Literal[
    "queued",
    "starting",
    "running",
    "done",
    "applied",
    "discarded",
    "failed",
    "cancelled",
    "interrupted",
]

#: States an agent never leaves by itself; only a user's follow-up starts it again.
FINAL_STATES: frozenset[str] = frozenset(
    {"done", "applied", "discarded", "failed", "cancelled", "interrupted"}
)
#: States in which an agent occupies one of the `max_parallel_agents` slots.
ACTIVE_STATES: frozenset[str] = frozenset({"starting", "running"})

TurnState = Literal["queued", "running", "completed", "failed", "interrupted"]
MessageRole = Literal["user", "assistant", "event"]
FileStatus = Literal["added", "modified", "deleted", "renamed"]


class Progress(WireModel):
    message: str
    percentage: int | None = None


class ChangeCounts(WireModel):
    files: int = 0
    additions: int = 0
    deletions: int = 0


class Usage(WireModel):
    """Tokens a model's calls used and what they cost (docs/protocol.md, "Usage and
    budgets"); `cost_usd` is None when the model's price is not known, so a client tells
    "free" from "unknown"."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float | None = None


class Overlap(WireModel):
    """Another done agent whose changes touch the same lines as this one's, or lines next
    to them ("Review across agents"): applying both needs a look."""

    agent_id: str
    paths: list[str] = Field(default_factory=list)


class CheckResult(WireModel):
    """The role's `check` command, run in the agent's worktree when it finished (and
    after a rebase): whether it passed, and the tail of its output."""

    passed: bool
    summary: str = ""


class AgentPlacement(WireModel):
    """Where the agent runs ("Cluster" in docs/protocol.md); `node` is the Ray node's
    address once it is placed there, None while it waits or when it runs locally."""

    kind: Literal["local", "cluster"] = "local"
    node: str | None = None


class Agent(WireModel):
    id: str
    number: int
    title: str
    task: str
    role: str
    backend: str
    state: AgentState
    thread_id: str | None = None
    base_ref: str
    branch: str | None = None
    worktree: str | None = None
    created_at: str
    updated_at: str
    progress: Progress | None = None
    summary: str | None = None
    error: str | None = None
    changes: ChangeCounts = Field(default_factory=ChangeCounts)
    #: Summed over the agent's model calls (follow-ups included); None for backends that
    #: report none.
    usage: Usage | None = None
    #: The agent's limits ("Usage and budgets"): its dispatch's, else its role's, raised by
    #: a follow-up; None: no limit. An agent past one is `failed`, `budget reached (…)`.
    budget_usd: float | None = None
    max_tokens: int | None = None
    #: "Review across agents": for a done agent, the other done agents that change the
    #: same lines of the same files (or lines next to them); empty otherwise.
    overlaps: list[Overlap] = Field(default_factory=list)
    #: Agents started together by one dispatch with `count` share a group id.
    group: str | None = None
    #: The role's `check` on its latest work; None when the role has none (or not yet).
    check: CheckResult | None = None
    placement: AgentPlacement = Field(default_factory=AgentPlacement)


class Thread(WireModel):
    id: str
    title: str
    created_at: str
    updated_at: str


class Message(WireModel):
    id: str
    thread_id: str
    turn_id: str | None = None
    role: MessageRole
    text: str
    agent_id: str | None = None
    created_at: str


class Hunk(WireModel):
    id: str
    old_start: int
    old_lines: int
    new_start: int
    new_lines: int
    header: str
    text: str


class FileChange(WireModel):
    path: str
    uri: str
    old_path: str | None = None
    status: FileStatus
    additions: int = 0
    deletions: int = 0
    hunks: list[Hunk] = Field(default_factory=list)
    binary: bool = False


class LogEntry(WireModel):
    time: str
    kind: str
    text: str


class Conflict(WireModel):
    path: str
    reason: str


class BackendInfo(WireModel):
    """One entry of `experimental.forkyard.backends`: an addition to PROTOCOL.md so that a
    client can tell the user why a backend cannot be used."""

    name: str
    available: bool
    reason: str | None = None
    #: "builtin" (command, llm), "external" (a program Forkyard drives by its own
    #: output: codex, claude, aider, a command), "acp" (an Agent Client Protocol agent).
    kind: Literal["builtin", "external", "acp"] | None = None


class ForkyardCapabilities(WireModel):
    version: int = PROTOCOL_VERSION
    roles: list[str]
    backends: list[str]
    backend_details: list[BackendInfo] = Field(default_factory=list)
    #: Whether the user trusts this repository's `.forkyard.toml` (`forkyard trust`); at
    #: initialize time: `forkyard/status` has the live value.
    trusted: bool = False
