"""Where a state directory's daemon lives: its lock, pid file, socket and log. One daemon
per state directory; everything of it is inside that directory, which is the user's alone
(0700)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: A Unix socket's path must fit in 108 bytes; a longer one is reached through
#: /proc/self/fd/N of the directory, which is short.
MAX_SOCKET_PATH = 100


@dataclass(frozen=True)
class DaemonPaths:
    state_dir: Path

    @property
    def lock(self) -> Path:
        return self.state_dir / "daemon.lock"

    @property
    def pid(self) -> Path:
        return self.state_dir / "daemon.pid"

    @property
    def socket(self) -> Path:
        return self.state_dir / "daemon.sock"

    @property
    def log(self) -> Path:
        return self.state_dir / "logs" / "daemon.log"


def private_directory(path: Path) -> None:
    """Create `path` (and parents) and make it the user's alone. Blocking."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def socket_address(socket: Path) -> tuple[str, int | None]:
    """The path to bind or connect to, and a directory fd to close afterwards (or None).
    Long paths go through the directory's fd, so a deep state directory still works."""
    if len(os.fsencode(socket)) <= MAX_SOCKET_PATH:
        return str(socket), None
    fd = os.open(socket.parent, os.O_PATH | os.O_DIRECTORY)
    return f"/proc/self/fd/{fd}/{socket.name}", fd


def read_pid(paths: DaemonPaths) -> int | None:
    try:
        text = paths.pid.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
