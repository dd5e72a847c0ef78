"""Who may call the gateway: one random token per agent run, valid for that run only.

A grant says where that agent's calls go (its backend's upstream and the name of the
variable holding the key, never the key), what it has spent, and what to do when a call
is metered or refused. Grants are issued and revoked on the daemon's event loop and read
on the gateway's thread, hence the lock; tokens are looked up by their digest, so a
lookup's timing says nothing about a token it did not find.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from forkyard.models.config import ModelPrice
from forkyard.models.pricing import add_usage, cost_usd
from forkyard.models.types import Usage
from forkyard_protocol import Usage as WireUsage

#: Every token starts so, which makes one easy to recognise in a leak report.
TOKEN_PREFIX = "fy-gw-"


@dataclass
class Grant:
    """One agent run's access to the gateway."""

    #: How the agent appears in the gateway's log ("agent #3").
    label: str
    #: The upstream's base URL; a request's path is appended to it.
    upstream: str
    #: The upstream speaks the Anthropic API (the key goes in `x-api-key`).
    anthropic_upstream: bool
    #: The variable of the daemon's environment that holds the key, read at each call.
    key_env: str | None
    environ: Callable[[], Mapping[str, str]]
    #: The price of a model by its name, None when unknown.
    price: Callable[[str], ModelPrice | None]
    #: Why the next call must not start (a budget reached), or None. Given what this
    #: agent has spent so far.
    refusal: Callable[[WireUsage | None], str | None]
    #: Called, on the gateway's thread, with each metered call and with a refusal.
    on_usage: Callable[[WireUsage], None]
    on_refused: Callable[[str], None]
    log_prompts: bool = False
    #: The key goes upstream as a bearer token even to an Anthropic API (a key held in
    #: ANTHROPIC_AUTH_TOKEN, as proxies in front of that API want it).
    bearer: bool = False
    #: Seconds the upstream may take to start answering, and between two chunks.
    timeout: float = 600.0
    #: What the agent spent before this run, then with every call of it.
    spent: WireUsage | None = None
    refused: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def key(self) -> str | None:
        """The real key, read from the environment now (so a rotated key is used from
        the next call on, and none is kept in the gateway)."""
        return (self.environ().get(self.key_env) or None) if self.key_env else None

    def check(self) -> str | None:
        """Why this call is refused, or None; a refusal is reported once."""
        with self._lock:
            spent = self.spent
        reason = self.refusal(spent)
        if reason is not None:
            first = self.refused is None
            self.refused = reason
            if first:
                self.on_refused(reason)
        return reason

    def meter(self, model: str, usage: Usage) -> WireUsage:
        """Count one call: its cost at the model's price (None when unknown)."""
        part = WireUsage(
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cached_tokens=usage.cached_tokens,
            cost_usd=cost_usd(usage, self.price(model)),
        )
        with self._lock:
            self.spent = add_usage(self.spent, part)
        self.on_usage(part)
        return part


class GrantTable:
    """The live grants, by token digest."""

    def __init__(self) -> None:
        self._grants: dict[bytes, Grant] = {}
        self._lock = threading.Lock()

    def issue(self, grant: Grant) -> str:
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._lock:
            self._grants[_digest(token)] = grant
        return token

    def revoke(self, token: str) -> None:
        with self._lock:
            self._grants.pop(_digest(token), None)

    def lookup(self, token: str | None) -> Grant | None:
        if not token:
            return None
        with self._lock:
            return self._grants.get(_digest(token))

    def __len__(self) -> int:
        with self._lock:
            return len(self._grants)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "replace")).digest()
