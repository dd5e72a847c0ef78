"""Which repositories the user trusts with their `.forkyard.toml`.

A cloned repository is someone else's code: its `.forkyard.toml` must not be able to
point the chat at its own server with the user's key, or run a setup command, until the
user says so. That decision belongs to the user, so it lives in the user's config
directory (never in a repository or in the per-repository state an agent's worktree sits
next to), keyed by the repository's resolved root, so a symlinked path or a second
clone elsewhere is the same or another repository by where it really is.

Everything here does blocking file I/O: callers run it in a worker thread.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import stat
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TRUST_FILE_NAME = "trusted.json"
_FORMAT_VERSION = 1


def trust_file(environ: Mapping[str, str]) -> Path:
    """`$XDG_CONFIG_HOME/forkyard/trusted.json` (else `~/.config/...`), next to the
    user's own config file."""
    base = environ.get("XDG_CONFIG_HOME") or str(Path(environ.get("HOME", "~")) / ".config")
    return Path(base).expanduser() / "forkyard" / TRUST_FILE_NAME


def repository_key(root: Path) -> str:
    """The resolved absolute path: symlinks and `..` lead to the same key."""
    return str(Path(root).expanduser().resolve())


@dataclass
class TrustList:
    """The trusted repositories (resolved root -> when trusted) and, if the file could
    not be used, why: then nothing is trusted."""

    path: Path
    repositories: dict[str, str] = field(default_factory=dict)
    problem: str | None = None

    def trusts(self, root: Path) -> bool:
        return repository_key(root) in self.repositories


class TrustError(Exception):
    """The trust file cannot be written; the message names it and why."""


def _parse(text: str) -> dict[str, str]:
    data: Any = json.loads(text)
    if not isinstance(data, dict) or not isinstance(data.get("repositories"), dict):
        raise TypeError('expected an object with a "repositories" object')
    repositories: dict[str, str] = {}
    for key, entry in data["repositories"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("trusted_at"), str):
            raise TypeError(f'repository {key!r}: expected {{"trusted_at": "<time>"}}')
        if not Path(key).is_absolute():
            raise ValueError(f"repository {key!r}: not an absolute path")
        repositories[key] = entry["trusted_at"]
    return repositories


def read_trust(environ: Mapping[str, str]) -> TrustList:
    """The trust list; a missing file trusts nothing, a broken or unsafe one too (with
    the reason in `problem`), never an exception."""
    path = trust_file(environ)
    try:
        info = path.lstat()
    except FileNotFoundError:
        return TrustList(path)
    except OSError as exc:
        return TrustList(path, problem=f"{path} cannot be read: {exc.strerror}")
    if not stat.S_ISREG(info.st_mode):
        return TrustList(path, problem=f"{path} is not a regular file")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) or info.st_uid != os.getuid():
        # Someone else could have written it: it proves nothing about the user's wish.
        return TrustList(path, problem=f"{path} is writable by others or not yours")
    try:
        repositories = _parse(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError) as exc:
        return TrustList(path, problem=f"{path} cannot be read: {exc}")
    return TrustList(path, repositories)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One writer at a time (a CLI and a server trusting at once lose no entry)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write(path: Path, repositories: Mapping[str, str]) -> None:
    """Temp file in the same directory, 0600, fsync, rename: a reader sees the old file
    or the new one, never half of one."""
    data = {
        "version": _FORMAT_VERSION,
        "repositories": {key: {"trusted_at": at} for key, at in sorted(repositories.items())},
    }
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), 0o600)
            json.dump(data, handle, indent=2)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def set_trust(root: Path, environ: Mapping[str, str], *, trusted: bool) -> TrustList:
    """Record (or revoke) trust in `root`; returns the new list. A broken trust file is
    replaced: what it said could not be used anyway."""
    path = trust_file(environ)
    key = repository_key(root)
    try:
        with _locked(path):
            current = read_trust(environ)
            repositories = dict(current.repositories)
            if trusted:
                stamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
                repositories[key] = repositories.get(key, stamp)
            else:
                repositories.pop(key, None)
            _write(path, repositories)
    except OSError as exc:
        raise TrustError(f"cannot write the trust file {path}: {exc.strerror or exc}") from exc
    return TrustList(path, repositories)


# --- what trust unlocks ------------------------------------------------------------------

#: What an untrusted repository's `.forkyard.toml` may set (dotted TOML keys; a table
#: allows everything under it). Only budgets, sizes and timings: nothing here reaches the
#: network, runs a command, names a secret, copies the user's ignored files into a
#: worktree or loosens the sandbox. Any key not listed (including keys added later)
#: needs trust.
UNTRUSTED_REPOSITORY_KEYS = frozenset(
    {
        "max_parallel_agents",
        "command_timeout_seconds",
        "max_log_entries_per_agent",
        "daemon_idle_seconds",
        "approval_timeout_seconds",
        "agent",
        "worktree.pool_size",
        "worktree.checkout_workers",
        "worktree.setup_timeout_seconds",
        "worktree.port_base",
        "worktree.ports_per_agent",
        "worktree.gc_grace_seconds",
        "worktree.gc_interval_seconds",
        "gateway.upstream_timeout_seconds",
        # How hunks are drawn, and full worktrees instead of overlays: neither reaches
        # anything (overlays run only where the machine allows them).
        "diagnostic_severity",
        "worktree.mode",
    }
)

#: Keys of any role (`roles.NAME.KEY`) an untrusted repository may set: budgets only
#: limit what an agent spends.
UNTRUSTED_ROLE_KEYS = frozenset({"budget_usd", "max_tokens"})

#: Never taken from a repository's file, trusted or not: only the user turns these on.
USER_ONLY_KEYS = frozenset(
    {"worktree.setup_network", "gateway.log_prompts", "budget.daily_usd", "budget.thread_usd"}
)


@dataclass
class RepositoryValues:
    """A repository file's values split by trust: what applies, and the dotted keys left
    out for want of trust (`untrusted`) or because only the user may set them."""

    kept: dict[str, Any]
    untrusted: list[str] = field(default_factory=list)
    user_only: list[str] = field(default_factory=list)


def _leaves(prefix: str, value: Any) -> list[str]:
    if isinstance(value, Mapping) and value:
        return [leaf for key, sub in value.items() for leaf in _leaves(f"{prefix}.{key}", sub)]
    return [prefix]


def split_repository_values(
    values: Mapping[str, Any],
    *,
    trusted: bool,
    known: Callable[[str], bool] = lambda _key: True,
) -> RepositoryValues:
    """`values` (snake_case keys) without what this repository may not set. Keys that
    are not settings at all (`known` says no) stay, so that validation reports them as
    unknown (a typo) rather than as wanting trust; validation drops them anyway."""
    result = RepositoryValues({})

    def below(path: str, keys: frozenset[str]) -> bool:
        return any(key.startswith(path + ".") for key in keys)

    def allowed(path: str) -> bool:
        parts = path.split(".")
        role_key = len(parts) == 3 and parts[0] == "roles" and parts[2] in UNTRUSTED_ROLE_KEYS
        return path in UNTRUSTED_REPOSITORY_KEYS or role_key

    def allowed_below(path: str) -> bool:
        parts = path.split(".")
        in_roles = parts[0] == "roles" and len(parts) <= 2
        return in_roles or below(path, UNTRUSTED_REPOSITORY_KEYS)

    def walk(node: Mapping[str, Any], into: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            path = f"{prefix}{key}"
            if path in USER_ONLY_KEYS:
                if value:
                    result.user_only.append(path)
            elif isinstance(value, Mapping) and (
                below(path, USER_ONLY_KEYS) or (not trusted and allowed_below(path))
            ):
                into[key] = {}
                walk(value, into[key], path + ".")
                if not into[key] and path.startswith("roles"):
                    # A role table left empty would define that role with defaults.
                    del into[key]
            elif trusted or allowed(path) or not known(path):
                into[key] = value
            else:
                result.untrusted.extend(_leaves(path, value))

    walk(values, result.kept, "")
    return result


def ignored_summary(untrusted: list[str], *, limit: int = 88) -> str:
    """One short line naming the ignored keys and how to trust: an editor shows it as is,
    and Neovim asks to "press ENTER" for anything longer than its command line."""
    # `models.default.base_url` and `.api_key_env` read as one `models.default` here; the
    # full list is in `forkyard/status`.
    names: list[str] = []
    for key in untrusted:
        parts = key.split(".")
        name = ".".join(parts[:2]) if parts[0] in ("models", "roles", "backends") else key
        if name not in names:
            names.append(name)
    head, tail = ".forkyard.toml untrusted, ignored ", "; run forkyard trust"
    shown: list[str] = []
    for index, name in enumerate(names):
        more = len(names) - index - 1
        suffix = f" +{more} more" if more else ""
        if len(head + ", ".join([*shown, name]) + suffix + tail) > limit and shown:
            return head + ", ".join(shown) + f" +{len(names) - index} more" + tail
        shown.append(name)
    return head + ", ".join(shown) + tail
