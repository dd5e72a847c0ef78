"""`forkyard/status`: Forkyard's worktrees and the disk they use, per agent, and whether
the repository's `.forkyard.toml` is trusted (what `:checkhealth` and the status bar show)."""

from __future__ import annotations

from forkyard.lsp.server import ForkyardServer
from forkyard_protocol.messages import StatusParams, StatusResult, WorktreeDiskUse


def register(server: ForkyardServer) -> None:
    @server.request("forkyard/status")
    async def status(ls: ForkyardServer, params: StatusParams) -> StatusResult:
        app = ls.require_app()
        orchestrator = app.orchestrator
        uses = await orchestrator.worktree_usage(measure=params.disk)
        worktrees = [
            WorktreeDiskUse(
                path=use.path,
                kind=use.kind,
                disk_bytes=use.disk_bytes,
                exists=use.exists,
                agent_id=use.agent.id if use.agent else None,
                number=use.agent.number if use.agent else None,
                state=use.agent.state if use.agent else None,
            )
            for use in uses
        ]
        return StatusResult(
            worktrees=worktrees,
            total_disk_bytes=sum(use.disk_bytes for use in uses),
            pool_ready=len(orchestrator.pool.ready),
            pool_size=orchestrator.settings.worktree.pool_size,
            pool_error=orchestrator.pool.last_error,
            trusted=app.loaded.trusted,
            ignored_keys=app.loaded.ignored_keys,
            trust_file=str(app.trust_file()),
        )
