"""Apply plans (pure data, code points) to an LSP WorkspaceEdit in the client's terms:
its position encoding, `documentChanges` and resource operations when it has them.

An editor follows links when it creates or edits a file, so every URI sent is checked
here to be a file:// URI inside the checkout (the links on the way were refused when
the apply was planned: `forkyard.workspace.confined`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lsprotocol import types

from forkyard.lsp.positions import to_position_units
from forkyard.workspace.apply import FilePlan, TextEdit
from forkyard.workspace.confined import UnsafePathError, spelling_problem
from forkyard.workspace.hunks import split_lines

Encoding = str


@dataclass
class EditBuild:
    edit: types.WorkspaceEdit
    #: What the client cannot do itself (no resource operations): the server writes
    #: these files (checkout-relative path -> text; None: delete) after the client
    #: accepted the edit, with `confined.write_files`.
    server_writes: dict[str, str | None] = field(default_factory=dict)
    touched: list[str] = field(default_factory=list)


def lsp_position(lines: list[str], line: int, char: int, encoding: Encoding) -> types.Position:
    if line >= len(lines):
        return types.Position(line=line, character=0)
    text = lines[line].rstrip("\r\n")
    units = to_position_units(text, min(char, len(text)), encoding)  # type: ignore[arg-type]
    return types.Position(line=line, character=units)


def lsp_text_edits(current: str, edits: list[TextEdit], encoding: Encoding) -> list[types.TextEdit]:
    lines = split_lines(current)
    return [
        types.TextEdit(
            range=types.Range(
                start=lsp_position(lines, e.start_line, e.start_char, encoding),
                end=lsp_position(lines, e.end_line, e.end_char, encoding),
            ),
            new_text=e.new_text,
        )
        for e in edits
    ]


def checked_uri(root: Path, path: str) -> str:
    """The file:// URI of `path` in the checkout at `root`; UnsafePathError for a path
    that could name something outside it."""
    if (problem := spelling_problem(path)) is not None:
        raise UnsafePathError(problem)
    target = root / path
    if not target.is_absolute() or not target.is_relative_to(root):
        raise UnsafePathError(f"{path}: is outside your checkout")
    return target.as_uri()


def build_workspace_edit(
    plans: list[FilePlan],
    root: Path,
    current_texts: dict[str, str | None],
    versions: dict[str, int | None],
    *,
    encoding: Encoding,
    document_changes: bool,
    resource_operations: set[str],
) -> EditBuild:
    """One WorkspaceEdit for the whole apply, so the editor undoes it in one step.

    Raises UnsafePathError, sending nothing, if any plan's path could leave the checkout
    (`root`, absolute): the planner refuses those first, so this is the last line."""
    changes: dict[str, list[types.TextEdit]] = {}
    operations: list[
        types.TextDocumentEdit | types.CreateFile | types.RenameFile | types.DeleteFile
    ] = []
    build = EditBuild(types.WorkspaceEdit())
    for plan in plans:
        if plan.kind == "noop":
            continue
        path = plan.path
        uri = checked_uri(root, path)
        build.touched.append(plan.path)
        if plan.kind == "delete":
            if document_changes and "delete" in resource_operations:
                operations.append(
                    types.DeleteFile(
                        uri=uri, options=types.DeleteFileOptions(ignore_if_not_exists=True)
                    )
                )
            else:
                build.server_writes[path] = None
            continue
        if plan.kind == "create" and not (document_changes and "create" in resource_operations):
            build.server_writes[path] = plan.new_text or ""
            continue
        current = current_texts.get(plan.path) or ""
        text_edits = lsp_text_edits(current, plan.edits, encoding)
        if document_changes:
            if plan.kind == "create":
                operations.append(
                    types.CreateFile(
                        uri=uri, options=types.CreateFileOptions(ignore_if_exists=True)
                    )
                )
            identifier = types.OptionalVersionedTextDocumentIdentifier(
                uri=uri, version=versions.get(plan.path)
            )
            operations.append(
                types.TextDocumentEdit(text_document=identifier, edits=list(text_edits))
            )
        else:
            changes[uri] = text_edits
    if document_changes:
        build.edit.document_changes = operations
    else:
        build.edit.changes = changes
    return build
