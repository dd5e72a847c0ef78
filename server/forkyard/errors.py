"""The one table of errors: what the domain raises, and the JSON-RPC code each becomes,
on the editor's connection and on the daemon's alike. A front that receives an error from
the daemon raises the same class again (`from_code`), so an editor sees the code and the
message the domain chose, whichever process raised it."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from forkyard_protocol import describe_validation_error

M = TypeVar("M", bound=BaseModel)


class ForkyardError(Exception):
    """Base of every error Forkyard reports to a user."""

    code = -32603


class InvalidRequest(ForkyardError):
    """A bad field or an unknown id: answered with -32602 and this message."""

    code = -32602


class UnknownAgent(InvalidRequest):
    def __init__(self, ref: str) -> None:
        super().__init__(f"agentId: no agent with id or number {ref!r}")


class UnknownThread(InvalidRequest):
    def __init__(self, thread_id: str) -> None:
        super().__init__(f"threadId: no thread with id {thread_id!r}")


class WrongState(ForkyardError):
    """The agent exists but its state does not allow this (apply a running agent):
    -32803, LSP's RequestFailed."""

    code = -32803


class NotReady(ForkyardError):
    """Asked before the session is open (before `initialize`, before the daemon answered):
    -32002, LSP's ServerNotInitialized."""

    code = -32002


class DaemonStopping(NotReady):
    """The daemon is stopping (`daemon stop`, or replaced by a newer one): a front waits
    until it is gone and starts the next."""

    code = -32001


class DaemonUnavailable(ForkyardError):
    """The daemon cannot be reached or started; the message says why."""

    code = -32002


#: JSON-RPC code -> the class a front raises for it. Codes not here become ForkyardError.
ERRORS_BY_CODE: dict[int, type[ForkyardError]] = {
    InvalidRequest.code: InvalidRequest,
    WrongState.code: WrongState,
    NotReady.code: NotReady,
    DaemonStopping.code: DaemonStopping,
}


def error_code(exc: ForkyardError) -> int:
    return exc.code


def from_code(code: int, message: str) -> ForkyardError:
    error = ERRORS_BY_CODE.get(code, ForkyardError)(message)
    error.code = code
    return error


def validated(method: str, model: type[M], raw: Any) -> M:
    """`raw` params of `method` as `model`; InvalidRequest naming each bad field."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InvalidRequest(f"invalid params for {method}: params must be an object")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise InvalidRequest(describe_validation_error(method, exc)) from exc
