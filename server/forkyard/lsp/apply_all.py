"""Several agents into the editor, one after another (`forkyard/agent/applyAll`,
`/apply 3 5 7`, `forkyard.applyAll`): each merged three-way over the text the ones before
it left, each its own `workspace/applyEdit` (so its own undo step), stopping at the first
agent that would conflict, of which nothing is applied. Also the editor's side of
rebase and compare (passed on to the daemon), and the offer, once one agent of a best-of-N
group is applied, to discard the others (their work kept in refs, as every discard)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import anyio
from lsprotocol import types

from forkyard.errors import ForkyardError
from forkyard.lsp.arguments import agent_arg, raise_invalid
from forkyard.lsp.server import ForkyardServer
from forkyard.review.outcome import ApplyOutcome, apply_outcome_text
from forkyard_protocol import REQUESTS
from forkyard_protocol.daemon import ApplyRequested
from forkyard_protocol.messages import (
    AgentApplyAllResult,
    AgentApplyResult,
    AgentIdsParams,
    AgentRebaseResult,
)
from forkyard_protocol.models import Agent

if TYPE_CHECKING:
    from forkyard.lsp.review import Review

logger = logging.getLogger(__name__)

#: How long to wait for the editor's didChange of an edit it answered already (Neovim
#: sends it debounced): the next agent is merged over that text, at its version.
EDIT_ECHO_SECONDS = 3.0
DISCARD_OTHERS = "Discard the others"
KEEP_OTHERS = "Keep them"


class ApplyAll:
    def __init__(self, review: Review) -> None:
        self.review = review
        self._waiters: dict[str, anyio.Event] = {}

    def document_changed(self, path: str) -> None:
        """The editor told us of a change to an open document (didChange)."""
        if event := self._waiters.pop(path, None):
            event.set()

    async def apply_all(self, refs: list[str]) -> AgentApplyAllResult:
        review = self.review
        results: list[AgentApplyResult] = []
        for ref in refs:
            agent = review.front.resolve_agent(ref)
            plan = await review.service.confined_plan(review.root, agent.id, review.current_text)
            if plan.conflicts:
                results.append(AgentApplyResult(applied=False, paths=[], conflicts=plan.conflicts))
                return AgentApplyAllResult(results=results, stopped_at=agent.id)
            open_paths = [p.path for p in plan.plans if review._document(p.path) is not None]
            waiting = {path: self._waiters.setdefault(path, anyio.Event()) for path in open_paths}
            result = await review.apply(agent.id, plan=plan)
            results.append(result)
            if not result.applied:
                return AgentApplyAllResult(results=results, stopped_at=agent.id)
            with anyio.move_on_after(EDIT_ECHO_SECONDS):
                for path in result.paths:
                    if (event := waiting.get(path)) is not None:
                        await event.wait()
            for path in open_paths:
                self._waiters.pop(path, None)
        return AgentApplyAllResult(results=results, stopped_at=None)

    async def for_chat(self, event: ApplyRequested) -> None:
        """`/apply 3 5 7`: in that order, told in the thread agent by agent."""
        front = self.review.front
        try:
            result = await self.apply_all(event.agent_ids)
            lines = []
            for ref, one in zip(event.agent_ids, result.results, strict=False):
                agent = front.resolve_agent(ref)
                if result.stopped_at == agent.id and one.conflicts:
                    lines.append(
                        f"Stopped at agent #{agent.number}: it conflicts with what is applied "
                        "(nothing of it was applied):\n"
                        + "\n".join(f"- `{c.path}`: {c.reason}" for c in one.conflicts)
                    )
                else:
                    conflicts = [(c.path, c.reason) for c in one.conflicts]
                    outcome = ApplyOutcome(one.applied, one.paths, conflicts)
                    lines.append(apply_outcome_text(agent.number, outcome))
            text = "\n\n".join(lines)
        except ForkyardError as exc:
            text = f"Not applied: {exc}"
        await front.call(
            "daemon/thread/note",
            {"threadId": event.thread_id, "text": text, "agentId": event.agent_id},
        )

    async def offer_discard_others(self, applied: Agent) -> None:
        """One agent of a group applied: ask whether the rest of it goes."""
        others = [
            a
            for a in self.review.front.agents()
            if applied.group and a.group == applied.group and a.id != applied.id
            and a.state == "done"
        ]  # fmt: skip
        if not others:
            return
        names = ", ".join(f"#{a.number}" for a in sorted(others, key=lambda a: a.number))
        if not self.review.supports_message_actions():
            # A client that did not opt into questions (stock Neovim would block on one).
            self.review.server.window_show_message(
                types.ShowMessageParams(
                    type=types.MessageType.Info,
                    message=f"Forkyard: #{applied.number} applied; {names} of its group remain",
                )
            )
            return
        params = types.ShowMessageRequestParams(
            type=types.MessageType.Info,
            message=f"Agent #{applied.number} applied; discard {names} of its group?",
            actions=[types.MessageActionItem(title=t) for t in (DISCARD_OTHERS, KEEP_OTHERS)],
        )
        try:
            answer = await self.review.server.window_show_message_request_async(params)
        except Exception as exc:  # a client that cannot answer keeps them
            logger.info("discard offer not answered: %s", exc)
            return
        if getattr(answer, "title", None) == DISCARD_OTHERS:
            for other in others:
                await self.review.front.call("forkyard/agent/discard", {"agentId": other.id})


def register(server: ForkyardServer, review: Review) -> None:
    applier = review.apply_all

    @server.request("forkyard/agent/applyAll")
    async def apply_all(ls: ForkyardServer, params: AgentIdsParams) -> AgentApplyAllResult:
        return await applier.apply_all(params.agent_ids)

    @server.forkyard_command("forkyard.applyAll")
    async def apply_all_command(ls: ForkyardServer, *args: Any) -> AgentApplyAllResult:
        refs = list(args[0]) if args and isinstance(args[0], list) else list(args)
        if not refs or not all(isinstance(r, str | int) for r in refs):
            raise_invalid("forkyard.applyAll takes agent ids, in order")
        return await applier.apply_all([str(r) for r in refs])

    def pass_on(method: str) -> None:
        result_model = REQUESTS[method][1]

        @server.request(method)
        async def handler(ls: ForkyardServer, params: Any) -> Any:
            return result_model.model_validate(await ls.require_front().call(method, params.wire()))

    for method in ("forkyard/agent/rebase", "forkyard/agent/compare"):
        pass_on(method)

    @server.forkyard_command("forkyard.rebase")
    async def rebase_command(ls: ForkyardServer, *args: Any) -> AgentRebaseResult:
        ref = agent_arg("forkyard.rebase", args)
        raw = await ls.require_front().call("forkyard/agent/rebase", {"agentId": ref})
        return AgentRebaseResult.model_validate(raw)
