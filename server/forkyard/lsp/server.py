"""The language server object and how it runs: one supervisor task group for the whole
server lifetime, opened before the first message is read and cancelled at exit, so every
background task (agents, progress, flushers) has an owner."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
from lsprotocol import converters, types
from pygls.exceptions import FeatureRequestError, JsonRpcException, JsonRpcInvalidParams
from pygls.lsp.server import LanguageServer
from pygls.protocol import (
    JsonRPCNotification,
    JsonRPCRequestMessage,
    JsonRPCResponseMessage,
    LanguageServerProtocol,
    lsp_method,
)

import forkyard
from forkyard.errors import ForkyardError, InvalidRequest, validated
from forkyard.loop_watch import LoopWatch
from forkyard.lsp.wire import (
    ByteSource,
    ConnectionLost,
    FrameReader,
    MessageLoop,
    quote,
)
from forkyard.notices import (
    MAX_DETAIL_CHARS,
    cut,
)
from forkyard.settings import current_environ
from forkyard.supervisor import Supervisor, one_line, redact, secret_values
from forkyard_protocol import REQUESTS, WireModel

if TYPE_CHECKING:
    from forkyard.lsp.session import FrontSession

logger = logging.getLogger(__name__)

P = TypeVar("P", bound=WireModel)


def plain_params_converter() -> Any:
    """lsprotocol's converter, but custom methods' params stay plain dicts: pygls would
    turn them into namedtuples, which rename keys that are not identifiers."""
    converter = converters.get_converter()
    for message_type in (JsonRPCRequestMessage, JsonRPCResponseMessage, JsonRPCNotification):
        converter.register_structure_hook(message_type, lambda obj, cls: cls(**obj))
    return converter


class ServerNotReady(JsonRpcException):
    # pygls 2 reads the upper-case class attributes.
    CODE = -32002
    MESSAGE = "Forkyard is not initialized yet: send initialize first"


#: The answers that are the person's doing, not the server's (a bad field or unknown id,
#: a wrong state, a request before initialize): `errors.py`'s table.
USER_ERROR_CODES = frozenset({-32602, -32803, -32002})


def is_user_error(exc: BaseException | None) -> bool:
    if isinstance(exc, ForkyardError):
        return exc.code in USER_ERROR_CODES
    return isinstance(exc, JsonRpcException) and exc.code in USER_ERROR_CODES


class UserErrorLogFilter(logging.Filter):
    """pygls logs every failed request with its traceback (the editor's Output channel
    shows it): a user error (dispatching to a backend that is not installed, applying a
    running agent) is one line there; a real bug keeps its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not is_user_error(exc):
            return True
        code = getattr(exc, "code", "")
        record.msg = "answered a user error (%s): %s"
        text = redact(str(exc), secret_values(current_environ()))
        record.args = (code, one_line(text, MAX_ERROR_MESSAGE_CHARS))
        record.exc_info = None
        record.exc_text = None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


_USER_ERRORS = UserErrorLogFilter()
#: The pygls logger that reports failed requests (`pygls/protocol/json_rpc.py`).
PYGLS_RPC_LOGGER = "pygls.protocol.json_rpc"
logging.getLogger(PYGLS_RPC_LOGGER).addFilter(_USER_ERRORS)

#: Error answers carry at most this much text, and `data` only when it is small.
MAX_ERROR_MESSAGE_CHARS = 400
MAX_ERROR_DATA_CHARS = 4000


class EncodedResult:
    """A request's result already encoded as JSON (a file's code lenses, cached): sent as
    it is, without pygls unstructuring and encoding a thousand objects again."""

    __slots__ = ("json",)

    def __init__(self, json_text: str) -> None:
        self.json = json_text


class ForkyardProtocol(LanguageServerProtocol):
    """Adds `experimental.forkyard` to the initialize result (pygls has no hook for it),
    and stays quiet once the connection is gone (cleanup still reports agents)."""

    _server: ForkyardServer

    def _send_data(self, data: Any) -> None:
        if self._server.connection_closed:
            return
        super()._send_data(data)

    def _send_response(
        self, msg_id: Any, result: Any | None = None, error: types.ResponseError | None = None
    ) -> None:
        """Every error answer is short: an exception's text may quote the whole input."""
        if error is None and isinstance(result, EncodedResult):
            self._result_types.pop(msg_id, None)
            self._send_encoded(
                f'{{"id": {json.dumps(msg_id)}, "jsonrpc": "2.0", "result": {result.json}}}'
            )
            return
        if error is not None:
            message = error.message
            if len(message) > MAX_ERROR_MESSAGE_CHARS:
                message = message[: MAX_ERROR_MESSAGE_CHARS - 1] + "…"
            data = error.data
            if data is not None and len(repr(data)) > MAX_ERROR_DATA_CHARS:
                data = None
            error = types.ResponseError(code=error.code, message=message, data=data)
        super()._send_response(msg_id, result, error)

    def _send_encoded(self, body: str) -> None:
        """What pygls's `_send_data` writes, for a body that is JSON already."""
        if self._server.connection_closed or self.writer is None:
            return
        if self._include_headers:
            header = (
                f"Content-Length: {len(body.encode(self.CHARSET))}\r\n"
                f"Content-Type: {self.CONTENT_TYPE}; charset={self.CHARSET}\r\n\r\n"
            )
            body = header + body
        written = self.writer.write(body.encode(self.CHARSET))
        if inspect.isawaitable(written):
            asyncio.ensure_future(written)  # noqa: RUF006 (as pygls's _send_data does)

    def send_error(self, msg_id: int | str | None, code: int, message: str) -> None:
        """An error answer to a message pygls never saw (unreadable, refused)."""
        if len(message) > MAX_ERROR_MESSAGE_CHARS:
            message = message[: MAX_ERROR_MESSAGE_CHARS - 1] + "…"
        self._send_data(
            {"jsonrpc": "2.0", "id": msg_id, "error": {"code": code, "message": message}}
        )

    @lsp_method(types.INITIALIZE)
    def lsp_initialize(
        self, params: types.InitializeParams
    ) -> Generator[Any, Any, types.InitializeResult]:
        result: types.InitializeResult = yield from super().lsp_initialize(params)
        result.capabilities.experimental = self._server.experimental_capabilities
        return result


class ForkyardServer(LanguageServer):
    protocol: ForkyardProtocol

    def __init__(self) -> None:
        super().__init__(
            "forkyard",
            forkyard.__version__,
            protocol_cls=ForkyardProtocol,
            converter_factory=plain_params_converter,
            text_document_sync_kind=types.TextDocumentSyncKind.Incremental,
        )
        self.front: FrontSession | None = None
        self.task_group: Supervisor | None = None
        self.experimental_capabilities: dict[str, Any] = {}
        self.exit_code = 0
        self.connection_closed = False
        self.loop_watch = LoopWatch()

    def require_front(self) -> FrontSession:
        if self.front is None:
            raise ServerNotReady()
        return self.front

    def spawn(self, func: Callable[[], Coroutine[Any, Any, Any]], name: str) -> None:
        """Run a background task owned by the supervisor task group: its failure is
        logged and told to the user, never the end of the server."""
        if self.task_group is None:
            raise RuntimeError("the supervisor task group is not running")
        self.task_group.start_soon(func, name=name)

    def window_show_message(self, params: types.ShowMessageParams) -> None:
        """Every message the person sees is one line that fits (`notices.py`): a
        longer one raises a prompt in terminal editors. Whatever is cut is in the log."""
        line = cut(params.message, MAX_DETAIL_CHARS)
        if line != params.message:
            logger.info("message shown cut to one line: %s", params.message)
            params = types.ShowMessageParams(type=params.type, message=line)
        super().window_show_message(params)

    def tell_user(self, text: str) -> None:
        self.window_show_message(
            types.ShowMessageParams(type=types.MessageType.Error, message=text)
        )

    def report_server_error(self, error: Exception, source: Any) -> None:
        """pygls's out-of-band errors (a failed notification handler): one short line,
        never the input they may quote."""
        if source is FeatureRequestError and is_user_error(error):
            return  # answered, and logged in one line by UserErrorLogFilter
        secrets = secret_values(current_environ())
        logger.error("server error: %s", one_line(redact(str(error), secrets), 2000))
        if source is FeatureRequestError:
            return  # answered to the request already
        text = one_line(redact(f"{type(error).__name__}: {error}", secrets), 80)
        self.tell_user(f"Forkyard: {text} (see the log)")

    def notify(self, method: str, params: WireModel) -> None:
        self.protocol.notify(method, params.wire())

    def client_supports_progress(self) -> bool:
        window = self.client_capabilities.window
        return bool(window and window.work_done_progress)

    def request(
        self, method: str
    ) -> Callable[[Callable[[ForkyardServer, Any], Awaitable[WireModel]]], Any]:
        """Register a custom request handler that gets validated params (-32602 naming
        the bad field otherwise) and whose domain errors get their code from the one
        table (`forkyard/errors.py`)."""
        params_model, _ = REQUESTS[method]

        def decorator(func: Callable[[ForkyardServer, Any], Awaitable[WireModel]]) -> Any:
            @self.feature(method)
            async def handler(ls: ForkyardServer, raw: Any) -> Any:
                params = parse_params(method, params_model, raw)
                try:
                    result = await func(self, params)
                except ForkyardError as exc:
                    raise JsonRpcException(str(exc), exc.code) from exc
                return result.wire()

            return func

        return decorator

    def forkyard_command(self, name: str) -> Callable[[Callable[..., Awaitable[WireModel]]], Any]:
        """Register a `workspace/executeCommand` command; domain errors as for requests."""

        def decorator(func: Callable[..., Awaitable[WireModel]]) -> Any:
            @self.command(name)
            async def handler(ls: ForkyardServer, *args: Any) -> Any:
                try:
                    result = await func(self, *args)
                except ForkyardError as exc:
                    raise JsonRpcException(f"{name}: {exc}", exc.code) from exc
                return result.wire()

            return func

        return decorator


def parse_params(method: str, model: type[P], raw: Any) -> P:
    try:
        return validated(method, model, raw)
    except InvalidRequest as exc:
        raise JsonRpcInvalidParams(str(exc)) from exc


async def serve_connection(server: ForkyardServer, source: ByteSource) -> None:
    stop_event = threading.Event()
    server._stop_event = stop_event
    environ = current_environ()
    try:
        async with anyio.create_task_group() as task_group:
            supervisor = Supervisor(
                task_group, report=server.tell_user, secrets=lambda: secret_values(environ)
            )
            server.task_group = supervisor
            supervisor.start_soon(server.loop_watch.run, name="event loop watch")
            loop = MessageLoop(server.protocol, FrameReader(source), server.protocol.send_error)
            try:
                await loop.run()
            except SystemExit as exit_request:
                # pygls answers `exit` with sys.exit(); finish our cleanup first.
                server.exit_code = exit_request.code if isinstance(exit_request.code, int) else 0
            except ConnectionLost as lost:
                logger.error("closing the connection: %s", lost)  # noqa: TRY400
                server.exit_code = 1
            except Exception as exc:
                # The reading loop itself failed: close cleanly rather than hang.
                logger.exception("the message loop failed")
                server.exit_code = 1
                server.tell_user(f"Forkyard stopped reading messages: {quote(str(exc), 60)}")
            server.connection_closed = True
            task_group.cancel_scope.cancel()
    finally:
        server.task_group = None
        if server.front is not None:
            await server.front.close()
