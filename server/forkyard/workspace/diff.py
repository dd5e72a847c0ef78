"""An agent's changes as data: what its worktree holds now, against the commit it
started from.

Two diffs of the same two trees are made. `patch` is the usual unified diff with
context, for people and for `git apply`. `files` comes from a zero-context diff, so every
hunk is one contiguous region of changed lines that can be reviewed, shown as a
diagnostic and applied on its own; its id is derived from its content, so the same hunk
keeps its id from one call to the next and a code action made earlier still finds it.

The worktree's own index is never used to compute the diff: the agent (or its tools) may
have staged anything there, and what matters is the files as they are. Every git command
on the worktree goes through `Repository.worktree_git` (see `hardened`): the agent's
files are only read, nothing it planted runs. A worktree whose `.git` the agent changed
still gets its diff (that `.git` plays no part in it): the orchestrator learns of the
tampering when it commits the work.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import anyio
import anyio.to_thread

from forkyard.workspace.git import GitError, Repository, git_environment, run_git
from forkyard.workspace.hardened import tree_of
from forkyard_protocol.models import FileChange, FileStatus, Hunk

#: Options that make `git diff` output the same whatever the user's git config says:
#: no colour or external/textconv drivers, plain a/ b/ prefixes, whole-tree paths, and
#: submodules as plain "Subproject commit" lines.
_STABLE_DIFF_OPTIONS = (
    "--no-color",
    "--no-ext-diff",
    "--no-textconv",
    "--no-relative",
    "--src-prefix=a/",
    "--dst-prefix=b/",
    "--submodule=short",
    "--full-index",
    "-M",
)

_HUNK_HEADER = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
_C_ESCAPES = {
    "a": 7,
    "b": 8,
    "t": 9,
    "n": 10,
    "v": 11,
    "f": 12,
    "r": 13,
    '"': 34,
    "\\": 92,
}


@dataclass(frozen=True)
class WorktreeDiff:
    """A worktree's content (`tree`) against `base`: the patch, and the files as data."""

    base: str
    tree: str
    patch: str
    files: list[FileChange] = field(default_factory=list)


async def worktree_tree(repository: Repository, worktree: Path) -> str:
    """The tree sha of the worktree's files as they are (tracked, untracked but not
    ignored, deletions), made through a temporary index: the worktree's own index is
    left exactly as it was."""
    return await tree_of(await repository.worktree_git(worktree))


async def diff_worktree(
    worktree: Path,
    base: str,
    checkout_root: Path,
    env: Mapping[str, str] | None = None,
    *,
    repository: Repository | None = None,
) -> WorktreeDiff:
    """The worktree's changes against `base` (a commit of the repository, best given as
    a sha: a name like HEAD is read in the worktree). File `uri`s point into the user's
    checkout at `checkout_root`, where the changes would be applied. Pass the
    `repository` when there is one: else it is looked up from `checkout_root` (one git
    call more)."""
    if repository is None:
        repository = await Repository.discover(checkout_root, env)
    git = await repository.worktree_git(worktree)
    tree = await tree_of(git)
    outputs: dict[str, str] = {}
    failures: list[GitError] = []

    async def diff(kind: str, *options: str) -> None:
        try:
            done = await git.run("diff", *_STABLE_DIFF_OPTIONS, *options, base, tree, "--")
        except GitError as exc:
            failures.append(exc)  # raised below as itself, not in an ExceptionGroup
            return
        outputs[kind] = done.text

    async with anyio.create_task_group() as task_group:
        task_group.start_soon(diff, "patch")
        task_group.start_soon(diff, "zero", "-U0", "--inter-hunk-context=0")
    if failures:
        raise failures[0]
    files = parse_zero_context_diff(outputs["zero"], checkout_root)
    return WorktreeDiff(base=base, tree=tree, patch=outputs["patch"], files=files)


def _checked_relative(path: str) -> PurePosixPath:
    relative = PurePosixPath(path)
    if not path or path.startswith(("/", "\\")) or relative.is_absolute():
        raise ValueError(f"{path!r} is not a relative path inside the worktree")
    if ".." in relative.parts or relative == PurePosixPath("."):
        raise ValueError(f"{path!r} leaves the worktree")
    if "\0" in path or "\n" in path:
        raise ValueError(f"{path!r} is not a valid file name")
    return relative


async def file_at(worktree: Path, path: str) -> str | None:
    """The current text of `path` in the worktree (None if there is no such file).

    `path` is repo-relative; one that is absolute, climbs out with "..", or resolves
    outside the worktree through a symlink raises ValueError. Bytes that are not UTF-8
    become U+FFFD."""
    relative = _checked_relative(path)
    return await anyio.to_thread.run_sync(_read_inside, worktree, relative)


def _read_inside(worktree: Path, relative: PurePosixPath) -> str | None:
    root = worktree.resolve()
    target = (root / relative).resolve()
    if not target.is_relative_to(root):
        raise ValueError(f"{relative} resolves outside the worktree")
    try:
        return target.read_bytes().decode("utf-8", errors="replace")
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None


async def file_in_commit(
    repo_root: Path, commit: str, path: str, env: Mapping[str, str] | None = None
) -> str | None:
    """The text of `path` in `commit` (None if the commit has no file there); GitError
    if `commit` names no commit."""
    relative = _checked_relative(path)
    environment = git_environment(env)
    found = await run_git(
        "rev-parse",
        "--verify",
        "--quiet",
        "--end-of-options",
        f"{commit}^{{commit}}",
        cwd=repo_root,
        env=environment,
        check=False,
    )
    if found.returncode != 0:
        raise GitError(f"unknown revision: {commit!r} is not a commit in {repo_root}")
    request = f"{found.line}:{relative.as_posix()}\n".encode()
    batch = await run_git("cat-file", "--batch", cwd=repo_root, env=environment, input=request)
    header, _, rest = batch.stdout.partition(b"\n")
    parts = header.split()
    if len(parts) != 3 or parts[1] != b"blob":
        return None  # "<name> missing", or a folder or submodule rather than a file
    return rest[: int(parts[2])].decode("utf-8", errors="replace")


async def files_in_commit(
    repo_root: Path, commit: str, paths: Sequence[str], env: Mapping[str, str] | None = None
) -> dict[str, str | None]:
    """`file_in_commit` for many paths with one `git cat-file --batch`: loading a large
    agent's review must not start a git process per file."""
    if not paths:
        return {}
    if any("\n" in path for path in paths):
        return {path: await file_in_commit(repo_root, commit, path, env) for path in paths}
    environment = git_environment(env)
    found = await run_git(
        "rev-parse", "--verify", "--quiet", "--end-of-options", f"{commit}^{{commit}}",
        cwd=repo_root, env=environment, check=False,
    )  # fmt: skip
    if found.returncode != 0:
        raise GitError(f"unknown revision: {commit!r} is not a commit in {repo_root}")
    request = "".join(f"{found.line}:{_checked_relative(p).as_posix()}\n" for p in paths)
    batch = await run_git(
        "cat-file", "--batch", cwd=repo_root, env=environment, input=request.encode()
    )
    return await anyio.to_thread.run_sync(_split_batch, batch.stdout, list(paths))


def _split_batch(output: bytes, paths: list[str]) -> dict[str, str | None]:
    texts: dict[str, str | None] = {}
    position = 0
    for path in paths:
        end = output.index(b"\n", position)
        parts = output[position:end].split()
        position = end + 1
        if len(parts) == 3 and parts[1] in (b"blob", b"tree", b"commit", b"tag"):
            size = int(parts[2])
            body = output[position : position + size]
            position += size + 1
            texts[path] = body.decode("utf-8", errors="replace") if parts[1] == b"blob" else None
        else:
            texts[path] = None  # "<name> missing"
    return texts


def unquote_git_path(text: str) -> str:
    """A path as git prints it: C-quoted ("a\\tb", octal bytes) when it has unusual
    characters, else verbatim."""
    if not (len(text) >= 2 and text.startswith('"') and text.endswith('"')):
        return text
    out = bytearray()
    body = text[1:-1]
    index = 0
    while index < len(body):
        char = body[index]
        if char != "\\" or index + 1 >= len(body):
            out += char.encode("utf-8", errors="surrogateescape")
            index += 1
            continue
        escaped = body[index + 1]
        octal = body[index + 1 : index + 4]
        if len(octal) == 3 and all(c in "01234567" for c in octal):
            out.append(int(octal, 8) & 0xFF)
            index += 4
        else:
            out.append(_C_ESCAPES.get(escaped, ord(escaped) & 0xFF))
            index += 2
    return out.decode("utf-8", errors="replace")


def _split_quoted(text: str) -> tuple[str, str]:
    """A leading C-quoted string of `text`, and what follows it."""
    index = 1
    while index < len(text):
        if text[index] == "\\":
            index += 2
            continue
        if text[index] == '"':
            return text[: index + 1], text[index + 1 :]
        index += 1
    return text, ""


def _header_paths(rest: str) -> tuple[str | None, str | None]:
    """The two names in `diff --git a/X b/Y`, when they are the same file (the only case
    where git omits the ---/+++ and rename lines we prefer): either both quoted, or the
    line splits into two equal halves, as git's own parser assumes."""
    if rest.startswith('"'):
        first, after = _split_quoted(rest)
        second = after.removeprefix(" ")
        return _strip_prefix(unquote_git_path(first), "a/"), _strip_prefix(
            unquote_git_path(second), "b/"
        )
    half = (len(rest) - 5) // 2
    if half > 0 and rest[:2] == "a/" and rest[2 + half : 5 + half] == " b/":
        name = rest[2 : 2 + half]
        if rest[5 + half :] == name:
            return name, name
    return None, None


def _strip_prefix(name: str, prefix: str) -> str | None:
    if name == "/dev/null":
        return None
    return name.removeprefix(prefix)


def _label_path(value: str, prefix: str) -> str | None:
    """The path on a ---/+++ line. Git ends the line with a tab when the name has a space
    (so patch(1) can tell where it ends); a real tab in a name would have been quoted."""
    return _strip_prefix(unquote_git_path(value.removesuffix("\t")), prefix)


def hunk_id(path: str, old_start: int, text: str) -> str:
    """A hunk's identity: its file, where it starts in the base, and its lines. The same
    change gets the same id across calls and server restarts."""
    digest = hashlib.sha1(f"{path}\0{old_start}\0{text}".encode("utf-8", "surrogatepass"))
    return digest.hexdigest()[:12]


@dataclass
class _FileSection:
    header_old: str | None = None
    header_new: str | None = None
    label_old: str | None = None
    label_new: str | None = None
    rename_from: str | None = None
    rename_to: str | None = None
    status: FileStatus = "modified"
    binary: bool = False
    hunks: list[tuple[str, int, int, int, int, list[str]]] = field(default_factory=list)

    def to_change(self, checkout_root: Path) -> FileChange | None:
        old = self.rename_from or self.label_old or self.header_old
        new = self.rename_to or self.label_new or self.header_new
        path = (old or new) if self.status == "deleted" else (new or old)
        if path is None:
            return None
        hunks: list[Hunk] = []
        additions = deletions = 0
        for header, old_start, old_lines, new_start, new_lines, lines in self.hunks:
            text = "".join(line + "\n" for line in lines)
            additions += sum(1 for line in lines if line.startswith("+"))
            deletions += sum(1 for line in lines if line.startswith("-"))
            hunks.append(
                Hunk(
                    id=hunk_id(path, old_start, text),
                    old_start=old_start,
                    old_lines=old_lines,
                    new_start=new_start,
                    new_lines=new_lines,
                    header=header,
                    text=text,
                )
            )
        return FileChange(
            path=path,
            uri=(checkout_root.absolute() / path).as_uri(),
            old_path=old if self.status == "renamed" else None,
            status=self.status,
            additions=additions,
            deletions=deletions,
            hunks=hunks,
            binary=self.binary,
        )


def parse_zero_context_diff(text: str, checkout_root: Path) -> list[FileChange]:
    """The files and hunks of a `git diff -U0` output (with a/ b/ prefixes).

    Hunk bodies are consumed by the line counts in their headers, never by what a line
    looks like, so a removed line reading "-- a/x" (shown as "--- a/x") or an added
    "@@" line is content, not structure.
    """
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    sections: list[_FileSection] = []
    section: _FileSection | None = None
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        if line.startswith("diff --git "):
            section = _FileSection()
            sections.append(section)
            section.header_old, section.header_new = _header_paths(line[len("diff --git ") :])
            continue
        if section is None:
            continue
        match = _HUNK_HEADER.match(line)
        if match:
            old_start, new_start = int(match[1]), int(match[3])
            old_lines = 1 if match[2] is None else int(match[2])
            new_lines = 1 if match[4] is None else int(match[4])
            body, index = _hunk_body(lines, index, old_lines, new_lines)
            section.hunks.append((line, old_start, old_lines, new_start, new_lines, body))
        elif line.startswith("new file mode "):
            section.status = "added"
        elif line.startswith("deleted file mode "):
            section.status = "deleted"
        elif line.startswith("rename from "):
            section.status = "renamed"
            section.rename_from = unquote_git_path(line[len("rename from ") :])
        elif line.startswith("rename to "):
            section.rename_to = unquote_git_path(line[len("rename to ") :])
        elif line.startswith("--- "):
            section.label_old = _label_path(line[4:], "a/")
        elif line.startswith("+++ "):
            section.label_new = _label_path(line[4:], "b/")
        elif line.startswith("Binary files ") or line == "GIT binary patch":
            section.binary = True
    changes = [section.to_change(checkout_root) for section in sections]
    return [change for change in changes if change is not None]


def _hunk_body(
    lines: list[str], index: int, old_lines: int, new_lines: int
) -> tuple[list[str], int]:
    """The lines of one hunk starting at `index`, and the index after it. A "\\ No
    newline at end of file" marker belongs to the line before it and is kept."""
    body: list[str] = []
    old_seen = new_seen = 0
    while index < len(lines):
        line = lines[index]
        tag = line[:1]
        if tag == "\\":
            if not body:
                break
        elif old_seen >= old_lines and new_seen >= new_lines:
            break
        elif tag == "-":
            old_seen += 1
        elif tag == "+":
            new_seen += 1
        elif tag == " " or line == "":
            # A context line (only with context diffs); an empty one if the user's git
            # suppresses the blank of an empty context line.
            old_seen += 1
            new_seen += 1
            line = " " + line[1:]
        else:
            break
        body.append(line)
        index += 1
    return body, index
