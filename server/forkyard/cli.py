"""`forkyard serve | daemon | agents | dispatch | chat | log | diff | apply | demo | schema |
gc | status | trust`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import forkyard

if TYPE_CHECKING:
    from forkyard.settings import Settings
    from forkyard.workspace.git import Repository

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "protocol" / "schema" / "forkyard.schema.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="forkyard", description=__doc__)
    parser.add_argument("--version", action="version", version=f"forkyard {forkyard.__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the language server (stdio by default)")
    serve.add_argument("--tcp", metavar="HOST:PORT", help="listen on a TCP socket instead")
    serve.add_argument("--stdio", action="store_true", help="stdio (the default)")
    serve.add_argument("--log-file", type=Path, help="write the server's log here")
    serve.add_argument("--log-level", default="WARNING")
    demo = commands.add_parser("demo", help="three background agents on a sample repository")
    demo.add_argument("--keep", action="store_true", help="keep the sample repository")
    schema = commands.add_parser("schema", help="write the protocol's JSON Schema")
    schema.add_argument("--output", type=Path, default=SCHEMA_PATH)
    schema.add_argument("--check", action="store_true", help="fail if the file is stale")
    gc = commands.add_parser(
        "gc",
        help="remove worktrees of agents applied or discarded longer than the grace period",
    )
    gc.add_argument("--dry-run", action="store_true", help="report, remove nothing")
    gc.add_argument("--repo", type=Path, default=Path("."), help="the repository (default: .)")
    gc.add_argument(
        "--agent",
        type=int,
        action="append",
        default=[],
        metavar="N",
        help="also remove agent #N's worktree whatever its state (its work is kept in a ref)",
    )
    status = commands.add_parser("status", help="agents' worktrees and the disk they use")
    status.add_argument("--repo", type=Path, default=Path("."), help="the repository")
    trust = commands.add_parser(
        "trust",
        help="let a repository's .forkyard.toml set models, backends, setup and the sandbox",
    )
    trust.add_argument("path", nargs="?", type=Path, default=Path("."), help="default: .")
    trust.add_argument("--revoke", action="store_true", help="no longer trust it")
    trust.add_argument("--list", action="store_true", help="print the trusted repositories")
    daemon = commands.add_parser(
        "daemon",
        help="the background process that owns agents, worktrees and conversations "
        "(`forkyard serve` starts it when none answers)",
    )
    daemon.add_argument("action", nargs="?", choices=["run", "status", "stop"], default="run")
    daemon.add_argument("--state-dir", type=Path, help="default: the configured state dir")
    daemon.add_argument("--idle-seconds", type=float, help="exit after this long unused")
    daemon.add_argument("--detach", action="store_true", help="run in the background")
    daemon.add_argument("--json", action="store_true", help="status: one JSON object")
    daemon.add_argument("--now", action="store_true", help="stop: interrupt running agents")
    daemon.add_argument("--log-level", default="INFO")
    _add_cluster_command(commands)
    from forkyard.terminal_args import add_commands

    add_commands(commands)
    args = parser.parse_args(argv)

    if args.command == "serve":
        return _serve(args)
    if args.command == "daemon":
        return _daemon(args)
    if getattr(args, "terminal", None) is not None:
        from forkyard.terminal import run_command

        return run_command(args)
    if args.command == "cluster":
        return _run_cluster(args)
    if args.command == "demo":
        from forkyard.demo import run_demo

        return run_demo(keep=args.keep)
    if args.command in ("gc", "status", "trust"):
        import anyio

        if args.command == "trust":
            return anyio.run(_trust, args.path, args.revoke, args.list)
        if args.command == "gc":
            from forkyard.terminal import gc_through_daemon

            forced = frozenset(args.agent)
            repo = args.repo.absolute()
            done = gc_through_daemon(repo, args.dry_run, forced)
            return done if done is not None else anyio.run(_gc, repo, args.dry_run, forced)
        return anyio.run(_status, args.repo)
    return _schema(args.output, check=args.check)


def _serve(args: argparse.Namespace) -> int:
    if args.log_file:
        logging.basicConfig(
            filename=args.log_file,
            level=args.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
    else:
        # stdout is the protocol channel: logs go to stderr only.
        logging.basicConfig(stream=sys.stderr, level=args.log_level.upper())
    from forkyard.lsp.features import run_stdio, run_tcp

    if args.tcp:
        host, _, port = args.tcp.rpartition(":")
        run_tcp(host or "127.0.0.1", int(port))
    else:
        run_stdio()
    return 0


def _daemon(args: argparse.Namespace) -> int:
    from forkyard.daemon.control import daemon_status, default_state_dir, stop_daemon

    state_dir = (args.state_dir or default_state_dir()).expanduser().absolute()
    if args.action == "status":
        return daemon_status(state_dir, as_json=args.json)
    if args.action == "stop":
        return stop_daemon(state_dir, now=args.now)
    from forkyard.daemon.server import DEFAULT_IDLE_SECONDS, run_daemon

    idle = args.idle_seconds if args.idle_seconds is not None else DEFAULT_IDLE_SECONDS
    if args.detach:
        import os

        if os.fork() != 0:
            return 0  # the caller goes on; the daemon is the child, in its own session
    return run_daemon(state_dir, idle, args.log_level)


def _schema(output: Path, *, check: bool) -> int:
    from forkyard_protocol.schema import schema_text

    text = schema_text()
    if check:
        current = output.read_text() if output.exists() else ""
        if current != text:
            print(f"{output} is stale: run `forkyard schema`", file=sys.stderr)
            return 1
        return 0
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    print(f"wrote {output}")
    return 0


def _add_cluster_command(commands: Any) -> None:
    cluster = commands.add_parser("cluster", help="the Ray cluster agents may be placed on")
    cluster.add_argument("action", choices=["check"], help="check: is it usable, and why not")
    cluster.add_argument("--json", action="store_true", help="one JSON object")
    cluster.add_argument("--address", help="default: the configured [cluster] address")
    cluster.add_argument("--repo", type=Path, default=Path("."), help="whose settings")


def _run_cluster(args: argparse.Namespace) -> int:
    import anyio

    return anyio.run(_cluster_check, args)


async def _cluster_check(args: argparse.Namespace) -> int:
    """`forkyard cluster check`: the address given, else the settings' of `--repo` (the
    user's config alone outside a repository)."""
    import anyio.to_thread

    from forkyard.cluster.check import run_check
    from forkyard.settings import current_environ, load_settings
    from forkyard.workspace.git import GitError, Repository

    try:
        root: Path | None = (await Repository.discover(args.repo.absolute())).root
    except GitError:
        root = None
    loaded = await anyio.to_thread.run_sync(load_settings, root, current_environ())
    config = loaded.settings.cluster
    if args.address:
        config = config.model_copy(update={"address": args.address})
    return await run_check(config, as_json=args.json)


async def _open_repository(repo: Path) -> tuple[Repository, Settings, Path, str] | None:
    """The repository at `repo`, its settings, state directory and store key; None (and
    a message) when `repo` is not in a git repository."""
    import anyio
    import anyio.to_thread

    from forkyard.orchestrator.orchestrator import repository_key
    from forkyard.settings import current_environ, load_settings
    from forkyard.workspace.git import GitError, Repository

    environ = current_environ()
    try:
        repository = await Repository.discover(Path(await anyio.Path(repo).absolute()))
    except GitError as exc:
        print(f"forkyard: {exc}", file=sys.stderr)
        return None
    loaded = await anyio.to_thread.run_sync(load_settings, repository.root, environ)
    for problem in loaded.problems:
        print(problem, file=sys.stderr)
    state_dir = loaded.settings.resolved_state_dir(environ)
    return repository, loaded.settings, state_dir, repository_key(repository.root)


async def _gc(repo: Path, dry_run: bool, forced: frozenset[int]) -> int:
    """`forkyard gc`: the server's rules (workspace/gc.py), run on the store directly, so
    it works whether a server runs or not."""
    from forkyard.clock import now_iso
    from forkyard.orchestrator.orchestrator import worktrees_directory
    from forkyard.store import Store
    from forkyard.workspace.gc import Removal, collect_garbage
    from forkyard_protocol.models import Agent, LogEntry

    opened = await _open_repository(repo)
    if opened is None:
        return 2
    repository, settings, state_dir, key = opened
    async with await Store.open(state_dir) as store:

        async def removed(agent: Agent, removal: Removal) -> None:
            stamp = now_iso()
            text = (
                f"worktree {removal.worktree} removed by `forkyard gc`; "
                f"its work is kept at {removal.keep_ref}"
            )
            update = {"worktree": None, "branch": None, "updated_at": stamp}
            await store.save_agent(key, agent.model_copy(update=update))
            await store.append_log(agent.id, [LogEntry(time=stamp, kind="system", text=text)])

        report = await collect_garbage(
            repository,
            await store.load_agents(key),
            worktrees_dir=worktrees_directory(state_dir, key),
            grace_seconds=settings.worktree.gc_grace_seconds,
            dry_run=dry_run,
            forced=forced,
            on_removed=removed,
        )
    for line in report.lines():
        print(line)
    return 1 if report.errors else 0


async def _status(repo: Path) -> int:
    """`forkyard status`: every agent's worktree and the disk it uses, the pool's too."""
    from forkyard.orchestrator.orchestrator import worktrees_directory
    from forkyard.settings import current_environ
    from forkyard.store import Store
    from forkyard.workspace.gc import human_bytes, worktree_usage
    from forkyard.workspace.overlay import choose_mode, overlay_support

    opened = await _open_repository(repo)
    if opened is None:
        return 2
    repository, settings, state_dir, key = opened
    async with await Store.open(state_dir) as store:
        agents = await store.load_agents(key)
    worktrees_dir = worktrees_directory(state_dir, key)
    uses = await worktree_usage(repository, agents, worktrees_dir)
    print(f"{repository.root}: {len(agents)} agent(s), worktrees under {state_dir}")
    support = await overlay_support(worktrees_dir)
    print(f"  mode: {choose_mode(settings.worktree.mode, current_environ(), support).reason}")
    for use in uses:
        if use.agent is not None:
            name = f"#{use.agent.number} {use.agent.state}"
            where = use.path if use.exists else f"{use.path} (folder missing)"
            print(f"  {name:<18} {human_bytes(use.disk_bytes):>10}  {where}  {use.agent.title}")
        else:
            print(f"  {use.kind:<18} {human_bytes(use.disk_bytes):>10}  {use.path}")
    for info in await repository.list_worktrees():
        if info.prunable:
            print(f"  vanished           {'':>10}  {info.path} (`forkyard gc` prunes it)")
    print(f"  {'total':<18} {human_bytes(sum(use.disk_bytes for use in uses)):>10}")
    return 0


async def _trust(path: Path, revoke: bool, list_only: bool) -> int:
    """`forkyard trust`: recorded in the user's config directory (trust.py), for the
    repository's root, whichever folder of it was named."""
    import anyio.to_thread

    from forkyard.settings import current_environ
    from forkyard.trust import TrustError, read_trust, set_trust
    from forkyard.workspace.git import GitError, Repository

    environ = current_environ()
    if list_only:
        trust = await anyio.to_thread.run_sync(read_trust, environ)
        if trust.problem:
            print(f"forkyard: {trust.problem}; nothing is trusted", file=sys.stderr)
            return 1
        for root, when in sorted(trust.repositories.items()):
            gone = "" if await anyio.Path(root).is_dir() else "  (folder missing)"
            print(f"{root}  trusted {when}{gone}")
        return 0
    try:
        repository = await Repository.discover(Path(await anyio.Path(path).absolute()))
    except GitError as exc:
        print(f"forkyard: {exc}", file=sys.stderr)
        return 2
    try:
        trust = await anyio.to_thread.run_sync(
            lambda: set_trust(repository.root, environ, trusted=not revoke)
        )
    except TrustError as exc:
        print(f"forkyard: {exc}", file=sys.stderr)
        return 1
    if revoke:
        print(f"no longer trusted: {repository.root} (its .forkyard.toml is limited again)")
    else:
        print(f"trusted: {repository.root} (its .forkyard.toml applies in full)")
    print(f"recorded in {trust.path}; running servers apply it on their next reload")
    return 0


if __name__ == "__main__":
    sys.exit(main())
