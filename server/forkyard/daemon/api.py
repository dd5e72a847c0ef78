"""The daemon's API: one thin handler per method, each validating its params with the
protocol's model and calling one domain method of the front's session.

`DaemonApi.call` is the whole API, in-process: the socket server calls it for each
request, and domain tests call it directly with a fake front.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import forkyard
from forkyard.daemon.hub import Front, Hub, Session, problem_info
from forkyard.errors import InvalidRequest, NotReady, validated
from forkyard.orchestrator.groups import compare as compare_agents
from forkyard.orchestrator.groups import dispatch_group
from forkyard.orchestrator.materialize import materialize as materialize_agent
from forkyard.orchestrator.rebase import rebase as rebase_agent
from forkyard.orchestrator.retry import retry as retry_agent
from forkyard.review.service import load_review_files
from forkyard_protocol import REQUESTS, WireModel
from forkyard_protocol.daemon import (
    DAEMON_REQUESTS,
    FRONT_ONLY,
    ApprovalAnswerParams,
    ApprovalAnswerResult,
    ConfigureParams,
    DaemonChatParams,
    Empty,
    GcParams,
    GcResult,
    MarkAppliedParams,
    ProblemsResult,
    ReviewFile,
    ReviewParams,
    ReviewResult,
    ThreadNoteParams,
    TrustChangeResult,
    TrustParams,
)
from forkyard_protocol.messages import (
    AgentCompareResult,
    AgentDiffResult,
    AgentDispatchParams,
    AgentDispatchResult,
    AgentFileParams,
    AgentFileResult,
    AgentIdsParams,
    AgentListResult,
    AgentMessageParams,
    AgentReadResult,
    AgentRebaseParams,
    AgentRebaseResult,
    AgentRef,
    AgentResult,
    ChatInterruptParams,
    ChatResult,
    ModelSummary,
    ServerStatsResult,
    StatusParams,
    StatusResult,
    ThreadListResult,
    ThreadReadParams,
    ThreadReadResult,
    WorktreeDiskUse,
)

Handler = Callable[[Session, Front, Any], Awaitable[WireModel]]
_HANDLERS: dict[str, Handler] = {}


def handles(method: str) -> Callable[[Handler], Handler]:
    def register(func: Handler) -> Handler:
        _HANDLERS[method] = func
        return func

    return register


def parse(method: str, raw: Any) -> WireModel:
    return validated(method, (DAEMON_REQUESTS.get(method) or REQUESTS[method])[0], raw)


class LoopStall(Protocol):
    max_stall: float


class DaemonApi:
    def __init__(self, hub: Hub, loop_watch: LoopStall | None = None) -> None:
        self.hub = hub
        self.loop_watch = loop_watch

    async def call(self, front: Front | None, method: str, raw: Any) -> dict[str, Any]:
        """Serve one request of an attached front (`daemon/attach` itself is the socket
        server's, which owns the connection)."""
        handler = _HANDLERS.get(method)
        if (handler is None and method != "daemon/stats") or method in FRONT_ONLY:
            raise InvalidRequest(f"{method}: not a method of the daemon")
        params = parse(method, raw)
        if front is None or front.session is None:
            raise NotReady(f"{method}: send daemon/attach first")
        if handler is None:
            stall = self.loop_watch.max_stall if self.loop_watch else 0.0
            if self.loop_watch and getattr(params, "reset", False):
                self.loop_watch.max_stall = 0.0
            uptime = time.monotonic() - self.hub.started
            return _stats(front.session, uptime, stall).wire()
        return (await handler(front.session, front, params)).wire()


# --- agents -----------------------------------------------------------------------------


@handles("forkyard/agent/dispatch")
async def dispatch(
    session: Session, _front: Front, params: AgentDispatchParams
) -> AgentDispatchResult:
    agents = await dispatch_group(session.app.orchestrator, params)
    return AgentDispatchResult(agent=agents[0], agents=agents)


@handles("forkyard/agent/rebase")
async def rebase(session: Session, _front: Front, params: AgentRebaseParams) -> AgentRebaseResult:
    agent, conflicts = await rebase_agent(session.app.orchestrator, params.agent_id, params.onto)
    return AgentRebaseResult(agent=agent, conflicts=conflicts)


@handles("forkyard/agent/compare")
async def compare(session: Session, _front: Front, params: AgentIdsParams) -> AgentCompareResult:
    return await compare_agents(session.app.orchestrator, params.agent_ids)


@handles("forkyard/agent/list")
async def list_agents(session: Session, _front: Front, _params: Empty) -> AgentListResult:
    return AgentListResult(agents=session.app.orchestrator.agents())


@handles("forkyard/agent/read")
async def read(session: Session, _front: Front, params: AgentRef) -> AgentReadResult:
    agent, log = await session.app.orchestrator.read(params.agent_id)
    return AgentReadResult(agent=agent, log=log)


@handles("forkyard/agent/message")
async def message(session: Session, _front: Front, params: AgentMessageParams) -> AgentResult:
    orchestrator = session.app.orchestrator
    agent = await orchestrator.message(
        params.agent_id, params.text, budget_usd=params.budget_usd, max_tokens=params.max_tokens
    )
    return AgentResult(agent=agent)


@handles("forkyard/agent/cancel")
async def cancel(session: Session, _front: Front, params: AgentRef) -> AgentResult:
    return AgentResult(agent=await session.app.orchestrator.cancel(params.agent_id))


@handles("forkyard/agent/discard")
async def discard(session: Session, _front: Front, params: AgentRef) -> AgentResult:
    return AgentResult(agent=await session.app.orchestrator.discard(params.agent_id))


@handles("forkyard/agent/retry")
async def retry(session: Session, _front: Front, params: AgentRef) -> AgentResult:
    return AgentResult(agent=await retry_agent(session.app.orchestrator, params.agent_id))


@handles("forkyard/agent/materialize")
async def materialize(session: Session, _front: Front, params: AgentRef) -> AgentResult:
    orchestrator = session.app.orchestrator
    return AgentResult(agent=await materialize_agent(orchestrator, params.agent_id))


@handles("forkyard/agent/diff")
async def diff(session: Session, _front: Front, params: AgentRef) -> AgentDiffResult:
    orchestrator = session.app.orchestrator
    agent = orchestrator.resolve(params.agent_id).agent
    result = await orchestrator.diff(params.agent_id)
    return AgentDiffResult(
        agent_id=agent.id,
        base_ref=agent.base_ref,
        patch=result.patch if result else "",
        files=result.files if result else [],
    )


@handles("forkyard/agent/file")
async def file(session: Session, _front: Front, params: AgentFileParams) -> AgentFileResult:
    return AgentFileResult(text=await session.app.orchestrator.file(params.agent_id, params.path))


@handles("daemon/review")
async def review(session: Session, _front: Front, params: ReviewParams) -> ReviewResult:
    agent = session.app.orchestrator.resolve(params.agent_id).agent
    files = await load_review_files(session.app.orchestrator, agent)
    return ReviewResult(
        agent=agent,
        files=[
            ReviewFile(change=change.wire(), base_text=base, agent_text=text)
            for change, base, text in files
        ],
    )


@handles("daemon/markApplied")
async def mark_applied(session: Session, _front: Front, params: MarkAppliedParams) -> Empty:
    await session.app.orchestrator.mark_applied(params.agent_id)
    return Empty()


@handles("daemon/approval/answer")
async def answer_approval(
    session: Session, _front: Front, params: ApprovalAnswerParams
) -> ApprovalAnswerResult:
    return ApprovalAnswerResult(
        accepted=session.app.approvals.answer(params.approval_id, params.answer)
    )


# --- the conversation -------------------------------------------------------------------


@handles("daemon/chat")
async def chat(session: Session, front: Front, params: DaemonChatParams) -> ChatResult:
    thread_id, turn_id, message_id = await session.app.conversation.chat(
        params.text, params.thread_id, params.context_text, origin=front.id
    )
    return ChatResult(thread_id=thread_id, turn_id=turn_id, message_id=message_id)


@handles("forkyard/chat/interrupt")
async def interrupt(session: Session, _front: Front, params: ChatInterruptParams) -> Empty:
    await session.app.conversation.interrupt(params.thread_id)
    return Empty()


@handles("forkyard/thread/list")
async def thread_list(session: Session, _front: Front, _params: Empty) -> ThreadListResult:
    return ThreadListResult(threads=await session.app.conversation.threads())


@handles("forkyard/thread/read")
async def thread_read(
    session: Session, _front: Front, params: ThreadReadParams
) -> ThreadReadResult:
    thread, messages = await session.app.conversation.read(params.thread_id)
    return ThreadReadResult(thread=thread, messages=messages)


@handles("daemon/thread/note")
async def thread_note(session: Session, _front: Front, params: ThreadNoteParams) -> Empty:
    await session.app.conversation.note(params.thread_id, params.text, params.agent_id)
    return Empty()


# --- settings, trust, status ------------------------------------------------------------


@handles("daemon/configure")
async def configure(session: Session, _front: Front, params: ConfigureParams) -> ProblemsResult:
    return ProblemsResult(
        problems=problem_info(await session.app.reload_settings(params.client_settings))
    )


@handles("daemon/trust")
async def trust(session: Session, _front: Front, params: TrustParams) -> TrustChangeResult:
    change = await session.app.trust(
        Path(params.path) if params.path else None, revoke=params.revoke
    )
    return TrustChangeResult(
        root=str(change.root),
        trusted=change.trusted,
        ignored_keys=change.ignored_keys,
        trust_file=str(change.trust_file),
        problems=problem_info(change.problems),
    )


@handles("daemon/gc")
async def gc(session: Session, _front: Front, params: GcParams) -> GcResult:
    """`forkyard gc` while the daemon runs: the daemon owns the worktrees, so it removes
    them, and its agents learn at once."""
    report = await session.app.orchestrator.collect_garbage(
        dry_run=params.dry_run, forced=frozenset(params.agents)
    )
    return GcResult(lines=report.lines(), errors=len(report.errors))


@handles("forkyard/status")
async def status(session: Session, _front: Front, params: StatusParams) -> StatusResult:
    app = session.app
    orchestrator = app.orchestrator
    uses = await orchestrator.worktrees.usage(measure=params.disk)
    return StatusResult(
        worktrees=[
            WorktreeDiskUse(
                path=use.path,
                kind=use.kind,
                disk_bytes=use.disk_bytes,
                exists=use.exists,
                agent_id=use.agent.id if use.agent else None,
                number=use.agent.number if use.agent else None,
                state=use.agent.state if use.agent else None,
            )
            for use in uses
        ],
        total_disk_bytes=sum(use.disk_bytes for use in uses),
        pool_ready=len(orchestrator.pool.ready),
        pool_size=orchestrator.settings.worktree.pool_size,
        pool_error=orchestrator.pool.last_error,
        worktree_mode=(mode := await orchestrator.pool.choose_mode()).mode,
        worktree_mode_reason=mode.reason,
        trusted=app.loaded.trusted,
        ignored_keys=app.loaded.ignored_keys,
        trust_file=str(app.trust_file()),
    )


def _stats(session: Session, uptime: float, max_stall: float) -> ServerStatsResult:
    app = session.app
    agents = app.orchestrator.agents()
    return ServerStatsResult(
        version=forkyard.__version__,
        models={
            name: ModelSummary(
                provider=config.provider,
                base_url=config.base_url,
                model=config.model,
                api_key_env=config.api_key_env,
            )
            for name, config in app.settings.models.items()
        },
        uptime_seconds=uptime,
        max_loop_stall_ms=max_stall * 1000,
        agents_running=sum(a.state in ("starting", "running") for a in agents),
        agents_queued=sum(a.state == "queued" for a in agents),
    )
