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
        yield fd
    finally:
        os.close(fd)


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


class RealDirectories:
    """Answers "does this listed path name a file reached without symlinks?" for many
    paths of one root, checking each directory once (a listing has thousands of files
    in a few directories)."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._known: dict[str, bool] = {"": True}

    def is_real_dir(self, relative: str) -> bool:
        known = self._known.get(relative)
        if known is None:
            parent = relative.rpartition("/")[0]
            known = self.is_real_dir(parent) and _lstat_is(self._root / relative, stat.S_ISDIR)
            self._known[relative] = known
        return known

    def exists(self, relative: str, *, allow_final_link: bool = True) -> bool:
        """Whether `relative` exists with no symlink among its directories (and, unless
        `allow_final_link`, none as its last component)."""
        try:
            parts = parts_of(relative)
        except ValueError:
            return False
        if not parts or not self.is_real_dir("/".join(parts[:-1])):
            return False
        try:
            status = os.lstat(self._root.joinpath(*parts))
        except OSError:
            return False
        return allow_final_link or not stat.S_ISLNK(status.st_mode)


def _lstat_is(path: Path, test: Callable[[int], bool]) -> bool:
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
