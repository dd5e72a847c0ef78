"""Noticing that a settings file changed, so a running server can reload its settings.

The files (the user's config, a repository's `.forkyard.toml`, the trust file) are few
and small, and may live on file systems without change notifications, so they are
polled: each round stats them in a worker thread (never on the event loop) and compares
(mtime_ns, size, inode). The inode is there for editors that save by writing a new file
and renaming it over the old one, which can keep both mtime and size. A file that
appears or vanishes is a change too.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import NoReturn

import anyio
from anyio.abc import TaskStatus

#: What is compared of one file; None: it does not exist (or cannot be looked at).
Fingerprint = tuple[int, int, int] | None


def _fingerprint(path: Path) -> Fingerprint:
    try:
        stat = os.stat(path)
    except OSError:
        # Missing, a parent that is not a folder, or no permission: none of these can be
        # read as settings, so all of them are "not there".
        return None
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino)


def _fingerprints(paths: Sequence[Path]) -> list[Fingerprint]:
    """Blocking stat calls: run in a worker thread."""
    return [_fingerprint(path) for path in paths]


async def watch_settings_files(
    paths: list[Path],
    on_change: Callable[[], Awaitable[None]],
    interval: float = 1.0,
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Call `on_change` each time any of `paths` changed, appeared or vanished.

    Polls every `interval` seconds and runs until cancelled (by its task group). Started
    with `await task_group.start(watch_settings_files, ...)`, it returns once the files'
    first state is recorded, so every change after that is seen. Several changes within
    one interval are one call; `on_change` is awaited before the next poll, so calls
    never overlap. An exception from `on_change` ends the watch and propagates to the
    task group (the supervisor logs it and tells the person).
    """
    watched = tuple(paths)
    previous = await anyio.to_thread.run_sync(_fingerprints, watched)
    task_status.started()
    while True:
        await anyio.sleep(interval)
        current = await anyio.to_thread.run_sync(_fingerprints, watched)
        if current != previous:
            previous = current
            await on_change()
