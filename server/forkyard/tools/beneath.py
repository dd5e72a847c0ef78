"""File access that cannot leave a root, whatever the tree holds when the call lands.

`confine.resolve_inside` decides whether a path the model names is inside the root; this
module makes the access itself keep to that decision. The tree belongs to the agent (or,
for explorers, to a repository nobody vetted): between the check and the open a
directory can become a symlink, and a planted link, FIFO or loop must cost the agent a
tool error, never a read or write outside the root, a hung worker thread or an exception
out of the tool. So every access walks from a descriptor of the root one component at a
time with `O_NOFOLLOW`: a symlink anywhere along the way fails the call with `ELOOP` or
`ENOTDIR` instead of being followed. Blocking: call from a worker thread.
"""

from __future__ import annotations

import errno
import os
import stat
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path, PurePath

_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: Code points HFS+ ignores in names (git's `is_hfs_dotgit`): `.g\u200cit` is `.git` there.
_HFS_IGNORED = dict.fromkeys(
    [0x200C, 0x200D, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x206A, 0x2070), 0xFEFF]
)


class LinkInTheWay(OSError):
    """A component of the path is a symlink (or the path is a loop of them)."""


def is_git_name(name: str) -> bool:
    """Whether a file system could take `name` for the git directory: `.git` in any case
    (case-insensitive file systems), with code points HFS+ ignores, or with the trailing
    dots and spaces and the 8.3 short name (`git~1`) that NTFS accepts for it."""
    folded = unicodedata.normalize("NFC", name.translate(_HFS_IGNORED)).casefold()
    folded = folded.rstrip(". ")
    return folded in {".git", "git~1"}


def parts_of(relative: PurePath | str) -> list[str]:
    """The components of a path relative to the root; `..` and absolute paths are refused
    here too, so that no caller can walk up by accident."""
    parts = [part for part in PurePath(relative).parts if part != "."]
    if PurePath(relative).is_absolute() or ".." in parts:
        raise ValueError(f"{relative}: not a plain path below the root")
    return parts


@contextmanager
def directory_beneath(root: Path, parts: list[str], *, create: bool = False) -> Iterator[int]:
    """A descriptor of the directory `root/parts...`, reached without following any
    symlink below `root`; `create` makes the missing directories on the way."""
    fd = _open_directory(root, parts, create=create)
    try:
        yield fd
    finally:
        os.close(fd)


def _open_directory(root: Path | str, parts: list[str], *, create: bool = False) -> int:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts:
            if create:
                with suppress(FileExistsError):
                    os.mkdir(part, dir_fd=fd)
            try:
                inner = os.open(part, _DIRECTORY_FLAGS, dir_fd=fd)
            except OSError as error:
                _raise_link(error, fd, part)
                raise
            os.close(fd)
            fd = inner
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_beneath(
    root: Path, relative: PurePath | str, flags: int, *, create_parents: bool = False
) -> int:
    """A descriptor of the file `root/relative` opened with `flags`, no component of the
    path followed if it is a symlink. `O_NONBLOCK` is added so that a FIFO cannot hang the
    caller; `regular_file` checks what was opened."""
    parts = parts_of(relative)
    if not parts:
        raise IsADirectoryError(errno.EISDIR, "is the root directory", str(root))
    *parents, name = parts
    with directory_beneath(root, parents, create=create_parents) as parent:
        try:
            return os.open(
                name, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o666, dir_fd=parent
            )
        except OSError as error:
            _raise_link(error, parent, name)
            raise


def regular_file(fd: int, shown: str) -> os.stat_result:
    """The descriptor's status, or an error unless it is a regular file."""
    status = os.fstat(fd)
    if stat.S_ISDIR(status.st_mode):
        raise IsADirectoryError(errno.EISDIR, "is a directory", shown)
    if not stat.S_ISREG(status.st_mode):
        raise OSError(errno.EINVAL, "is not a regular file (a FIFO, socket or device)", shown)
    os.set_blocking(fd, True)
    return status


class ManyBeneath:
    """Many accesses below one root, for listings and scans of thousands of files in a
    few directories: each directory is checked (and opened) once, not once per file.
    Paths are POSIX strings relative to the root, as git and ripgrep print them."""

    def __init__(self, root: Path) -> None:
        self._root = os.fspath(root)
        self._known: dict[str, bool] = {"": True}
        self._directory: tuple[str, int] | None = None

    def __enter__(self) -> ManyBeneath:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._close_directory()

    def is_real_dir(self, relative: str) -> bool:
        """Whether `relative` is a directory reached without a symlink."""
        known = self._known.get(relative)
        if known is None:
            parent, _, name = relative.rpartition("/")
            known = (
                _plain_name(name)
                and self.is_real_dir(parent)
                and _lstat_is(os.path.join(self._root, relative), stat.S_ISDIR)
            )
            self._known[relative] = known
        return known

    def exists(self, relative: str, *, allow_final_link: bool = True) -> bool:
        """Whether `relative` exists with no symlink among its directories (and, unless
        `allow_final_link`, none as its last component)."""
        parent, _, name = relative.rpartition("/")
        if not _plain_name(name) or not self.is_real_dir(parent):
            return False
        test = _exists if allow_final_link else _not_link
        return _lstat_is(os.path.join(self._root, relative), test)

    def open(self, relative: str, flags: int) -> int:
        """Like `open_beneath`; the last directory opened is kept for the next file."""
        parent, _, name = relative.rpartition("/")
        if not _plain_name(name):
            raise IsADirectoryError(errno.EISDIR, "is not a file name", relative)
        if self._directory is None or self._directory[0] != parent:
            self._close_directory()
            self._directory = (parent, _open_directory(self._root, parts_of(parent)))
        fd = self._directory[1]
        try:
            return os.open(name, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
        except OSError as error:
            _raise_link(error, fd, name)
            raise

    def _close_directory(self) -> None:
        if self._directory is not None:
            os.close(self._directory[1])
            self._directory = None


def _plain_name(name: str) -> bool:
    return name not in ("", ".", "..")


def _exists(_mode: int) -> bool:
    return True


def _not_link(mode: int) -> bool:
    return not stat.S_ISLNK(mode)


def _lstat_is(path: str, test: Callable[[int], bool]) -> bool:
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return False
    return test(mode)


def _raise_link(error: OSError, directory: int, part: str) -> None:
    """`LinkInTheWay` when `part` (in `directory`) is the symlink that made the open fail;
    `ENOTDIR` also means a plain file where a directory was expected."""
    if error.errno == errno.ELOOP or (
        error.errno == errno.ENOTDIR and _is_link_at(directory, part)
    ):
        raise LinkInTheWay(error.errno, "is a symlink (or a loop of symlinks)", part) from None


def _is_link_at(directory: int, part: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(part, dir_fd=directory, follow_symlinks=False).st_mode)
    except OSError:
        return False
