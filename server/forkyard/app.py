"""One Forkyard session for one repository: settings, store and orchestrator wired
together. Knows nothing of LSP; the language server owns one of these."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import anyio
from anyio.abc import TaskGroup

from forkyard.agents.acp import AcpBackend
from forkyard.agents.base import Availability, Backend
from forkyard.agents.command import CommandBackend
from forkyard.agents.external import external_backends
from forkyard.agents.external_runtime import ExternalProgramBackend
from forkyard.agents.llm import LlmBackend
from forkyard.approvals import Approvals
from forkyard.bus import EventBus
from forkyard.conversation.commands import ChatCommands
from forkyard.conversation.history import ModelHandle
from forkyard.conversation.service import Conversation
from forkyard.errors import InvalidRequest
from forkyard.models import ChatModel, ModelConfig, create_chat_model
from forkyard.models.loading import load_sdks
from forkyard.models.pricing import price_for
from forkyard.orchestrator.ledger import UsageLedger
from forkyard.orchestrator.orchestrator import Orchestrator
from forkyard.settings import LoadedSettings, Settings, SettingsProblem, load_settings
from forkyard.store import Store
from forkyard.trust import TrustError, repository_key, set_trust, trust_file
from forkyard.workspace.git import Repository
from forkyard_protocol.models import Agent

CHAT_MODEL = "default"


@dataclass
class TrustChange:
    """What `ForkyardApp.trust` did: the repository, its trust now, what still does not
    apply, and the settings problems the reload found that were not reported yet."""

    root: Path
    trusted: bool
    ignored_keys: list[str]
    trust_file: Path
    problems: list[SettingsProblem]


def builtin_backends() -> dict[str, Backend]:
    return {"command": CommandBackend(), "llm": LlmBackend()}


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
        ledger: UsageLedger | None = None,
    ) -> None:
        self.repository = repository
        self.loaded = loaded
        self.store = store
        self.state_dir = state_dir
        self.environ = environ
        self.initialization_options = initialization_options
        self.client_settings: Mapping[str, Any] | None = None
        self.owns_store = True
        # One-line notices (the untrusted keys) are said once per session; `initialized`
        # shows the first load's.
        self._reported = {str(p) for p in loaded.problems if p.summary is not None}
        self.bus = EventBus()
        self.orchestrator = Orchestrator(
            repository,
            store,
            lambda: self.settings,
            {**external_backends(loaded.settings), **builtin_backends()},
            state_dir,
            environ,
            self.bus,
            ledger,
        )
        self.approvals = Approvals(
            self.bus, lambda: self.settings.approval_timeout_seconds, self._waiting_for
        )
        self.orchestrator.approver = self.approvals.ask
        self._chat_model: tuple[ModelConfig, ChatModel] | None = None
        self._retired_models: list[ChatModel] = []
        self.commands = ChatCommands(self.orchestrator)
        self.conversation = Conversation(store, self.orchestrator, self.chat_model, self.commands)

    def _waiting_for(self, agent: Agent, what: str | None) -> None:
        """An agent waiting for an approval stays `running`; its progress says so."""
        try:
            runtime = self.orchestrator.resolve(agent.id)
        except InvalidRequest:
            return
        if runtime.agent.state == "running":
            self.orchestrator.progress(runtime, what or "running", None)

    def chat_model(self) -> ModelHandle | None:
        """The configured chat model, created once per configuration. A configuration
        that cannot make a model (a missing key) raises ModelError, which the turn
        reports in the thread."""
        config = self.settings.models.get(CHAT_MODEL)
        if config is None:
            return None
        if self._chat_model is None or self._chat_model[0] != config:
            if self._chat_model is not None:
                self._retired_models.append(self._chat_model[1])
            self._chat_model = (config, create_chat_model(config, self.environ))
        return ModelHandle(self._chat_model[1], config.context_tokens, price_for(config))

    @property
    def settings(self) -> Settings:
        return self.loaded.settings

    @classmethod
    async def open(
        cls,
        root: Path,
        environ: Mapping[str, str],
        initialization_options: Mapping[str, Any] | None = None,
        *,
        state_dir: Path | None = None,
        client_settings: Mapping[str, Any] | None = None,
        store: Store | None = None,
        ledger: UsageLedger | None = None,
    ) -> ForkyardApp:
        """`state_dir`, `store` and the store's `ledger`: the daemon's, shared by every
        repository it serves (a day's budget is the person's, not a repository's)."""
        repository = await Repository.discover(root)
        loaded = await anyio.to_thread.run_sync(
            load_settings, repository.root, environ, initialization_options, client_settings
        )
        state_dir = state_dir or loaded.settings.resolved_state_dir(environ)
        shared = store is not None
        store = store or await Store.open(state_dir)
        app = cls(repository, loaded, store, state_dir, environ, initialization_options, ledger)
        app.client_settings = client_settings
        app.owns_store = not shared
        return app

    async def start(self, task_group: TaskGroup) -> None:
        await self.orchestrator.start(task_group)
        await self.conversation.start(task_group)
        if self.settings.models:
            # Loading the SDKs takes a second of a worker thread: now, while the editor
            # is still opening, rather than when the person sends their first message.
            task_group.start_soon(load_sdks, name="loading the model SDKs")

    async def reload_settings(
        self, client_settings: Mapping[str, Any] | None
    ) -> list[SettingsProblem]:
        """Re-read every source; the state directory only changes on restart. Returns
        the problems to tell the user: one-line notices already told are left out."""
        self.client_settings = client_settings
        loaded = await anyio.to_thread.run_sync(
            load_settings,
            self.repository.root,
            self.environ,
            self.initialization_options,
            client_settings,
        )
        self.loaded = loaded
        for name, backend in external_backends(loaded.settings).items():
            # A `[backends.NAME]` that now applies (the repository was just trusted) can
            # be dispatched to at once; one that went away stays until restart.
            self.orchestrator.backends.setdefault(name, backend)
        self.orchestrator.settings_changed()
        fresh = [p for p in loaded.problems if p.summary is None or str(p) not in self._reported]
        self._reported.update(str(p) for p in fresh if p.summary is not None)
        return fresh

    async def trust(self, path: Path | None = None, *, revoke: bool = False) -> TrustChange:
        """Record that the user trusts (or no longer trusts) this repository, then reload
        the settings so its `.forkyard.toml` applies (or stops applying) at once.

        `path`, if given, must be this repository or inside it: a session only decides
        about its own repository. Raises InvalidRequest naming what is wrong."""
        root = self.repository.root
        if path is not None:
            inside = await anyio.to_thread.run_sync(_inside, Path(path), root)
            if not inside:
                raise InvalidRequest(f"{path} is not in this repository ({root})")
        try:
            await anyio.to_thread.run_sync(
                partial(set_trust, root, self.environ, trusted=not revoke)
            )
        except TrustError as exc:
            raise InvalidRequest(str(exc)) from exc
        problems = await self.reload_settings(self.client_settings)
        return TrustChange(
            root,
            self.loaded.trusted,
            list(self.loaded.ignored_keys),
            trust_file(self.environ),
            problems,
        )

    def trust_file(self) -> Path:
        return trust_file(self.environ)

    async def backend_availability(self) -> dict[str, Availability]:
        return {
            name: await backend.availability(self.settings)
            for name, backend in sorted(self.orchestrator.backends.items())
        }

    def backend_kind(self, name: str) -> Literal["builtin", "external", "acp"]:
        backend = self.orchestrator.backends.get(name)
        if isinstance(backend, AcpBackend):
            return "acp"
        return "external" if isinstance(backend, ExternalProgramBackend) else "builtin"

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            await self.orchestrator.stop()
            models = self._retired_models + ([self._chat_model[1]] if self._chat_model else [])
            for model in models:
                await model.aclose()
            for backend in self.orchestrator.backends.values():
                if isinstance(backend, LlmBackend):
                    await backend.aclose()
            if self.owns_store:
                await self.store.close()
            self.bus.close()


def _inside(path: Path, root: Path) -> bool:
    """Whether `path` is `root` or under it, both resolved (blocking: a worker thread)."""
    resolved, top = Path(repository_key(path)), Path(repository_key(root))
    return resolved == top or top in resolved.parents
