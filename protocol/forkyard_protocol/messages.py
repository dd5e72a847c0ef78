"""Params and results of every custom method, and the method table (PROTOCOL.md,
"Requests" and "Notifications")."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from .models import (
    Agent,
    AgentState,
    CheckResult,
    Conflict,
    FileChange,
    LogEntry,
    Message,
    Thread,
    TurnState,
    Usage,
    WireModel,
)

# --- shared pieces -----------------------------------------------------------------------


class Position(WireModel):
    line: int = Field(ge=0)
    character: int = Field(ge=0)


class Range(WireModel):
    start: Position
    end: Position


class ChatContext(WireModel):
    uri: str
    range: Range | None = None


class Empty(WireModel):
    """`{}`: params of list methods and the result of interrupt."""


def _non_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


# --- conversation ------------------------------------------------------------------------


class ChatParams(WireModel):
    text: str
    thread_id: str | None = None
    context: ChatContext | None = None
    work_done_token: str | int | None = None

    _text_not_blank = field_validator("text")(_non_blank)


class ChatResult(WireModel):
    thread_id: str
    turn_id: str
    message_id: str


class ChatInterruptParams(WireModel):
    thread_id: str


class ThreadListResult(WireModel):
    threads: list[Thread]


class ThreadReadParams(WireModel):
    thread_id: str


class ThreadReadResult(WireModel):
    thread: Thread
    messages: list[Message]


# --- agents ------------------------------------------------------------------------------


class AgentDispatchParams(WireModel):
    task: str
    role: str = "worker"
    backend: str | None = None
    title: str | None = None
    thread_id: str | None = None
    base_ref: str = "HEAD"
    include_uncommitted: bool = True
    #: An addition to PROTOCOL.md: folders the agent works in. Its worktree is then
    #: sparse (git's cone mode): only these folders and the files along the way are
    #: checked out, which makes starting on a very large repository fast.
    paths: list[str] | None = None
    #: docs/protocol.md "Usage and budgets": limits of this agent's model calls, over the
    #: role's `budget_usd` / `max_tokens`. None: the role's (or no limit).
    budget_usd: float | None = Field(default=None, ge=0)
    max_tokens: int | None = Field(default=None, ge=1)
    #: "Review across agents": start this many agents on the task, grouped (best of N).
    count: int | None = Field(default=None, ge=1, le=10)
    #: "Cluster": run on the configured Ray cluster or here, over the role's `placement`.
    placement: Literal["local", "cluster"] | None = None

    _task_not_blank = field_validator("task")(_non_blank)


class AgentResult(WireModel):
    agent: Agent


class AgentDispatchResult(AgentResult):
    """`agent` is the first of the group; `agents` all of it (one without `count`)."""

    agents: list[Agent] = Field(default_factory=list)


class AgentListResult(WireModel):
    agents: list[Agent]


class AgentRef(WireModel):
    """Params of every method that names one agent: its id, or its number as a string."""

    agent_id: str

    @field_validator("agent_id", mode="before")
    @classmethod
    def _number_as_id(cls, value: object) -> object:
        # A client may well send agent #3 as the integer 3; accept it as the string "3".
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return value

    _id_not_blank = field_validator("agent_id")(_non_blank)


class AgentReadResult(WireModel):
    agent: Agent
    log: list[LogEntry]


class AgentMessageParams(AgentRef):
    text: str
    #: Raise (or set) the agent's limits before it runs again; None keeps them.
    budget_usd: float | None = Field(default=None, ge=0)
    max_tokens: int | None = Field(default=None, ge=1)

    _text_not_blank = field_validator("text")(_non_blank)


class AgentDiffResult(WireModel):
    agent_id: str
    base_ref: str
    patch: str
    files: list[FileChange]


class AgentFileParams(AgentRef):
    path: str


class AgentFileResult(WireModel):
    text: str | None


class AgentApplyParams(AgentRef):
    paths: list[str] | None = None
    hunk_ids: list[str] | None = None


class AgentApplyResult(WireModel):
    applied: bool
    paths: list[str]
    conflicts: list[Conflict]


def _agent_ids(value: list[str]) -> list[str]:
    if not value:
        raise ValueError("must name at least one agent")
    if any(not item.strip() for item in value):
        raise ValueError("must not hold an empty id")
    return value


class AgentIdsParams(WireModel):
    """Params of methods over several agents (`applyAll`, `compare`), in order: ids or
    numbers as strings."""

    agent_ids: list[str] = Field(max_length=100)

    @field_validator("agent_ids", mode="before")
    @classmethod
    def _numbers_as_ids(cls, value: object) -> object:
        if isinstance(value, list):
            return [str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
        return value

    _ids_not_blank = field_validator("agent_ids")(_agent_ids)


class AgentApplyAllResult(WireModel):
    """One result per agent tried, in order; `stoppedAt` the agent whose conflicts
    stopped the run (nothing of it applied), None when every one applied."""

    results: list[AgentApplyResult]
    stopped_at: str | None = None


class AgentRebaseParams(AgentRef):
    onto: Literal["HEAD"] = "HEAD"


class AgentRebaseResult(WireModel):
    """`conflicts`: paths left with conflict markers in the agent's worktree."""

    agent: Agent
    conflicts: list[str] = Field(default_factory=list)


class CompareEntry(WireModel):
    agent_id: str
    files: int
    additions: int
    deletions: int
    check: CheckResult | None = None


class PairOverlap(WireModel):
    a: str
    b: str
    paths: list[str]


class AgentCompareResult(WireModel):
    agents: list[CompareEntry]
    overlaps: list[PairOverlap]


# --- server -----------------------------------------------------------------------------


class ServerStatsParams(WireModel):
    reset: bool = False


class ModelSummary(WireModel):
    """A configured model as clients may show it: never its key, only the key's name."""

    provider: str
    base_url: str | None = None
    model: str
    api_key_env: str | None = None


class ServerStatsResult(WireModel):
    """An addition to PROTOCOL.md: health figures, for benchmarks and `:checkhealth`."""

    version: str
    models: dict[str, ModelSummary] = Field(default_factory=dict)
    uptime_seconds: float
    max_loop_stall_ms: float
    agents_running: int
    agents_queued: int


class WorktreeDiskUse(WireModel):
    """One folder of Forkyard's worktrees: an agent's, a warm pool's, or one no agent
    owns ("orphan"), and the disk it takes (its files and git's record of it)."""

    path: str
    kind: Literal["agent", "pool", "orphan"]
    disk_bytes: int
    exists: bool = True
    agent_id: str | None = None
    number: int | None = None
    state: AgentState | None = None


class StatusParams(WireModel):
    #: False: skip measuring disk use (every `diskBytes` 0), for a cheap look at the pool.
    disk: bool = True


class StatusResult(WireModel):
    """An addition to PROTOCOL.md (`forkyard/status`): worktrees and the disk they use."""

    worktrees: list[WorktreeDiskUse]
    total_disk_bytes: int
    pool_ready: int
    pool_size: int
    #: Why the warm pool could not fill, if it could not (agents then start fresh).
    pool_error: str | None = None
    #: How agents' worktrees are made here (`[worktree] mode`, chosen once at start):
    #: "overlay" (a layer over one shared checkout per base) or "full" (a checkout each).
    worktree_mode: Literal["overlay", "full"] | None = None
    #: Why that mode: the setting, or what keeps overlays from running on this machine.
    worktree_mode_reason: str | None = None
    #: Whether the user trusts this repository's `.forkyard.toml` (`forkyard trust`).
    trusted: bool = False
    #: Its keys not applied for want of trust (dotted TOML keys).
    ignored_keys: list[str] = Field(default_factory=list)
    #: Where trust is recorded (the user's, never the repository's).
    trust_file: str | None = None


class TrustResult(WireModel):
    """The result of the `forkyard.trust` command (an addition to PROTOCOL.md)."""

    root: str
    trusted: bool
    #: Keys of `.forkyard.toml` still not applied (none once trusted).
    ignored_keys: list[str] = Field(default_factory=list)
    trust_file: str


# --- notifications -----------------------------------------------------------------------


class ChatDeltaNotification(WireModel):
    thread_id: str
    turn_id: str
    message_id: str
    delta: str


class ChatMessageNotification(WireModel):
    message: Message


class ChatTurnNotification(WireModel):
    thread_id: str
    turn_id: str
    state: TurnState
    error: str | None = None
    #: What the turn's model calls used, when it ends after calling a model.
    usage: Usage | None = None


class AgentChangedNotification(WireModel):
    agent: Agent


NoticeKind = Literal["agentDone", "agentFailed", "agentCancelled", "other"]
#: What a client may offer on a notice; a client acts on them as names, and ignores a name
#: it does not know (a newer server may add some).
NoticeAction = Literal["Show diff", "Apply", "Discard"]
#: The actions of an `agentDone` notice, in the order to show them.
DONE_ACTIONS: tuple[NoticeAction, ...] = ("Show diff", "Apply", "Discard")


class NoticeNotification(WireModel):
    """An addition to PROTOCOL.md (`forkyard/notice`): an agent's notice as data, sent
    instead of `window/showMessage` to a client that opts in with
    `experimental.forkyard.structuredNotices`, so that it recognises a done agent by
    `kind` and `agentId` rather than by the wording of a message meant for people."""

    level: Literal["info", "warning", "error"]
    #: The one line a plain client would be shown (at most 64 characters).
    message: str
    kind: NoticeKind
    agent_id: str | None = None
    agent: Agent | None = None
    #: For `agentDone`: `DONE_ACTIONS`; else none.
    actions: list[NoticeAction] = Field(default_factory=list)


# --- the method table --------------------------------------------------------------------

Direction = Literal["request", "notification"]

#: Every custom request: method -> (params model, result model).
REQUESTS: dict[str, tuple[type[WireModel], type[WireModel]]] = {
    "forkyard/chat": (ChatParams, ChatResult),
    "forkyard/chat/interrupt": (ChatInterruptParams, Empty),
    "forkyard/thread/list": (Empty, ThreadListResult),
    "forkyard/thread/read": (ThreadReadParams, ThreadReadResult),
    "forkyard/agent/dispatch": (AgentDispatchParams, AgentDispatchResult),
    "forkyard/agent/list": (Empty, AgentListResult),
    "forkyard/agent/read": (AgentRef, AgentReadResult),
    "forkyard/agent/message": (AgentMessageParams, AgentResult),
    "forkyard/agent/cancel": (AgentRef, AgentResult),
    "forkyard/agent/diff": (AgentRef, AgentDiffResult),
    "forkyard/agent/file": (AgentFileParams, AgentFileResult),
    "forkyard/agent/apply": (AgentApplyParams, AgentApplyResult),
    "forkyard/agent/applyAll": (AgentIdsParams, AgentApplyAllResult),
    "forkyard/agent/rebase": (AgentRebaseParams, AgentRebaseResult),
    "forkyard/agent/compare": (AgentIdsParams, AgentCompareResult),
    "forkyard/agent/discard": (AgentRef, AgentResult),
    #: An addition: a failed, interrupted or cancelled agent's task run again as a new
    #: agent, on the same base commit (the old one stays as it is, for its log).
    "forkyard/agent/retry": (AgentRef, AgentResult),
    #: An addition: a finished agent's overlay worktree made an ordinary full worktree
    #: at the same path (files kept while no server runs); a full one answers at once.
    "forkyard/agent/materialize": (AgentRef, AgentResult),
    "forkyard/server/stats": (ServerStatsParams, ServerStatsResult),
    "forkyard/status": (StatusParams, StatusResult),
}

#: Every custom notification, server to client: method -> params model.
NOTIFICATIONS: dict[str, type[WireModel]] = {
    "forkyard/chat/delta": ChatDeltaNotification,
    "forkyard/chat/message": ChatMessageNotification,
    "forkyard/chat/turn": ChatTurnNotification,
    "forkyard/agent/changed": AgentChangedNotification,
    "forkyard/notice": NoticeNotification,
}


def describe_validation_error(method: str, error: Any) -> str:
    """A one-line message naming each bad field, for a -32602 answer."""
    problems = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "params"
        problems.append(f"{field}: {item['msg']}")
    return f"invalid params for {method}: " + "; ".join(problems)
