"""`forkyard daemon` and how fronts reach it: the socket server, the hub of sessions, the
API, the line-delimited JSON-RPC peer, the link fronts keep up."""
