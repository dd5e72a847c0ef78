"""One agent run's way to its model: a grant on the gateway, and what its sandbox needs
to use it (the socket and the relay, bound in; the URL and the token).

The token stands in for the key everywhere the program looks for one; the URL is a
placeholder the relay replaces with its own port. Metering and refusals come back from
the gateway's thread onto the agent's event loop (`call_soon_threadsafe`): the agent's
usage grows with each call, and a refusal stops the run.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread

from forkyard.agents.base import AgentContext
from forkyard.agents.budget import budget_reached
from forkyard.gateway.grants import Grant
from forkyard.gateway.host import Gateway, shared_gateway
from forkyard.gateway.relay import PLACEHOLDER
from forkyard.models.config import ModelPrice
from forkyard.models.pricing import default_price
from forkyard.settings import Settings
from forkyard_protocol import Usage

#: Where a sandbox finds the gateway's socket and the relay.
SANDBOX_DIR = Path("/forkyard")
SANDBOX_SOCKET = SANDBOX_DIR / "gateway.sock"
SANDBOX_RELAY = SANDBOX_DIR / "relay.py"
RELAY_SCRIPT = Path(__file__).with_name("relay.py")
#: The default upstreams of the kinds of API, when a backend names no base_url.
OPENAI_UPSTREAM = "https://api.openai.com/v1"
ANTHROPIC_UPSTREAM = "https://api.anthropic.com"
#: Gemini's paths (`/v1beta/models/...`) come whole from the program.
GEMINI_UPSTREAM = "https://generativelanguage.googleapis.com"
#: Claude Code's variable for a key sent as a bearer token rather than `x-api-key`.
BEARER_KEY_ENV = "ANTHROPIC_AUTH_TOKEN"
#: Variables a generic command gets: the gateway's URL and this run's token.
GATEWAY_URL_ENV = "FORKYARD_GATEWAY_URL"
GATEWAY_TOKEN_ENV = "FORKYARD_GATEWAY_TOKEN"
#: The system's Python, which every sandbox shows; the relay needs nothing more.
SYSTEM_PYTHON = shutil.which("python3", path=os.defpath)


@dataclass
class AgentAccess:
    gateway: Gateway
    grant: Grant
    token: str
    #: The socket this run's token is valid on.
    socket: Path
    refused: anyio.Event
    #: What a program is given as its model's base URL (the relay fills in its port).
    url: str = PLACEHOLDER

    def revoke(self) -> None:
        self.gateway.revoke(self.token)

    def sandbox_binds(self) -> list[tuple[Path, Path]]:
        """(host path, sandbox path) pairs to bind read-only into the sandbox."""
        return [(self.socket, SANDBOX_SOCKET), (RELAY_SCRIPT, SANDBOX_RELAY)]

    def wrap(self, argv: list[str], *, sandboxed: bool) -> list[str]:
        """`argv` started by the relay, which gives it the gateway on a loopback port."""
        if SYSTEM_PYTHON is None:
            raise FileNotFoundError("the model gateway's relay needs python3 in /usr/bin")
        relay, socket = (
            (SANDBOX_RELAY, SANDBOX_SOCKET) if sandboxed else (RELAY_SCRIPT, self.socket)
        )
        return [SYSTEM_PYTHON, "-I", str(relay), str(socket), "--", *argv]


def default_upstream(*, anthropic: bool, gemini: bool = False) -> str:
    """The provider's own API, for a backend that names no base_url of its own."""
    if gemini:
        return GEMINI_UPSTREAM
    return ANTHROPIC_UPSTREAM if anthropic else OPENAI_UPSTREAM


def model_price(settings: Settings, model: str) -> ModelPrice | None:
    """A model's price by the name a program asks for: a configured model of that name
    with a price of its own, else the default table's."""
    for config in settings.models.values():
        if config.model == model and config.price is not None:
            return config.price
    return default_price(model) if model else None


async def open_access(
    context: AgentContext,
    *,
    label: str,
    upstream: str | None,
    anthropic: bool,
    key_env: str | None,
    gemini: bool = False,
) -> AgentAccess:
    """A grant for this run of the agent, on this process's gateway; `gemini`: its
    model speaks the Gemini API (only the default upstream differs, the gateway tells
    the API of each call by its path)."""
    gateway = await anyio.to_thread.run_sync(shared_gateway)
    loop = asyncio.get_running_loop()
    refused = anyio.Event()
    settings = context.settings

    def on_usage(part: Usage) -> None:
        loop.call_soon_threadsafe(context.add_usage, part)

    def on_refused(_reason: str) -> None:
        loop.call_soon_threadsafe(refused.set)

    grant = Grant(
        label=label,
        upstream=upstream or default_upstream(anthropic=anthropic, gemini=gemini),
        anthropic_upstream=anthropic,
        key_env=key_env,
        environ=lambda: context.environ,
        price=lambda model: model_price(settings, model),
        refusal=lambda spent: budget_reached(spent, context.budget()),
        on_usage=on_usage,
        on_refused=on_refused,
        log_prompts=settings.gateway.log_prompts,
        timeout=settings.gateway.upstream_timeout_seconds,
        spent=context.spent(),
        bearer=key_env == BEARER_KEY_ENV,
    )
    token, socket = await anyio.to_thread.run_sync(gateway.issue, grant)
    return AgentAccess(gateway=gateway, grant=grant, token=token, socket=socket, refused=refused)
