"""The file tools' work: reading, writing, editing and deleting inside a confined root.

Every function here blocks (file I/O) and is run in a worker thread by the tool box. Each
returns the text the model gets back, or raises `ToolFailure` (or `PathRefused`) with a
message that tells the model what to do instead. Text is read and written byte-exact
(`newline=""`): an agent that changes one line must not rewrite a file's line endings.

Paths are checked by `confine.resolve_inside`, then opened through `beneath`, which
follows no symlink: a link planted (or swapped in) after the check, a FIFO or a loop of
links is a tool error, never an access outside the root.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import IO, Any

from forkyard.tools.beneath import (
    LinkInTheWay,
    directory_beneath,
    is_git_name,
    open_beneath,
    parts_of,
    regular_file,
)
from forkyard.tools.confine import PathRefused, relative_display, resolve_inside

_BINARY_SNIFF_BYTES = 8192
_NOT_REGULAR = "{path} is not a regular file (a FIFO, socket or device); not touched"


class ToolFailure(Exception):
    """A tool could not do what was asked; the message is the tool's error result."""


def confined(root: Path, path: str, *, for_write: bool, follow_final: bool = True) -> Path:
    """`resolve_inside`, with the refusals it does not make: a symlink loop (pathlib
    raises RuntimeError for one) and, for writes, any component that names the git
    directory on some file system (`.GIT`, `sub/.git/config`)."""
    try:
        target = resolve_inside(root, path, for_write=for_write, follow_final=follow_final)
    except RuntimeError:
        raise PathRefused(_loop_message(path)) from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise PathRefused(_loop_message(path)) from None
        raise
    if for_write:
        named = PurePosixPath(path).parts
        resolved = target.relative_to(root.resolve()).parts
        if any(is_git_name(part) for part in (*named, *resolved)):
            raise PathRefused(f"{path}: writing into the git metadata (.git) is refused")
    return target


def _loop_message(path: str) -> str:
    return (
        f"{path}: is a symlink loop (a link that leads back to itself, directly or through "
        f"other links); refused"
    )


@contextmanager
def _opened(root: Path, target: Path, path: str, flags: int, mode: str) -> Iterator[IO[Any]]:
    """The confined `target` opened (`mode`: "r" for text, else binary) without
    following any symlink, the ways that can fail mapped to messages for the model."""
    relative = target.relative_to(root.resolve())
    try:
        fd = open_beneath(root.resolve(), relative, flags, create_parents=bool(flags & os.O_CREAT))
    except LinkInTheWay:
        raise ToolFailure(
            f"{path}: a symlink appeared on the way to it (or it is a symlink loop); "
            f"nothing was read or written"
        ) from None
    except FileNotFoundError:
        raise ToolFailure(f"{path} does not exist; list_files shows what does") from None
    except IsADirectoryError:
        raise ToolFailure(f"{path} is a directory; give a file path") from None
    except NotADirectoryError:
        raise ToolFailure(f"{path}: a component of the path is a file, not a directory") from None
    except OSError as error:
        if error.errno != errno.ENXIO:  # a FIFO opened for writing with no reader
            raise
        raise ToolFailure(_NOT_REGULAR.format(path=path)) from None
    try:
        try:
            regular_file(fd, path)
        except IsADirectoryError:
            raise ToolFailure(f"{path} is a directory; use list_files to see its files") from None
        except OSError:
            raise ToolFailure(_NOT_REGULAR.format(path=path)) from None
        if "b" in mode:
            handle: IO[Any] = open(fd, mode)  # noqa: SIM115
        else:
            handle = open(fd, mode, encoding="utf-8", errors="replace", newline="")  # noqa: SIM115
    except BaseException:
        os.close(fd)
        raise
    with handle:
        yield handle


def read_file(
    root: Path, path: str, start_line: int | None, end_line: int | None, max_chars: int
) -> str:
    """The file's text (lines `start_line`..`end_line`, 1-based, inclusive), at most
    `max_chars` of it, with a note saying how to read on when it was cut."""
    target = confined(root, path, for_write=False)
    if start_line is not None and end_line is not None and end_line < start_line:
        raise ToolFailure(f"end_line ({end_line}) is before start_line ({start_line})")
    first = start_line or 1
    shown: list[str] = []
    size = 0
    total = 0
    cut_at: int | None = None
    partial = False
    with _opened(root, target, path, os.O_RDONLY, "r") as handle:
        head = os.pread(handle.fileno(), _BINARY_SNIFF_BYTES, 0)
        if b"\0" in head:
            size = os.fstat(handle.fileno()).st_size
            raise ToolFailure(f"{path} is a binary file ({size} bytes); not shown")
        for total, line in enumerate(handle, start=1):
            if total < first or (end_line is not None and total > end_line) or cut_at:
                continue
            if size + len(line) > max_chars:
                cut_at = total
                if not shown:  # one line longer than the whole budget: show its start
                    shown.append(line[:max_chars])
                    partial = True
                continue
            shown.append(line)
            size += len(line)
    if total == 0:
        return f"({path} is empty)"
    if first > total:
        raise ToolFailure(f"start_line {first} is beyond the end of {path} ({total} lines)")
    text = "".join(shown)
    last = min(end_line or total, total)
    if partial:
        return (
            f"{text}\n[... truncated: line {first} alone is longer than {max_chars} "
            f"characters; showed its start; the file has {total} lines ...]"
        )
    if cut_at is not None:
        return (
            f"{text}\n[... truncated: showed lines {first}-{cut_at - 1} of {total} lines "
            f"({max_chars} characters); read on with start_line={cut_at} ...]"
        )
    if first > 1 or last < total:
        return f"{text}\n[lines {first}-{last} of {total}]"
    return text


def read_text(root: Path, path: str, line: int | None, limit: int | None, max_bytes: int) -> str:
    """The file's raw text from 1-based `line`, at most `limit` lines (an ACP agent's
    `fs/read_text_file`), confined like `read_file`; a file over `max_bytes` is refused
    rather than read whole."""
    target = confined(root, path, for_write=False)
    with _opened(root, target, path, os.O_RDONLY, "r") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > max_bytes:
            raise ToolFailure(f"{path} is {size} bytes, over the {max_bytes} bytes read whole")
        if b"\0" in os.pread(handle.fileno(), _BINARY_SNIFF_BYTES, 0):
            raise ToolFailure(f"{path} is a binary file ({size} bytes); not read")
        lines = handle.read().splitlines(keepends=True)
    first = max((line or 1) - 1, 0)
    return "".join(lines[first : first + limit] if limit is not None else lines[first:])


def write_file(root: Path, path: str, content: str) -> str:
    target = confined(root, path, for_write=True)
    data = _encoded(content, path)
    existed = False
    try:
        opened = _opened(root, target, path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, "wb")
        with opened as handle:
            handle.write(data)
    except FileExistsError:
        existed = True
        with _opened(root, target, path, os.O_WRONLY, "wb") as handle:
            handle.write(data)
            handle.truncate()
    verb = "overwrote" if existed else "created"
    return f"{verb} {relative_display(root, target)} ({_count_lines(content)} lines)"


def edit_file(root: Path, path: str, old_text: str, new_text: str) -> str:
    """Replace the one occurrence of `old_text`. Zero or several occurrences change
    nothing: guessing which one was meant is how agents corrupt files."""
    if not old_text:
        raise ToolFailure("old_text is empty; to create or replace a whole file use write_file")
    target = confined(root, path, for_write=True)
    with _opened(root, target, path, os.O_RDWR, "r+b") as handle:
        try:
            text = handle.read().decode("utf-8")
        except UnicodeDecodeError:
            raise ToolFailure(f"{path} is not UTF-8 text; it cannot be edited") from None
        occurrences = text.count(old_text)
        if occurrences == 0:
            hint = ""
            if "\r\n" in text and "\r\n" not in old_text and old_text.count("\n") > 0:
                hint = " (the file uses CRLF line endings)"
            raise ToolFailure(
                f"old_text was not found in {path}{hint}; read the file again and copy the "
                f"text exactly, indentation and whitespace included; nothing was changed"
            )
        if occurrences > 1:
            raise ToolFailure(
                f"old_text occurs {occurrences} times in {path}; it must occur exactly once: "
                f"include more of the surrounding lines; nothing was changed"
            )
        data = _encoded(text.replace(old_text, new_text, 1), path)
        handle.seek(0)
        handle.write(data)
        handle.truncate()
    return (
        f"edited {relative_display(root, target)}: replaced {_count_lines(old_text)} "
        f"line(s) with {_count_lines(new_text)} line(s)"
    )


def delete_file(root: Path, path: str) -> str:
    """Delete one file (or symlink: the link itself, wherever it points)."""
    target = confined(root, path, for_write=True, follow_final=False)
    try:
        *parents, name = parts_of(target.relative_to(root.resolve()))
    except ValueError:
        raise ToolFailure(f"{path}: name a file, not a directory ('..')") from None
    try:
        with directory_beneath(root.resolve(), parents) as directory:
            try:
                status = os.stat(name, dir_fd=directory, follow_symlinks=False)
            except FileNotFoundError:
                raise ToolFailure(f"{path} does not exist") from None
            if stat.S_ISDIR(status.st_mode):
                raise ToolFailure(f"{path} is a directory; delete_file deletes one file at a time")
            os.unlink(name, dir_fd=directory)
    except LinkInTheWay:
        raise ToolFailure(
            f"{path}: a symlink appeared on the way to it; nothing was deleted"
        ) from None
    except (FileNotFoundError, NotADirectoryError):
        raise ToolFailure(f"{path} does not exist") from None
    return f"deleted {relative_display(root, target)}"


def existing_relative(root: Path, path: str) -> str:
    """A path to list or search, confined, as a POSIX path relative to `root`."""
    target = confined(root, path, for_write=False)
    if not target.exists():
        raise ToolFailure(f"{path} does not exist; list_files shows what does")
    if not (target.is_dir() or target.is_file()):  # ripgrep would wait on a FIFO
        raise ToolFailure(_NOT_REGULAR.format(path=path))
    return relative_display(root, target)


def _encoded(content: str, path: str) -> bytes:
    try:
        return content.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ToolFailure(
            f"the content for {path} is not valid Unicode ({error.reason} at character "
            f"{error.start}); nothing was written"
        ) from None


def _count_lines(text: str) -> int:
    return text.count("\n") + (1 if text and not text.endswith("\n") else 0)
