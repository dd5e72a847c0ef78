"""The gateway's end inside a sandbox: a loopback port relayed to the gateway's socket.

    python3 -I relay.py GATEWAY_SOCKET -- PROGRAM ARG...

A sandbox has no network, not even the host's loopback, only a loopback of its own. The
programs there (codex, Claude Code, aider) want an HTTP URL for their model; this binds
a free port on that private loopback, writes its URL wherever the program's arguments
and environment say `@FORKYARD_GATEWAY_URL@`, starts the program, and relays each
connection to the one socket the sandbox was given. It exits with the program's status
and passes it the signals it gets.

Standard library only, no Forkyard import: it runs under the system's Python, inside the
sandbox, where Forkyard's own environment is not mounted.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading

PLACEHOLDER = "@FORKYARD_GATEWAY_URL@"
CHUNK = 65536


def _pipe(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(CHUNK):
            target.sendall(data)
    except OSError:
        pass
    finally:
        for sock, how in ((target, socket.SHUT_WR), (source, socket.SHUT_RD)):
            with contextlib.suppress(OSError):
                sock.shutdown(how)


def _serve(client: socket.socket, gateway_socket: str) -> None:
    upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        upstream.connect(gateway_socket)
    except OSError:
        client.close()
        upstream.close()
        return
    back = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
    back.start()
    _pipe(client, upstream)
    back.join()
    client.close()
    upstream.close()


def _accept(listener: socket.socket, gateway_socket: str) -> None:
    while True:
        try:
            client, _ = listener.accept()
        except OSError:
            return
        threading.Thread(target=_serve, args=(client, gateway_socket), daemon=True).start()


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[2] != "--":
        sys.stderr.write("usage: relay.py GATEWAY_SOCKET -- PROGRAM [ARG...]\n")
        return 2
    gateway_socket, program = argv[1], argv[3:]
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    args = [arg.replace(PLACEHOLDER, url) for arg in program]
    env = {name: value.replace(PLACEHOLDER, url) for name, value in os.environ.items()}
    pid = os.fork()
    if pid == 0:
        listener.close()
        try:
            os.execvpe(args[0], args, env)
        except OSError as error:
            sys.stderr.write(f"cannot run {args[0]}: {error}\n")
        os._exit(127)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda number, _frame: os.kill(pid, number))
    threading.Thread(target=_accept, args=(listener, gateway_socket), daemon=True).start()
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
