"""A minimal editor for end-to-end tests: it opens buffers, sends didOpen/didChange, and
answers `workspace/applyEdit` the way an LSP editor does (open buffers are edited in
memory, other files on disk; positions in UTF-16 code units)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lsprotocol import types
from pygls.uris import to_fs_path

from forkyard.client import ForkyardClient


def utf16_to_index(line: str, units: int) -> int:
    count = 0
    for index, char in enumerate(line):
        if count >= units:
            return index
        count += 2 if ord(char) > 0xFFFF else 1
    return len(line)


def offset_of(text: str, position: types.Position) -> int:
    lines = text.split("\n")
    if position.line >= len(lines):
        return len(text)
    before = sum(len(line) + 1 for line in lines[: position.line])
    return before + utf16_to_index(lines[position.line], position.character)


def apply_text_edits(text: str, edits: list[types.TextEdit]) -> str:
    spans = sorted(
        ((offset_of(text, e.range.start), offset_of(text, e.range.end), e.new_text) for e in edits),
        reverse=True,
    )
    for start, end, new_text in spans:
        text = text[:start] + new_text + text[end:]
    return text


class Editor:
    def __init__(self, client: ForkyardClient) -> None:
        self.client = client
        self.buffers: dict[str, str] = {}
        self.versions: dict[str, int] = {}
        self.edits: list[types.ApplyWorkspaceEditParams] = []
        self.refuse = False

        @client.lsp.feature(types.WORKSPACE_APPLY_EDIT)
        def apply_edit(params: types.ApplyWorkspaceEditParams) -> types.ApplyWorkspaceEditResult:
            return self._apply_edit(params)

    def open(self, path: Path) -> str:
        uri = path.as_uri()
        text = path.read_text()
        self.buffers[uri] = text
        self.versions[uri] = 1
        self.client.lsp.text_document_did_open(
            types.DidOpenTextDocumentParams(
                text_document=types.TextDocumentItem(
                    uri=uri, language_id="python", version=1, text=text
                )
            )
        )
        return uri

    def type_text(self, uri: str, new_text: str) -> None:
        """The user edits the buffer (unsaved)."""
        self.buffers[uri] = new_text
        self._did_change(uri)

    def _did_change(self, uri: str) -> None:
        self.versions[uri] += 1
        self.client.lsp.text_document_did_change(
            types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(
                    uri=uri, version=self.versions[uri]
                ),
                content_changes=[
                    types.TextDocumentContentChangeWholeDocument(text=self.buffers[uri])
                ],
            )
        )

    def _edit_document(self, uri: str, edits: list[types.TextEdit]) -> None:
        if uri in self.buffers:
            self.buffers[uri] = apply_text_edits(self.buffers[uri], edits)
            self._did_change(uri)
        else:
            path = Path(to_fs_path(uri) or uri)
            text = path.read_text() if path.exists() else ""
            path.write_text(apply_text_edits(text, edits))

    def _apply_edit(self, params: types.ApplyWorkspaceEditParams) -> types.ApplyWorkspaceEditResult:
        self.edits.append(params)
        if self.refuse:
            self.client.poke()
            return types.ApplyWorkspaceEditResult(applied=False, failure_reason="user said no")
        edit = params.edit
        for uri, text_edits in (edit.changes or {}).items():
            self._edit_document(uri, list(text_edits))
        for change in edit.document_changes or []:
            operation: Any = change
            if isinstance(change, types.TextDocumentEdit):
                self._edit_document(change.text_document.uri, list(change.edits))  # type: ignore[arg-type]
            elif isinstance(change, types.CreateFile):
                path = Path(to_fs_path(change.uri) or change.uri)
                if not path.exists():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text("")
            elif isinstance(change, types.DeleteFile):
                Path(to_fs_path(change.uri) or change.uri).unlink(missing_ok=True)
            else:
                raise TypeError(f"unexpected operation {operation!r}")
        self.client.poke()
        return types.ApplyWorkspaceEditResult(applied=True)
