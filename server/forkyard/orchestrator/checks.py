"""A role's `check` (`check = "pytest -q"`): run in the agent's worktree, sandboxed as a
`command` agent's command, when the agent finishes and after a rebase, so the person sees
at a glance which agents' work passes (`Agent.check`), best-of-N included.

The check must judge the agent's work, not add to it: the work is committed before the
check runs, and whatever the check leaves behind (caches, reports) is removed after it,
the worktree put back to that commit (ignored files, like installed dependencies, stay).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from forkyard.agents.base import RunOutcome
from forkyard.agents.command import CommandBackend
from forkyard.orchestrator.context import RunContext
from forkyard.orchestrator.failures import cause_of
from forkyard.settings import RoleConfig
from forkyard_protocol.models import CheckResult

if TYPE_CHECKING:
    from forkyard.orchestrator.orchestrator import Orchestrator
    from forkyard.orchestrator.runtime import AgentRuntime

logger = logging.getLogger(__name__)

#: The output's tail kept on the Agent: enough to see which test failed.
SUMMARY_LINES = 12
SUMMARY_CHARS = 1500


def role_check(orchestrator: Orchestrator, agent_role: str) -> str | None:
    role = orchestrator.settings.role(agent_role)
    command = role.check if role is not None else None
    return command.strip() if command and command.strip() else None


async def run_check(
    orchestrator: Orchestrator, runtime: AgentRuntime, command: str
) -> CheckResult | None:
    """The check's outcome; None when the agent has no worktree to run it in."""
    agent = runtime.agent
    if not agent.worktree:
        return None
    cwd = Path(agent.worktree)
    role = orchestrator.settings.role(agent.role) or RoleConfig()
    ports = orchestrator.ports(agent.number)
    context = RunContext(orchestrator, runtime, cwd, role, extra_env=ports.environment())
    await orchestrator._log(runtime, "system", f"check: {command}")
    try:
        outcome = await CommandBackend().run(context, command)
    except Exception as exc:
        logger.warning("agent #%s: its check could not run", agent.number, exc_info=exc)
        outcome = RunOutcome(False, "", f"the check could not run: {cause_of(exc)}")
    await _restore(orchestrator, cwd, agent.number)
    text = (
        outcome.summary if outcome.ok else "\n".join(filter(None, [outcome.error, outcome.summary]))
    )
    result = CheckResult(passed=outcome.ok, summary=_tail(text))
    await orchestrator._log(runtime, "system", f"check {'passed' if result.passed else 'failed'}")
    return result


async def _restore(orchestrator: Orchestrator, worktree: Path, number: int) -> None:
    """The worktree back to its committed work: what the check wrote goes."""
    try:
        git = await orchestrator.repository.worktree_git(worktree)
        if git.tampered is not None:
            return
        await git.run("reset", "--hard", "--quiet")
        await git.run("clean", "-fdq")
    except Exception as exc:
        logger.warning("agent #%s: could not tidy after its check: %s", number, exc)


def _tail(text: str) -> str:
    lines = text.strip().splitlines()[-SUMMARY_LINES:]
    tail = "\n".join(lines)
    return tail if len(tail) <= SUMMARY_CHARS else "…" + tail[-SUMMARY_CHARS:]
