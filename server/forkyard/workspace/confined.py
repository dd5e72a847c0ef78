"""The user's checkout, read and written without ever following a symbolic link.

An agent controls what its diff says, and a repository controls which of its paths are
links: a committed `link -> ../outside` that the agent turns into a folder makes the
diff say `link/pwned.txt`, and a plain `open(root / path)` then writes outside the
checkout. So paths are refused by their spelling first (absolute, `..`, NUL, `.git`),
then walked from the checkout root one component at a time without following links,
and every write the server does itself re-walks the path with directory descriptors
(`os.open(..., dir_fd=...)`, `O_NOFOLLOW` on every step, `O_EXCL` where it creates), so
a link swapped in after the check is still not followed.

Everything here blocks on the file system: callers run it in a worker thread.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path, PurePosixPath

LINK_REASON = "{path}: is a symbolic link in your checkout; Forkyard does not write through links"
AGENT_LINK_REASON = (
    "{path}: is a symbolic link in the agent's worktree; Forkyard does not write links"
)

_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafePathError(Exception):
    """A path Forkyard refuses to touch in the checkout; the message says why, naming
    the path (or the component of it that is the problem)."""


def spelling_problem(path: str) -> str | None:
    """Why `path` (relative, "/"-separated, as git prints it) cannot name a file inside
    the checkout, whatever is on disk; None when it can."""
    if not path:
        return "an empty path is not a file in your checkout"
    if "\0" in path:
        return f"{path!r}: a path with a NUL byte is not a file name"
    if path.startswith(("/", "\\")) or PurePosixPath(path).is_absolute():
        return f"{path}: an absolute path is outside your checkout"
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return f"{path}: a path with empty, '.' or '..' components can leave your checkout"
    if any(part.casefold() == ".git" for part in parts):
        return f"{path}: is inside .git; Forkyard does not write git's own files"
    return None


def checkout_problem(root: Path, path: str) -> str | None:
    """Why applying a change at `path` must not touch the user's checkout at `root`: a
    bad spelling, a symbolic link at any component (the last one too, dangling or not),
    or a component that is not a folder where the path needs one; None when it is safe."""
    if (problem := spelling_problem(path)) is not None:
        return problem
    parts = path.split("/")
    current = root
    for index, part in enumerate(parts):
        current = current / part
        shown = "/".join(parts[: index + 1])
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            return None  # nothing further down exists either: created fresh, no links
        except NotADirectoryError:
            return f"{shown}: is not a folder in your checkout"
        if stat.S_ISLNK(mode):
            return LINK_REASON.format(path=shown)
        last = index == len(parts) - 1
        if last and stat.S_ISDIR(mode):
            return f"{shown}: is a folder in your checkout, where the agent has a file"
        if last and not stat.S_ISREG(mode):
            return f"{shown}: is not a regular file in your checkout"
        if not last and not stat.S_ISDIR(mode):
            return f"{shown}: is a file in your checkout, where the agent has a folder"
    return None


def worktree_link(worktree: Path, path: str) -> str | None:
    """The reason to refuse `path` when the agent's version of it is a symbolic link (or
    lies under one): git stores a link as its target's name, and writing that text as a
    file, or the link itself, is not something an apply should do."""
    if spelling_problem(path) is not None:
        return None  # the checkout side reports it
    parts = path.split("/")
    current = worktree
    for index, part in enumerate(parts):
        current = current / part
        try:
            mode = os.lstat(current).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return None
        if stat.S_ISLNK(mode):
            return AGENT_LINK_REASON.format(path="/".join(parts[: index + 1]))
    return None


def apply_problems(
    root: Path, worktree: Path | None, checkout_paths: Sequence[str], agent_paths: Sequence[str]
) -> dict[str, str]:
    """Path -> why an apply must not touch it: `checkout_problem` for each path the apply
    plan touches in the checkout, `worktree_link` for each file the agent's side has."""
    found: dict[str, str] = {}
    for path in checkout_paths:
        if (problem := checkout_problem(root, path)) is not None:
            found[path] = problem
    for path in agent_paths:
        if worktree is None or path in found:
            continue
        if (link := worktree_link(worktree, path)) is not None:
            found[path] = link
    return found


@contextmanager
def _parent_fd(root: Path, path: str, *, create: bool) -> Iterator[tuple[int, str]]:
    """An open descriptor of `path`'s folder, reached from `root` one component at a
    time with O_NOFOLLOW (missing folders made when `create`), and the last name."""
    if (problem := spelling_problem(path)) is not None:
        raise UnsafePathError(problem)
    *folders, name = path.split("/")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for index, folder in enumerate(folders):
            shown = "/".join(folders[: index + 1])
            if create:
                with suppress(FileExistsError):
                    os.mkdir(folder, 0o777, dir_fd=fd)
            try:
                child = os.open(folder, _DIRECTORY_FLAGS, dir_fd=fd)
            except OSError as error:
                raise _unsafe(fd, folder, shown, error) from error
            os.close(fd)
            fd = child
        yield fd, name
    finally:
        os.close(fd)


def _unsafe(dir_fd: int, name: str, shown: str, error: OSError) -> Exception:
    """The error to raise for a component that could not be opened without following:
    UnsafePathError for a link, the original error otherwise."""
    if error.errno in (errno.ELOOP, errno.ENOTDIR, errno.EEXIST):
        try:
            mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
        except OSError:
            return error
        if stat.S_ISLNK(mode):
            return UnsafePathError(LINK_REASON.format(path=shown))
        if error.errno == errno.ENOTDIR:
            return UnsafePathError(f"{shown}: is not a folder in your checkout")
    return error


def read_text(root: Path, path: str) -> str | None:
    """The text of a regular file of the checkout, or None when there is none there (or
    it is reached only through a link, or is not a regular file). Bytes that are not
    UTF-8 become U+FFFD."""
    try:
        with _parent_fd(root, path, create=False) as (dir_fd, name):
            fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
            with os.fdopen(fd, "rb") as file:
                if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                    return None
                os.set_blocking(file.fileno(), True)
                return file.read().decode("utf-8", errors="replace")
    except (UnsafePathError, FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None
    except OSError as error:
        if error.errno == errno.ELOOP:
            return None
        raise


def create_file(root: Path, path: str, text: str) -> None:
    """Create `path` with `text`, making missing folders. Refuses (UnsafePathError) a
    link anywhere on the way, and never replaces anything already there."""
    with _parent_fd(root, path, create=True) as (dir_fd, name):
        _before_final_open(path)
        try:
            fd = os.open(name, _CREATE_FLAGS, 0o666, dir_fd=dir_fd)
        except FileExistsError as error:
            raised = _unsafe(dir_fd, name, path, error)
            if isinstance(raised, UnsafePathError):
                raise raised from error
            raise UnsafePathError(
                f"{path}: a file appeared there since the apply was planned; it was kept"
            ) from error
        except OSError as error:
            raise _unsafe(dir_fd, name, path, error) from error
        with os.fdopen(fd, "wb") as file:
            file.write(text.encode("utf-8"))


def replace_file(root: Path, path: str, text: str) -> None:
    """Overwrite the existing regular file `path` with `text` (the terminal's apply, which
    has no editor to send the edit to). Refuses a link at the end or on the way."""
    with _parent_fd(root, path, create=False) as (dir_fd, name):
        _before_final_open(path)
        try:
            # Non-blocking, not truncating: a FIFO or device there must neither hang nor
            # lose anything before it is refused.
            flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
            fd = os.open(name, flags, dir_fd=dir_fd)
        except OSError as error:
            raise _unsafe(dir_fd, name, path, error) from error
        with os.fdopen(fd, "wb") as file:
            if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                raise UnsafePathError(f"{path}: is not a regular file in your checkout")
            os.set_blocking(file.fileno(), True)
            file.truncate(0)
            file.write(text.encode("utf-8"))


def delete_file(root: Path, path: str) -> None:
    """Delete the regular file `path`; nothing there is fine. A link (at the end or on
    the way) is refused rather than removed or followed."""
    try:
        with _parent_fd(root, path, create=False) as (dir_fd, name):
            _before_final_open(path)
            try:
                mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
            except FileNotFoundError:
                return
            if stat.S_ISLNK(mode):
                raise UnsafePathError(LINK_REASON.format(path=path))
            if not stat.S_ISREG(mode):
                raise UnsafePathError(f"{path}: is not a regular file in your checkout")
            os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return


#: Called with the path right before its final component is opened, after its folders
#: were: a test point for swapping in a link at the worst moment. None in the server.
before_final_open: Callable[[str], None] | None = None


def _before_final_open(path: str) -> None:
    if before_final_open is not None:
        before_final_open(path)


def write_files(root: Path, writes: Mapping[str, str | None]) -> dict[str, str]:
    """Create (text) or delete (None) each path; what could not be done, by path, with
    the reason. One refused path does not stop the others."""
    failed: dict[str, str] = {}
    for path, text in writes.items():
        try:
            if text is None:
                delete_file(root, path)
            else:
                create_file(root, path, text)
        except UnsafePathError as error:
            failed[path] = str(error)
        except OSError as error:
            failed[path] = f"{path}: not written: {error.strerror or error}"
    return failed
