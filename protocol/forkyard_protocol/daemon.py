"""The daemon's protocol: what `forkyard daemon` and its fronts (`forkyard serve`, the
terminal commands) say to each other over the state directory's Unix socket.

One JSON-RPC 2.0 message per line. A front first sends `daemon/attach` naming its
repository; then it may send every request of the editor protocol (`REQUESTS`, with the
same params and results) except those that concern an editor's documents, which the front
serves itself (`FRONT_ONLY`), and the daemon methods below. The daemon sends one
notification, `daemon/event`, carrying an `Event` of the closed set here: the same events
its own domain reports on its bus. The daemon never sends a front a request: it never
waits on an editor.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from .messages import ChatResult, ServerStatsParams, ServerStatsResult
from .models import Agent, ForkyardCapabilities, Message, TurnState, Usage, WireModel

#: Bumped whenever a front and a daemon of different values cannot work together.
DAEMON_PROTOCOL_VERSION = 1

#: Editor requests a front answers itself: they need the editor's open documents or its
#: `workspace/applyEdit`.
FRONT_ONLY = frozenset(
    {"forkyard/agent/apply", "forkyard/agent/applyAll", "forkyard/chat", "forkyard/server/stats"}
)

ApprovalAnswer = Literal["allow_once", "allow_for_agent", "deny"]
NoticeLevel = Literal["info", "warning", "error"]


# --- events: the bus's closed set, also what fronts receive -------------------------------


class AgentChanged(WireModel):
    type: Literal["agentChanged"] = "agentChanged"
    agent: Agent
    previous_state: str | None = None


class Notice(WireModel):
    """Something to tell the person once (finished, failed, orphans found)."""

    type: Literal["notice"] = "notice"
    level: NoticeLevel
    text: str
    agent: Agent | None = None


class ChatDelta(WireModel):
    type: Literal["chatDelta"] = "chatDelta"
    thread_id: str
    turn_id: str
    message_id: str
    delta: str


class ChatMessage(WireModel):
    type: Literal["chatMessage"] = "chatMessage"
    message: Message


class ChatTurn(WireModel):
    type: Literal["chatTurn"] = "chatTurn"
    thread_id: str
    turn_id: str
    state: TurnState
    error: str | None = None
    usage: Usage | None = None


class ApprovalRequested(WireModel):
    """An agent waits for the person's answer; every front asks, the first answer wins."""

    type: Literal["approvalRequested"] = "approvalRequested"
    approval_id: str
    agent: Agent
    tool: str
    detail: str


class ApprovalSettled(WireModel):
    """The approval is answered (or timed out): fronts withdraw their question."""

    type: Literal["approvalSettled"] = "approvalSettled"
    approval_id: str
    answer: ApprovalAnswer


class ApplyRequested(WireModel):
    """`/apply N` in a chat: the front that sent the message applies, against its
    editor's text, and tells the thread how it went (`daemon/thread/note`)."""

    type: Literal["applyRequested"] = "applyRequested"
    agent_id: str
    thread_id: str
    front_id: str
    #: `/apply 3 5 7`: all of them in this order (`forkyard/agent/applyAll`), `agentId`
    #: the first; empty for one agent.
    agent_ids: list[str] = Field(default_factory=list)


class SettingsChanged(WireModel):
    """The repository's settings were read again (a config file changed, a trust)."""

    type: Literal["settingsChanged"] = "settingsChanged"
    capabilities: ForkyardCapabilities
    problems: list[SettingsProblemInfo]


Event = Annotated[
    AgentChanged
    | Notice
    | ChatDelta
    | ChatMessage
    | ChatTurn
    | ApprovalRequested
    | ApprovalSettled
    | ApplyRequested
    | SettingsChanged,
    Field(discriminator="type"),
]


class EventNotification(WireModel):
    event: Event


# --- daemon methods -------------------------------------------------------------------------


class SettingsProblemInfo(WireModel):
    source: str
    key: str
    message: str
    summary: str | None = None


class AttachParams(WireModel):
    root: str
    kind: Literal["editor", "terminal"] = "editor"
    name: str = ""
    version: str = ""
    protocol: int = DAEMON_PROTOCOL_VERSION
    initialization_options: dict[str, Any] | None = None
    client_settings: dict[str, Any] | None = None


class AttachResult(WireModel):
    front_id: str
    daemon_pid: int
    daemon_version: str
    protocol: int
    root: str
    state_dir: str
    capabilities: ForkyardCapabilities
    problems: list[SettingsProblemInfo]
    agents: list[Agent]
    #: "while you were away" lines: agents that ended with no front attached.
    away: list[str]
    #: Warnings for the person who opens the repository (worktrees no agent owns).
    warnings: list[str] = Field(default_factory=list)
    sandbox_problem: str | None = None
    allow_unsandboxed: bool = False
    #: Approvals already waiting, to be asked in this front too.
    approvals: list[ApprovalRequested] = Field(default_factory=list)


class ConfigureParams(WireModel):
    client_settings: dict[str, Any] | None = None


class ProblemsResult(WireModel):
    problems: list[SettingsProblemInfo]


class TrustParams(WireModel):
    path: str | None = None
    revoke: bool = False


class TrustChangeResult(WireModel):
    root: str
    trusted: bool
    ignored_keys: list[str]
    trust_file: str
    problems: list[SettingsProblemInfo]


class ApprovalAnswerParams(WireModel):
    approval_id: str
    answer: ApprovalAnswer


class ApprovalAnswerResult(WireModel):
    #: False: another front answered first (or the approval timed out).
    accepted: bool


class ReviewFile(WireModel):
    """One changed file of a done agent, with both sides, for the front's review."""

    change: dict[str, Any]
    base_text: str | None
    agent_text: str | None


class ReviewParams(WireModel):
    agent_id: str


class ReviewResult(WireModel):
    agent: Agent
    files: list[ReviewFile]


class MarkAppliedParams(WireModel):
    agent_id: str


class ThreadNoteParams(WireModel):
    thread_id: str
    text: str
    agent_id: str | None = None


class GcParams(WireModel):
    dry_run: bool = False
    #: Agent numbers whose worktrees go whatever their state (work kept in a ref).
    agents: list[int] = Field(default_factory=list)


class GcResult(WireModel):
    lines: list[str]
    errors: int


class DaemonChatParams(WireModel):
    """`forkyard/chat` as the front passes it on: the editor context already read."""

    text: str
    thread_id: str | None = None
    context_text: str | None = None


class StopParams(WireModel):
    now: bool = False


class StopResult(WireModel):
    running: int


class FrontInfo(WireModel):
    id: str
    kind: str
    name: str
    root: str


class DaemonStatus(WireModel):
    pid: int
    socket: str
    version: str
    uptime_seconds: float
    repositories: list[str]
    fronts: list[FrontInfo]
    agents: dict[str, int]
    state_dir: str
    log_file: str
    stopping: bool = False


class Empty(WireModel):
    pass


#: The daemon's own methods: method -> (params model, result model). `daemon/status` and
#: `daemon/stop` need no attach.
DAEMON_REQUESTS: dict[str, tuple[type[WireModel], type[WireModel]]] = {
    "daemon/attach": (AttachParams, AttachResult),
    "daemon/status": (Empty, DaemonStatus),
    "daemon/stop": (StopParams, StopResult),
    "daemon/configure": (ConfigureParams, ProblemsResult),
    "daemon/trust": (TrustParams, TrustChangeResult),
    "daemon/approval/answer": (ApprovalAnswerParams, ApprovalAnswerResult),
    "daemon/review": (ReviewParams, ReviewResult),
    "daemon/markApplied": (MarkAppliedParams, Empty),
    "daemon/thread/note": (ThreadNoteParams, Empty),
    "daemon/chat": (DaemonChatParams, ChatResult),
    "daemon/stats": (ServerStatsParams, ServerStatsResult),
    "daemon/gc": (GcParams, GcResult),
}

EventNotification.model_rebuild()
SettingsChanged.model_rebuild()
