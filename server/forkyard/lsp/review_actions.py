"""The review's code actions: `Apply hunk from agent #N` on a line inside an agent's hunk,
and `Apply agent #N to this file`, `Apply agent #N (all K files)`, `Discard agent #N` in
any file a done agent changed. Kept apart from `review.py`, and fast: an editor asks at
every cursor move, so the cursor-free source actions are built once per file and agents'
versions, and the file's lines are counted once per request, not once per agent."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lsprotocol import types

from forkyard.lsp.review_data import SOURCE, SOURCE_KIND, kind_wanted, make_action
from forkyard.review.service import AgentReview, FileReview
from forkyard.workspace.hunks import marked_lines, split_lines

if TYPE_CHECKING:
    from forkyard.lsp.review import Review


class ReviewActions:
    def __init__(self, review: Review) -> None:
        self.review = review
        #: path -> (the agents' versions, lazy, the source actions).
        self._source_actions: dict[
            str, tuple[tuple[tuple[str, str], ...], bool, list[types.CodeAction]]
        ] = {}

    async def code_actions(self, params: types.CodeActionParams) -> list[types.CodeAction]:
        path = self.review.path_of(params.text_document.uri)
        if path is None:
            return []
        pairs = self.review.service.for_path(path)
        if not pairs:
            return []
        text = await self.review.current_text(path)
        only = params.context.only
        lazy = self.review.client_resolves_actions()
        total = len(split_lines(text)) if text is not None else 0
        first, last = params.range.start.line, params.range.end.line
        actions: list[types.CodeAction] = []
        for review, file in pairs:
            agent = review.agent
            if text is not None and kind_wanted(types.CodeActionKind.QuickFix, only):
                located = await file.located_async(text)
                for hunk in located:
                    lines = marked_lines(hunk, total)
                    if (
                        hunk.applies
                        and lines.start <= last
                        and first <= max(lines.stop - 1, lines.start)
                    ):
                        linked = [
                            d
                            for d in params.context.diagnostics
                            if d.source == SOURCE
                            and isinstance(d.data, dict)
                            and d.data.get("hunkId") == hunk.hunk_id
                        ]
                        actions.append(
                            make_action(
                                f"Apply hunk from agent #{agent.number}",
                                types.CodeActionKind.QuickFix,
                                agent,
                                [path],
                                [hunk.hunk_id],
                                linked,
                                lazy,
                            )
                        )
        if kind_wanted(SOURCE_KIND, only):
            actions += self._source_actions_for(path, pairs, lazy)
        return actions

    def _source_actions_for(
        self, path: str, pairs: list[tuple[AgentReview, FileReview]], lazy: bool
    ) -> list[types.CodeAction]:
        key = tuple((review.agent.id, review.agent.updated_at) for review, _ in pairs)
        cached = self._source_actions.get(path)
        if cached is not None and cached[0] == key and cached[1] == lazy:
            return cached[2]
        actions: list[types.CodeAction] = []
        for review, _file in pairs:
            agent = review.agent
            n = agent.number
            actions += [
                make_action(
                    f"Apply agent #{n} to this file", SOURCE_KIND, agent, [path], None, [], lazy
                ),
                make_action(
                    f"Apply agent #{n} (all {len(review.files)} files)",
                    SOURCE_KIND,
                    agent,
                    None,
                    None,
                    [],
                    lazy,
                ),
                make_action(f"Discard agent #{n}", SOURCE_KIND, agent, None, None, [], lazy),
            ]
        self._source_actions[path] = (key, lazy, actions)
        return actions
