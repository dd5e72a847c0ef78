"""The one place the LSP front is assembled: every feature object built, its handlers
registered, and the features that read the daemon's events handed to `initialize`, which
subscribes each (one task per feature) before the first event can arrive."""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import BinaryIO

import anyio
from pygls.io_ import StdoutWriter

from forkyard.lsp import agents, apply_all, chat, config, lenses, lifecycle, review
from forkyard.lsp.server import ForkyardServer, serve_connection
from forkyard.lsp.wire import StdinSource, StreamSource

logger = logging.getLogger(__name__)


def create_server() -> ForkyardServer:
    server = ForkyardServer()
    agent_feature = agents.AgentFeature(server)
    chat_feature = chat.ChatFeature(server)
    config_feature = config.ConfigFeature(server)
    review_feature = review.Review(server)
    lens_feature = lenses.Lenses(server, review_feature)
    lifecycle.register(
        server, [agent_feature, chat_feature, config_feature, review_feature, lens_feature]
    )
    config.register(server, review_feature.reload_settings)
    agents.register(server, agent_feature)
    chat.register(server, chat_feature)
    review.register(server, review_feature)
    apply_all.register(server, review_feature)
    lenses.register(server, lens_feature)
    return server


def run_stdio(stdin: BinaryIO | None = None, stdout: BinaryIO | None = None) -> None:
    server = create_server()
    source = StdinSource(stdin or sys.stdin.buffer)
    server.protocol.set_writer(StdoutWriter(stdout or sys.stdout.buffer))
    try:
        asyncio.run(serve_connection(server, source))
    except (KeyboardInterrupt, BrokenPipeError):
        pass
    finally:
        server.shutdown()
    sys.exit(server.exit_code)


def run_tcp(host: str, port: int) -> None:
    """One client over TCP, for editors that prefer a socket."""
    server = create_server()

    async def main() -> None:
        done = anyio.Event()

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            server.protocol.set_writer(writer)
            try:
                await serve_connection(server, StreamSource(reader))
            finally:
                done.set()

        tcp = await asyncio.start_server(on_connect, host, port)
        async with tcp:
            logger.info("Forkyard listening on %s:%s", host, port)
            await done.wait()

    try:
        asyncio.run(main())
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.shutdown()
