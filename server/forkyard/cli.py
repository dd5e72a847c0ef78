"""`forkyard serve | demo | schema`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "protocol" / "schema" / "forkyard.schema.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="forkyard", description=__doc__)
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
    args = parser.parse_args(argv)

    if args.command == "serve":
        return _serve(args)
    if args.command == "demo":
        from forkyard.demo import run_demo

        return run_demo(keep=args.keep)
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
    from forkyard.lsp.server import run_stdio, run_tcp

    if args.tcp:
        host, _, port = args.tcp.rpartition(":")
        run_tcp(host or "127.0.0.1", int(port))
    else:
        run_stdio()
    return 0


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


if __name__ == "__main__":
    sys.exit(main())
