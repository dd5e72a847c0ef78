"""ARCHITECTURE.md's code map says what each folder must not import; this holds it.

The table is read from the document itself, so changing a rule there changes the test,
and a module that breaks one fails here naming the import and the line."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROW = re.compile(r"^\| (?P<places>[^|]+) \| [^|]* \| (?P<forbidden>[^|]+) \|$")


def code_map() -> list[tuple[list[Path], list[str]]]:
    """(files of a row, the modules they must not import), for rows that forbid any."""
    text = (ROOT / "ARCHITECTURE.md").read_text()
    table = text.split("## Code map", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in table.splitlines():
        match = ROW.match(line.strip())
        if match is None or match["forbidden"].strip() in ("—", "must not import"):
            continue
        places = re.findall(r"`([^`]+)`", match["places"])
        if not places:  # the header's rule
            continue
        files: list[Path] = []
        for place in places:
            if place.endswith("/"):
                files += sorted((ROOT / place).rglob("*.py"))
            elif place.endswith(".py"):
                # "`settings.py`, `trust.py`" in the server's package.
                files.append(ROOT / "server/forkyard" / Path(place).name)
        forbidden = re.findall(r"`([^`]+)`", match["forbidden"])
        rows.append((files, forbidden))
    return rows


def imported_modules(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.module, node.lineno)]
            found += [(f"{node.module}.{alias.name}", node.lineno) for alias in node.names]
    return found


def test_the_code_map_is_read() -> None:
    rows = code_map()
    assert len(rows) >= 10, rows
    assert all(files for files, _ in rows), "every row names files that exist"
    assert any("pygls" in forbidden for _, forbidden in rows)


@pytest.mark.parametrize(("files", "forbidden"), code_map())
def test_no_folder_imports_what_the_code_map_forbids(
    files: list[Path], forbidden: list[str]
) -> None:
    broken = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in files
        for module, line in imported_modules(path)
        if any(module == bad or module.startswith(bad + ".") for bad in forbidden)
    ]
    assert not broken, "\n".join(broken)


def runtime_imports(path: Path) -> set[str]:
    """Modules `path` imports when it runs (anywhere in it, functions included), leaving
    out `if TYPE_CHECKING:` blocks, which never run."""
    tree = ast.parse(path.read_text(), str(path))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(inner) for inner in ast.walk(node)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def test_the_lsp_front_has_no_import_cycle() -> None:
    """Features are objects built in one place (`lsp/features.py`); no module of the
    front needs another that needs it back, not even lazily inside a function."""
    folder = ROOT / "server/forkyard/lsp"
    modules = {f"forkyard.lsp.{path.stem}": path for path in folder.glob("*.py")}
    graph = {
        name: {m for m in runtime_imports(path) if m in modules and m != name}
        for name, path in modules.items()
    }

    def cycle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        while stack:
            node, trail = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return [*trail, start]
                if nxt not in trail:
                    stack.append((nxt, [*trail, nxt]))
        return None

    cycles = [cycle for name in graph if (cycle := cycle_from(name))]
    assert not cycles, " -> ".join(cycles[0])
    assert "forkyard.lsp.features" in modules and len(graph) >= 8
