"""One Forkyard session for one repository: settings, store and orchestrator wired
together. Knows nothing of LSP; the language server owns one of these."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskGroup

from forkyard.agents.base import Availability, Backend
from forkyard.agents.command import CommandBackend
from forkyard.orchestrator.orchestrator import Orchestrator
from forkyard.settings import LoadedSettings, Settings, SettingsProblem, load_settings
from forkyard.store import Store
from forkyard.workspace.git import Repository


def builtin_backends() -> dict[str, Backend]:
    return {"command": CommandBackend()}


class ForkyardApp:
    """Created by `open`, closed by `close`; everything else is in its parts."""

    def __init__(
        self,
        repository: Repository,
        loaded: LoadedSettings,
        store: Store,
        state_dir: Path,
        environ: Mapping[str, str],
        initialization_options: Mapping[str, Any] | None,
    ) -> None:
        self.repository = repository
        self.loaded = loaded
        self.store = store
        self.state_dir = state_dir
        self.environ = environ
        self.initialization_options = initialization_options
        self.orchestrator = Orchestrator(
            repository,
            store,
            lambda: self.settings,
            builtin_backends(),
            state_dir,
            environ,
        )

    @property
    def settings(self) -> Settings:
        return self.loaded.settings

    @classmethod
    async def open(
        cls,
        root: Path,
        environ: Mapping[str, str],
        initialization_options: Mapping[str, Any] | None = None,
    ) -> ForkyardApp:
        repository = await Repository.discover(root)
        loaded = await anyio.to_thread.run_sync(
            load_settings, repository.root, environ, initialization_options, None
        )
        state_dir = loaded.settings.resolved_state_dir(environ)
        store = await Store.open(state_dir)
        return cls(repository, loaded, store, state_dir, environ, initialization_options)

    async def start(self, task_group: TaskGroup) -> None:
        await self.orchestrator.start(task_group)

    async def reload_settings(
        self, client_settings: Mapping[str, Any] | None
    ) -> list[SettingsProblem]:
        """Re-read every source; the state directory only changes on restart."""
        loaded = await anyio.to_thread.run_sync(
            load_settings,
            self.repository.root,
            self.environ,
            self.initialization_options,
            client_settings,
        )
        self.loaded = loaded
        self.orchestrator.settings_changed()
        return loaded.problems

    async def backend_availability(self) -> dict[str, Availability]:
        return {
            name: await backend.availability(self.settings)
            for name, backend in sorted(self.orchestrator.backends.items())
        }

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            await self.orchestrator.stop()
            await self.store.close()


SettingsGetter = Callable[[], Settings]
