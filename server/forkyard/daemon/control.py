"""`forkyard daemon status` and `forkyard daemon stop`: asking a running daemon."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import anyio

from forkyard.daemon.link import connect, process_gone
from forkyard.daemon.paths import DaemonPaths, read_pid
from forkyard.daemon.rpc import Peer
from forkyard_protocol.daemon import DaemonStatus, StopResult


def default_state_dir() -> Path:
    from forkyard.settings import current_environ, load_settings

    environ = current_environ()
    return load_settings(None, environ).settings.resolved_state_dir(environ)


async def ask(state_dir: Path, method: str, params: dict[str, Any]) -> Any:
    """One request to the daemon of `state_dir`; OSError when none answers."""
    stream = await connect(DaemonPaths(state_dir))
    peer = Peer(stream, name="the daemon")
    async with anyio.create_task_group() as group:
        group.start_soon(peer.run, group)
        try:
            return await peer.request(method, params)
        finally:
            await peer.aclose()
            group.cancel_scope.cancel()


def daemon_status(state_dir: Path, *, as_json: bool) -> int:
    try:
        raw = anyio.run(ask, state_dir, "daemon/status", {})
    except OSError:
        if as_json:
            print(json.dumps({"pid": None, "running": False, "stateDir": str(state_dir)}))
        else:
            print(f"no Forkyard daemon runs for {state_dir}")
        return 1
    status = DaemonStatus.model_validate(raw)
    if as_json:
        print(json.dumps(status.wire()))
        return 0
    agents = ", ".join(f"{n} {state}" for state, n in sorted(status.agents.items())) or "none"
    print(f"Forkyard daemon {status.version}, pid {status.pid}, up {status.uptime_seconds:.0f} s")
    print(f"  socket:       {status.socket}")
    print(f"  log:          {status.log_file}")
    print(f"  repositories: {', '.join(status.repositories) or 'none'}")
    print(f"  agents:       {agents}")
    print(f"  fronts:       {len(status.fronts)}")
    for front in status.fronts:
        print(f"    {front.kind} {front.name or ''} on {front.root}")
    return 0


async def stop_and_wait(
    state_dir: Path, *, now: bool, said: Callable[[StopResult], None] | None = None
) -> bool:
    """Ask the daemon to stop and wait until its process is gone; False when none ran.
    Without `now` that is once its running agents finished."""
    pid = read_pid(DaemonPaths(state_dir))
    try:
        result = StopResult.model_validate(await ask(state_dir, "daemon/stop", {"now": now}))
    except OSError:
        return False
    if said is not None:
        said(result)
    if pid is not None:
        await process_gone(pid)
    return True


def stop_daemon(state_dir: Path, *, now: bool) -> int:
    def tell(result: StopResult) -> None:
        # Flushed: a script reading this line must not wait for the daemon to stop.
        if now:
            print("stopping the Forkyard daemon (running agents are interrupted)", flush=True)
        elif result.running:
            print(
                f"the Forkyard daemon stops once its {result.running} running agent(s) finish",
                flush=True,
            )

    if not anyio.run(partial(stop_and_wait, state_dir, now=now, said=tell)):
        print(f"no Forkyard daemon runs for {state_dir}", file=sys.stderr)
        return 1
    print("the Forkyard daemon stopped")
    return 0
