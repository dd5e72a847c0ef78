"""Code lenses over agents' hunks: `Apply hunk from agent #N`, `Show diff` and `Discard`
above each hunk of a done agent that still applies to the user's text.

A lens is drawn where the change is, without the cursor having to be there first (a
quick fix needs a lightbulb the person must find), and VS Code and Neovim show lenses
out of the box. `Show diff` and `Discard` come once per agent and file, over its first
hunk. Listing is cheap, like code actions: lenses carry `data` and get their
command in `codeLens/resolve`. A file's answer is built as plain JSON once per text and
agents' versions and sent as it is (`EncodedResult`): a client asks again on every scroll
and focus, and unstructuring a thousand lsprotocol objects each time cost tens of ms.
When agents reach `done` or leave it, clients that support it are asked to refresh
(`workspace/codeLens/refresh`).
"""

from __future__ import annotations

import json
import logging
from functools import partial
from typing import Any

from anyio.streams.memory import MemoryObjectReceiveStream
from lsprotocol import types
from pygls.exceptions import JsonRpcInvalidParams

from forkyard.errors import ForkyardError
from forkyard.lsp.review import Review
from forkyard.lsp.server import EncodedResult, ForkyardServer
from forkyard.workspace.hunks import marked_lines, split_lines
from forkyard_protocol.daemon import AgentChanged, Event

logger = logging.getLogger(__name__)

NO_LENSES = EncodedResult("[]")

#: What each lens of a hunk does, in the order they are drawn.
LENS_KINDS = ("apply", "diff", "discard")


def lens_title(kind: str, number: int) -> str:
    return {
        "apply": f"Apply hunk from agent #{number}",
        "diff": "Show diff",
        "discard": f"Discard agent #{number}",
    }[kind]


def resolve_lens(lens: types.CodeLens) -> types.CodeLens:
    """The command of a listed lens (what `data` says), or -32602 for a lens that is
    not ours."""
    data = lens.data if isinstance(lens.data, dict) else {}
    agent_id, kind, number = data.get("agentId"), data.get("kind"), data.get("number")
    if not isinstance(agent_id, str) or kind not in LENS_KINDS or not isinstance(number, int):
        raise JsonRpcInvalidParams("data: not a Forkyard code lens")
    title = lens_title(kind, number)
    if kind == "apply":
        arguments: list[Any] = [agent_id, [data.get("path")], [data.get("hunkId")]]
        lens.command = types.Command(title=title, command="forkyard.apply", arguments=arguments)
    elif kind == "diff":
        lens.command = types.Command(title=title, command="forkyard.showDiff", arguments=[agent_id])
    else:
        lens.command = types.Command(title=title, command="forkyard.discard", arguments=[agent_id])
    return lens


class Lenses:
    """The lenses of one server; reads the review's located hunks (cached per text)."""

    def __init__(self, server: ForkyardServer, review: Review) -> None:
        self.server = server
        self.review = review
        #: path -> (the agents' versions, the text, its lenses as JSON): the answer
        #: changes only with the text or the agents.
        self._cache: dict[str, tuple[tuple[tuple[str, str], ...], str, EncodedResult]] = {}

    async def lenses(self, uri: str) -> EncodedResult:
        path = self.review.path_of(uri)
        if path is None or self.server.front is None:
            return NO_LENSES
        pairs = self.review.service.for_path(path)
        if not pairs:
            return NO_LENSES
        text = await self.review.current_text(path)
        if text is None:
            return NO_LENSES
        key = tuple((review.agent.id, review.agent.updated_at) for review, _ in pairs)
        cached = self._cache.get(path)
        if cached is not None and cached[0] == key and cached[1] == text:
            return cached[2]
        total = len(split_lines(text))
        found: list[dict[str, Any]] = []
        for review, file in pairs:
            agent = review.agent
            first = True
            for hunk in await file.located_async(text):
                if not hunk.applies:
                    continue
                lines = marked_lines(hunk, total)
                line = lines.start if lines else 0
                at = {"line": line, "character": 0}
                where = {"start": at, "end": at}
                # The agent's own lenses once per file, over its first hunk: a lens
                # row per hunk stays short, and the file does not fill with repeats.
                for kind in LENS_KINDS if first else ("apply",):
                    data = {
                        "agentId": agent.id,
                        "number": agent.number,
                        "kind": kind,
                        "path": path,
                        "hunkId": hunk.hunk_id,
                    }
                    found.append({"range": where, "data": data})
                first = False
        encoded = EncodedResult(json.dumps(found, separators=(",", ":")))
        self._cache[path] = (key, text, encoded)
        return encoded

    async def consume(self, events: MemoryObjectReceiveStream[Event]) -> None:
        """Lenses move when an agent reaches `done` or leaves it: ask for a refresh,
        once the review of a done agent is loaded (else the client asks too early)."""
        async with events:
            async for event in events:
                if not isinstance(event, AgentChanged) or not self._refreshes():
                    continue
                agent = event.agent
                if agent.state == "done" and event.previous_state != "done":
                    self.server.spawn(partial(self._loaded_then_refresh, agent.id), "lenses")
                elif event.previous_state == "done" and agent.state != "done":
                    self.server.spawn(self._refresh, "code lens refresh")

    def _refreshes(self) -> bool:
        workspace = self.server.client_capabilities.workspace
        code_lens = workspace.code_lens if workspace else None
        return bool(code_lens and code_lens.refresh_support)

    async def _loaded_then_refresh(self, agent_id: str) -> None:
        try:
            await self.review.service.get(agent_id)
        except ForkyardError:
            return  # no longer done: nothing to draw
        await self._refresh()

    async def _refresh(self) -> None:
        try:
            await self.server.workspace_code_lens_refresh_async(None)
        except Exception as exc:  # a client that refuses: it asks again on its own
            logger.info("codeLens refresh refused: %s", exc)


def register(server: ForkyardServer, lenses: Lenses) -> None:
    @server.feature(types.TEXT_DOCUMENT_CODE_LENS, types.CodeLensOptions(resolve_provider=True))
    async def code_lens(ls: ForkyardServer, params: types.CodeLensParams) -> EncodedResult:
        return await lenses.lenses(params.text_document.uri)

    @server.feature(types.CODE_LENS_RESOLVE)
    def code_lens_resolve(ls: ForkyardServer, lens: types.CodeLens) -> types.CodeLens:
        return resolve_lens(lens)
