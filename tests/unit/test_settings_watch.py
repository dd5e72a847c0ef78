"""watch_settings_files: a running server reloads its settings when a file of them changes,
and only then (each reload may tell the person about problems again)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import anyio
import pytest

from forkyard import settings_watch
from forkyard.settings_watch import Fingerprint, watch_settings_files

INTERVAL = 0.05


def save(path: Path, text: str) -> None:
    """Write a file all at once, as an editor saving it does: a poll between truncating
    and writing would otherwise see two changes."""
    new = path.with_name(path.name + ".new")
    new.write_text(text)
    os.replace(new, path)


class Calls:
    """Counts on_change calls; `changed` is set by each one (a fresh Event per wait)."""

    def __init__(self) -> None:
        self.count = 0
        self.changed = anyio.Event()

    async def on_change(self) -> None:
        self.count += 1
        self.changed.set()

    async def next_change(self) -> None:
        with anyio.fail_after(5):
            await self.changed.wait()
        self.changed = anyio.Event()


@pytest.fixture
def polls(monkeypatch: pytest.MonkeyPatch) -> list[anyio.Event]:
    """Events set by the watcher's polls, in order, so a test can wait for some polls to
    have seen the files as they are (proving that nothing was reported) without sleeping."""
    events = [anyio.Event() for _ in range(100)]
    seen = 0
    real = settings_watch._fingerprints

    def counting(paths: Sequence[Path]) -> list[Fingerprint]:
        nonlocal seen
        result = real(paths)
        if seen < len(events):
            # Worker thread: hand the set to the loop's thread.
            anyio.from_thread.run_sync(events[seen].set)
        seen += 1
        return result

    monkeypatch.setattr(settings_watch, "_fingerprints", counting)
    return events


async def test_a_changed_file_is_reported_once_and_an_unchanged_one_never(
    tmp_path: Path, polls: list[anyio.Event]
) -> None:
    config = tmp_path / "config.toml"
    config.write_text("max_parallel_agents = 2\n")
    calls = Calls()
    async with anyio.create_task_group() as group:
        await group.start(watch_settings_files, [config], calls.on_change, INTERVAL)
        with anyio.fail_after(5):
            await polls[3].wait()  # the baseline and three rounds over the same file
        assert calls.count == 0, "nothing changed, nothing to reload"

        save(config, "max_parallel_agents = 3\n")
        await calls.next_change()
        last = max(index for index, event in enumerate(polls) if event.is_set())
        with anyio.fail_after(5):
            await polls[last + 2].wait()
        assert calls.count == 1, "one change, one reload"
        group.cancel_scope.cancel()


async def test_a_file_that_appears_or_vanishes_is_a_change(tmp_path: Path) -> None:
    repo_file = tmp_path / "repo" / ".forkyard.toml"
    calls = Calls()
    async with anyio.create_task_group() as group:
        await group.start(watch_settings_files, [repo_file], calls.on_change, INTERVAL)
        repo_file.parent.mkdir()
        save(repo_file, "max_parallel_agents = 2\n")
        await calls.next_change()
        repo_file.unlink()
        await calls.next_change()
        assert calls.count == 2
        group.cancel_scope.cancel()


async def test_a_file_replaced_with_the_same_size_and_time_is_a_change(tmp_path: Path) -> None:
    """Editors that save by renaming a new file over the old one: only the inode tells."""
    config = tmp_path / "config.toml"
    config.write_text("max_parallel_agents = 2\n")
    before = config.stat()
    calls = Calls()
    async with anyio.create_task_group() as group:
        await group.start(watch_settings_files, [config], calls.on_change, INTERVAL)
        replacement = tmp_path / "config.toml.new"
        replacement.write_text("max_parallel_agents = 3\n")
        os.utime(replacement, ns=(before.st_atime_ns, before.st_mtime_ns))
        os.replace(replacement, config)
        after = config.stat()
        assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
        await calls.next_change()
        group.cancel_scope.cancel()


async def test_one_of_several_files_changing_is_reported(tmp_path: Path) -> None:
    user_file = tmp_path / "config.toml"
    repo_file = tmp_path / ".forkyard.toml"
    user_file.write_text("")
    calls = Calls()
    async with anyio.create_task_group() as group:
        await group.start(watch_settings_files, [user_file, repo_file], calls.on_change, INTERVAL)
        save(repo_file, "command_timeout_seconds = 5\n")
        await calls.next_change()
        group.cancel_scope.cancel()
