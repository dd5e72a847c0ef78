"""From apply plans to the WorkspaceEdit an editor receives."""

from __future__ import annotations

from pathlib import Path

from lsprotocol import types

from forkyard.lsp.edits import build_workspace_edit, lsp_text_edits
from forkyard.workspace.apply import FilePlan, edits_between
from tests.e2e.editor import apply_text_edits

ROOT = Path("/repo")


def test_positions_are_in_utf16_units_for_non_ascii_lines() -> None:
    old = "héllo 😀 wörld\nsecond 😀 line\n"
    new = "héllo 😀 WORLD\nsecond 😀 line\n"
    [edit] = lsp_text_edits(old, edits_between(old, new), "utf-16")
    # "héllo 😀 " is 8 code points but 9 UTF-16 units: the emoji counts twice.
    assert edit.range.start == types.Position(line=0, character=9)
    assert edit.new_text == "WORLD"
    assert apply_text_edits(old, lsp_text_edits(old, edits_between(old, new), "utf-16")) == new


def test_utf8_and_utf32_encodings() -> None:
    old = "a😀b\n"
    new = "a😀c\n"
    [utf8] = lsp_text_edits(old, edits_between(old, new), "utf-8")
    [utf32] = lsp_text_edits(old, edits_between(old, new), "utf-32")
    assert utf8.range.start.character == 5
    assert utf32.range.start.character == 2


def plans() -> list[FilePlan]:
    return [
        FilePlan("a.py", "edit", "x = 2\n", edits_between("x = 1\n", "x = 2\n")),
        FilePlan("new.txt", "create", "hello\n", edits_between("", "hello\n")),
        FilePlan("gone.txt", "delete", None),
        FilePlan("same.txt", "noop", "same\n"),
    ]


def test_document_changes_with_resource_operations() -> None:
    build = build_workspace_edit(
        plans(),
        ROOT,
        {"a.py": "x = 1\n", "new.txt": None, "gone.txt": "bye\n"},
        {"a.py": 7},
        encoding="utf-16",
        document_changes=True,
        resource_operations={"create", "delete"},
    )
    kinds = [type(change).__name__ for change in build.edit.document_changes or []]
    assert kinds == ["TextDocumentEdit", "CreateFile", "TextDocumentEdit", "DeleteFile"]
    first = build.edit.document_changes[0]  # type: ignore[index]
    assert isinstance(first, types.TextDocumentEdit)
    assert first.text_document.version == 7, "edits are tied to the buffer's version"
    assert build.server_writes == {}
    assert build.touched == ["a.py", "new.txt", "gone.txt"]


def test_without_resource_operations_the_server_writes_the_files() -> None:
    build = build_workspace_edit(
        plans(),
        ROOT,
        {"a.py": "x = 1\n"},
        {},
        encoding="utf-16",
        document_changes=False,
        resource_operations=set(),
    )
    assert set((build.edit.changes or {}).keys()) == {(ROOT / "a.py").as_uri()}
    assert build.server_writes == {"new.txt": "hello\n", "gone.txt": None}
