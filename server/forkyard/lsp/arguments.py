"""Arguments of `workspace/executeCommand` commands, checked the same way everywhere."""

from __future__ import annotations

from typing import Any, NoReturn

from forkyard.errors import InvalidRequest


def agent_arg(command: str, args: tuple[Any, ...]) -> str:
    if not args or not isinstance(args[0], str | int) or isinstance(args[0], bool):
        raise_invalid(f"{command} takes [agentId]")
    return str(args[0])


def raise_invalid(message: str) -> NoReturn:
    raise InvalidRequest(message)
