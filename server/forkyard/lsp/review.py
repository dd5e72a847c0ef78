"""Review in the editor: diagnostics over agents' hunks, code actions to apply them, and
the one apply path (`forkyard/agent/apply`, the code actions, `forkyard.apply`, `/apply`)
that merges against the user's current text and sends one `workspace/applyEdit`."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream
from lsprotocol import types
from pygls.exceptions import JsonRpcException, JsonRpcInvalidParams
from pygls.uris import to_fs_path

from forkyard.errors import ForkyardError, InvalidRequest
from forkyard.lsp.apply_all import ApplyAll
from forkyard.lsp.arguments import agent_arg, raise_invalid
from forkyard.lsp.edits import build_workspace_edit
from forkyard.lsp.review_actions import ReviewActions
from forkyard.lsp.review_data import SOURCE_KIND, hunk_diagnostics, resolve_action
from forkyard.lsp.server import ForkyardServer
from forkyard.lsp.session import FrontSession, front_severity
from forkyard.notices import notice_route
from forkyard.review.outcome import ApplyOutcome, apply_outcome_text
from forkyard.review.service import AgentReview, ApplyPlan, FileReview, ReviewService
from forkyard.workspace import confined
from forkyard_protocol.daemon import AgentChanged, ApplyRequested, Event, SettingsChanged
from forkyard_protocol.messages import (
    DONE_ACTIONS,
    AgentApplyParams,
    AgentApplyResult,
    AgentDiffResult,
    AgentResult,
)
from forkyard_protocol.models import Agent, Conflict

logger = logging.getLogger(__name__)

REFRESH_DELAY_SECONDS = 0.05


class Review:
    """The editor side of reviewing; one per server."""

    def __init__(self, server: ForkyardServer) -> None:
        self.server = server
        self._pending_refresh: set[str] = set()
        self._published: set[str] = set()
        self.actions = ReviewActions(self)
        self.apply_all = ApplyAll(self)

    @property
    def front(self) -> FrontSession:
        return self.server.require_front()

    @property
    def service(self) -> ReviewService:
        return self.front.review

    @property
    def root(self) -> Path:
        return self.front.root

    # --- paths, texts -----------------------------------------------------------------

    def path_of(self, uri: str) -> str | None:
        fs_path = to_fs_path(uri)
        if fs_path is None:
            return None
        try:
            return Path(fs_path).relative_to(self.root).as_posix()
        except ValueError:
            return None

    def uri_of(self, path: str) -> str:
        return (self.root / path).as_uri()

    def _document(self, path: str) -> Any:
        return self._documents().get(path)

    def _documents(self) -> dict[str, Any]:
        """Open documents by repository path."""
        found: dict[str, Any] = {}
        for uri, document in self.server.workspace.text_documents.items():
            if (path := self.path_of(uri)) is not None:
                found[path] = document
        return found

    async def current_text(self, path: str) -> str | None:
        """The user's text of a file: the open buffer, else the file on disk."""
        return (await self.current_texts([path]))[path]

    async def current_texts(self, paths: list[str]) -> dict[str, str | None]:
        """Many files' current texts, with one worker thread for those read from disk."""
        documents = self._documents()
        texts: dict[str, str | None] = {}
        on_disk: list[str] = []
        for path in paths:
            if (document := documents.get(path)) is not None:
                texts[path] = document.source
            else:
                on_disk.append(path)
        if on_disk:
            texts |= await anyio.to_thread.run_sync(_read_disk_texts, self.root, on_disk)
        return texts

    @property
    def encoding(self) -> str:
        encoding = self.server.workspace.position_encoding
        return str(getattr(encoding, "value", encoding) or "utf-16")

    # --- diagnostics ------------------------------------------------------------------

    async def diagnostics_for(self, path: str) -> list[types.Diagnostic]:
        return (await self.diagnostics_for_paths([path]))[path]

    async def diagnostics_for_paths(self, paths: list[str]) -> dict[str, list[types.Diagnostic]]:
        """Diagnostics of many files in one worker thread: an agent that changed hundreds
        of files must not cost the event loop hundreds of thread hops."""
        texts = await self.current_texts(paths)
        pairs = {path: self.service.for_path(path) for path in paths}
        encoding = self.encoding
        severity = self.front.diagnostic_severity

        def compute() -> dict[str, list[types.Diagnostic]]:
            return {
                path: hunk_diagnostics(text, pairs[path], encoding, severity)
                if text is not None
                else []
                for path, text in texts.items()
            }

        return await anyio.to_thread.run_sync(compute)

    async def publish(self, path: str) -> None:
        await self.publish_paths([path])

    async def publish_paths(self, paths: list[str]) -> None:
        found = await self.diagnostics_for_paths(paths)
        for path, diagnostics in found.items():
            if diagnostics or path in self._published:
                self.server.text_document_publish_diagnostics(
                    types.PublishDiagnosticsParams(uri=self.uri_of(path), diagnostics=diagnostics)
                )
            if diagnostics:
                self._published.add(path)
            else:
                self._published.discard(path)

    async def reload_settings(self) -> None:
        """The settings changed (the client's, or a config file): a new
        `diagnostic_severity` redraws every file this front shows diagnostics in."""
        front = self.front
        severity = await anyio.to_thread.run_sync(
            front_severity, front.root, front.initialization_options, front.client_settings
        )
        if severity == front.diagnostic_severity:
            return
        front.diagnostic_severity = severity
        await self.publish_paths(sorted(self._published | set(self._documents())))

    def refresh_soon(self, path: str) -> None:
        """Coalesce bursts of edits into one recomputation."""
        if path in self._pending_refresh:
            return
        self._pending_refresh.add(path)

        async def later() -> None:
            await anyio.sleep(REFRESH_DELAY_SECONDS)
            self._pending_refresh.discard(path)
            await self.publish(path)

        self.server.spawn(later, f"diagnostics of {path}")

    # --- the daemon's events --------------------------------------------------------------

    async def consume(self, events: MemoryObjectReceiveStream[Event]) -> None:
        async with events:
            async for event in events:
                if isinstance(event, AgentChanged):
                    self.agent_changed(event.agent, event.previous_state)
                elif isinstance(event, ApplyRequested) and self._ours(event):
                    self.server.spawn(partial(self._apply_for_chat, event), "/apply")
                elif isinstance(event, SettingsChanged):
                    self.server.spawn(self.reload_settings, "diagnostic severity")

    def _ours(self, event: ApplyRequested) -> bool:
        return event.front_id == self.front.link.front_id

    def agent_changed(self, agent: Agent, previous_state: str | None) -> None:
        reviewed = self.service.cached(agent.id)
        if agent.state == "done" and (previous_state != "done" or reviewed is None):
            if reviewed is None or reviewed.agent.updated_at != agent.updated_at:
                self.server.spawn(lambda: self._on_done(agent), f"review of agent {agent.id}")
        elif agent.state != "done" and (dropped := self.service.drop(agent.id)):
            for path in dropped.files:
                self.refresh_soon(path)
        elif agent.state == "done" and reviewed is not None:
            self._done_agent_changed(reviewed, agent)

    def _done_agent_changed(self, reviewed: AgentReview, agent: Agent) -> None:
        """A done agent changed: rebased (its files again), or its overlaps (the
        diagnostics of its files, and of the agents it overlaps, say so)."""
        before = reviewed.agent
        if before.base_ref != agent.base_ref or before.changes != agent.changes:
            self.server.spawn(partial(self._reload, agent), f"review of agent {agent.id}")
        elif before.overlaps != agent.overlaps:
            reviewed.agent = agent
            for path in reviewed.files:
                self.refresh_soon(path)

    async def _reload(self, agent: Agent) -> None:
        old = self.service.cached(agent.id)
        review = await self.service.load(agent)
        await self.publish_paths(sorted(set(review.files) | set(old.files if old else [])))

    async def _apply_for_chat(self, event: ApplyRequested) -> None:
        """`/apply N` typed in this editor's chat: applied here, told in the thread."""
        number = self.front.resolve_agent(event.agent_id).number
        if len(event.agent_ids) > 1:
            await self.apply_all.for_chat(event)
            return
        try:
            result = await self.apply(event.agent_id)
            outcome = ApplyOutcome(
                result.applied, result.paths, [(c.path, c.reason) for c in result.conflicts]
            )
            text = apply_outcome_text(number, outcome)
        except ForkyardError as exc:
            text = f"Agent #{number} was not applied: {exc}"
        await self.front.call(
            "daemon/thread/note",
            {"threadId": event.thread_id, "text": text, "agentId": event.agent_id},
        )

    async def _on_done(self, agent: Agent) -> None:
        try:
            review = await self.service.load(agent)
        except Exception:
            logger.exception("cannot load the review of agent #%s", agent.number)
            return
        await self.publish_paths(list(review.files))
        if self.supports_message_actions():
            await self._ask_what_next(review)

    def client_resolves_actions(self) -> bool:
        document = self.server.client_capabilities.text_document
        code_action = document.code_action if document else None
        return bool(code_action and code_action.resolve_support)

    def supports_message_actions(self) -> bool:
        """Whether a done agent is asked about here (a structured client got its
        actions in `forkyard/notice` already)."""
        return notice_route(self.server.client_capabilities.experimental) == "actions"

    async def _ask_what_next(self, review: AgentReview) -> None:
        agent = review.agent
        c = agent.changes
        params = types.ShowMessageRequestParams(
            type=types.MessageType.Info,
            message=f"Forkyard agent #{agent.number} ({agent.title}) is done: "
            f"{c.files} file(s), +{c.additions} -{c.deletions}",
            actions=[types.MessageActionItem(title=t) for t in DONE_ACTIONS],
        )
        try:
            answer = await self.server.window_show_message_request_async(params)
        except Exception as exc:  # a client that cannot answer: nothing to do
            logger.info("done notice not answered: %s", exc)
            return
        choice = getattr(answer, "title", None)
        if choice == "Show diff":
            await self.show_diff(agent.id)
        elif choice == "Apply":
            await self.apply(agent.id)
        elif choice == "Discard":
            await self.front.call("forkyard/agent/discard", {"agentId": agent.id})

    # --- applying -----------------------------------------------------------------------

    async def apply(
        self,
        agent_ref: str,
        paths: list[str] | None = None,
        hunk_ids: list[str] | None = None,
        *,
        plan: ApplyPlan | None = None,
    ) -> AgentApplyResult:
        """`plan`: one already made against the current text (apply in order)."""
        if plan is None:
            plan = await self.service.confined_plan(
                self.root, agent_ref, self.current_text, paths, hunk_ids
            )
        agent = plan.agent
        texts = {p.path: await self.current_text(p.path) for p in plan.plans}
        versions: dict[str, int | None] = {}
        for p in plan.plans:
            document = self._document(p.path)
            versions[p.path] = document.version if document is not None else None
        workspace_caps = self.server.client_capabilities.workspace
        edit_caps = workspace_caps.workspace_edit if workspace_caps else None
        operations = (
            {str(getattr(op, "value", op)) for op in (edit_caps.resource_operations or [])}
            if edit_caps
            else set()
        )
        try:
            build = build_workspace_edit(
                plan.plans,
                self.root,
                texts,
                versions,
                encoding=self.encoding,
                document_changes=bool(edit_caps and edit_caps.document_changes),
                resource_operations=operations,
            )
        except confined.UnsafePathError as exc:
            raise InvalidRequest(
                f"agentId: agent #{agent.number} cannot be applied: {exc}"
            ) from exc
        applied = True
        if build.edit.changes or build.edit.document_changes:
            params = types.ApplyWorkspaceEditParams(
                edit=build.edit, label=f"Forkyard: agent #{agent.number}"
            )
            try:
                response = await self.server.workspace_apply_edit_async(params)
            except JsonRpcException as exc:
                # Some editors refuse with an error instead of `applied: false`: eglot
                # answers a user's "no" to its "Proceed?" question that way.
                logger.info("the editor refused the edit: %s", exc)
                response = None
            applied = bool(response and response.applied)
        failed: dict[str, str] = {}
        if applied and build.server_writes:
            # Checked again as they are written: a link swapped in since the plan is
            # refused there, never followed.
            failed = await anyio.to_thread.run_sync(
                confined.write_files, self.root, build.server_writes
            )
            build.touched = [path for path in build.touched if path not in failed]
            # One line (a longer one is cut): what went wrong first, the rest in the
            # apply's conflicts.
            written = len(build.server_writes) - len(failed)
            message = (
                f"Forkyard did not write {len(failed)} file(s): {next(iter(failed.values()))}"
                if failed
                else f"Forkyard created or deleted {written} file(s) itself (your editor can't)"
            )
            self.server.window_show_message(
                types.ShowMessageParams(
                    type=types.MessageType.Warning if failed else types.MessageType.Info,
                    message=message,
                )
            )
        conflicts = plan.conflicts + [Conflict(path=p, reason=r) for p, r in failed.items()]
        if applied and plan.complete and not failed:
            await self.front.call("daemon/markApplied", {"agentId": agent.id})
            if agent.group:
                self.server.spawn(
                    partial(self.apply_all.offer_discard_others, agent), "discard offer"
                )
        elif applied:
            for path in build.touched:
                self.refresh_soon(path)
        return AgentApplyResult(
            applied=applied, paths=build.touched if applied else [], conflicts=conflicts
        )

    async def show_diff(self, agent_ref: str) -> AgentResult:
        agent = self.front.resolve_agent(agent_ref)
        diff = AgentDiffResult.model_validate(
            await self.front.call("forkyard/agent/diff", {"agentId": agent.id})
        )
        target = self.front.state_dir / "diffs" / f"agent-{agent.number}.diff"
        patch = diff.patch

        def write() -> None:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(patch, encoding="utf-8")

        await anyio.to_thread.run_sync(write)
        try:
            await self.server.window_show_document_async(
                types.ShowDocumentParams(uri=target.as_uri(), take_focus=True)
            )
        except Exception as exc:  # a client without showDocument still has the file
            logger.info("showDocument failed: %s", exc)
        return AgentResult(agent=agent)

    # --- code actions ---------------------------------------------------------------------

    async def code_actions(self, params: types.CodeActionParams) -> list[types.CodeAction]:
        return await self.actions.code_actions(params)


def _read_disk_texts(root: Path, paths: list[str]) -> dict[str, str | None]:
    """Never through a link: a path of the agent's diff may run through one that points
    outside the checkout (it reads as no file, and the apply refuses it)."""
    return {path: confined.read_text(root, path) for path in paths}


def register(server: ForkyardServer, review: Review) -> None:
    @server.feature(types.TEXT_DOCUMENT_DID_OPEN)
    def did_open(ls: ForkyardServer, params: types.DidOpenTextDocumentParams) -> None:
        path = review.path_of(params.text_document.uri) if ls.front is not None else None
        if ls.front is not None and path and ls.front.review.for_path(path):
            review.refresh_soon(path)

    @server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(ls: ForkyardServer, params: types.DidChangeTextDocumentParams) -> None:
        path = review.path_of(params.text_document.uri) if ls.front is not None else None
        if path is not None:
            review.apply_all.document_changed(path)
        if ls.front is not None and path and ls.front.review.for_path(path):
            review.refresh_soon(path)

    @server.feature(
        types.TEXT_DOCUMENT_CODE_ACTION,
        types.CodeActionOptions(
            code_action_kinds=[types.CodeActionKind.QuickFix, SOURCE_KIND], resolve_provider=True
        ),
    )
    async def code_action(
        ls: ForkyardServer, params: types.CodeActionParams
    ) -> list[types.CodeAction] | None:
        if ls.front is None:
            return None
        return await review.code_actions(params)

    @server.feature(types.CODE_ACTION_RESOLVE)
    def code_action_resolve(ls: ForkyardServer, action: types.CodeAction) -> types.CodeAction:
        try:
            return resolve_action(action)
        except InvalidRequest as exc:
            raise JsonRpcInvalidParams(str(exc)) from exc

    @server.request("forkyard/agent/apply")
    async def apply(ls: ForkyardServer, params: AgentApplyParams) -> AgentApplyResult:
        return await review.apply(params.agent_id, params.paths, params.hunk_ids)

    @server.forkyard_command("forkyard.apply")
    async def apply_command(ls: ForkyardServer, *args: Any) -> AgentApplyResult:
        ref = agent_arg("forkyard.apply", args)
        paths = args[1] if len(args) > 1 else None
        hunk_ids = args[2] if len(args) > 2 else None
        for name, value in (("paths", paths), ("hunkIds", hunk_ids)):
            if value is not None and not (
                isinstance(value, list) and all(isinstance(v, str) for v in value)
            ):
                raise_invalid(f"{name} must be a list of strings")
        return await review.apply(ref, paths, hunk_ids)

    @server.forkyard_command("forkyard.showDiff")
    async def show_diff_command(ls: ForkyardServer, *args: Any) -> AgentResult:
        return await review.show_diff(agent_arg("forkyard.showDiff", args))


__all__ = ["FileReview", "Review", "register"]
