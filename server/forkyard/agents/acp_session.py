"""One run of an ACP agent (`acp.AcpBackend`): its process, its connection through
the ACP SDK, its turns. Imported only when an ACP agent runs (the SDK takes a third of
a second to import), and then off the event loop.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

import anyio
import anyio.to_thread
from acp import PROTOCOL_VERSION, RequestError
from acp.client.connection import ClientSideConnection
from acp.schema import (
    AudioContentBlock,
    ClientCapabilities,
    EmbeddedResourceContentBlock,
    FileSystemCapabilities,
    ImageContentBlock,
    Implementation,
    InitializeResponse,
    ResourceContentBlock,
    TextContentBlock,
)

import forkyard
from forkyard.agents.acp_client import ForkyardAcpClient
from forkyard.agents.acp_terminals import Terminals
from forkyard.agents.acp_transport import PipeTransport
from forkyard.agents.base import AgentContext, RunOutcome
from forkyard.agents.external_output import Redactor
from forkyard.agents.external_runtime import AgentHome
from forkyard.tools.agent_tools import ToolBox
from forkyard.tools.interactive import Conversation, open_conversation

T = TypeVar("T")
PromptBlock = (
    TextContentBlock
    | ImageContentBlock
    | AudioContentBlock
    | ResourceContentBlock
    | EmbeddedResourceContentBlock
)
#: How long the agent may take to answer `initialize`, `session/new` or `session/load`.
SETUP_TIMEOUT_SECONDS = 120.0
#: After `session/cancel`, how long the agent may take to end its turn before its
#: process tree is ended.
CANCEL_GRACE_SECONDS = 5.0
#: Told to a new session that stands in for one the agent could not load.
LOST_SESSION_NOTE = (
    "(Forkyard: your previous session of this task could not be resumed, e.g. after a "
    "restart. The worktree holds the work done so far; check it and go on.)"
)


class AgentGone(Exception):
    """The agent's process ended while we waited on it."""


class Session:
    """One run of an ACP agent: its process, its connection, its turns."""

    def __init__(self, context: AgentContext, name: str, home: AgentHome, redact: Redactor) -> None:
        self.context = context
        self.name = name
        self.home = home
        self.redact = redact
        self.stderr: list[str] = []

    async def _stderr(self, line: str) -> None:
        line = self.redact(line)
        self.stderr = [*self.stderr[-19:], line]
        await self.context.log("stderr", line)

    async def _garbage(self, text: str) -> None:
        await self.context.log("error", f"not ACP on the agent's stdout: {self.redact(text)}")

    async def run(
        self,
        argv: list[str],
        env: dict[str, str],
        instruction: str,
        previous: str | None,
        refused: anyio.Event,
    ) -> RunOutcome:
        context = self.context
        async with (
            open_conversation(argv, cwd=context.cwd, env=env, on_stderr=self._stderr) as conv,
            anyio.create_task_group() as group,
        ):
            toolbox = ToolBox(
                root=context.cwd,
                repo_root=context.repo_root,
                writable=context.writable,
                role=context.role,
                settings=context.settings,
                environ=context.environ,
                approve=context.request_approval,
                ripgrep=None,  # only its files and permissions serve an ACP agent
            )
            client = ForkyardAcpClient(context, toolbox, Terminals(context, context.cwd, group))
            transport = PipeTransport(conv.stdin, conv.stdout, self._garbage)
            connection = ClientSideConnection(client, transport)
            try:
                outcome = await self._converse(
                    connection, conv, client, toolbox, instruction, previous, refused
                )
            finally:
                group.cancel_scope.cancel()
                with anyio.CancelScope(shield=True):
                    await connection.close()
        return outcome

    async def _converse(
        self,
        connection: ClientSideConnection,
        conv: Conversation,
        client: ForkyardAcpClient,
        toolbox: ToolBox,
        instruction: str,
        previous: str | None,
        refused: anyio.Event,
    ) -> RunOutcome:
        try:
            with anyio.fail_after(SETUP_TIMEOUT_SECONDS):
                init = await _watched(
                    conv,
                    connection.initialize(
                        protocol_version=PROTOCOL_VERSION,
                        client_capabilities=_capabilities(toolbox),
                        client_info=Implementation(name="forkyard", version=forkyard.__version__),
                    ),
                )
                if init.protocol_version != PROTOCOL_VERSION:
                    return self._failed(
                        f"{self.name} speaks ACP version {init.protocol_version}; Forkyard "
                        f"speaks version {PROTOCOL_VERSION}"
                    )
                session_id, resumed = await self._open_session(connection, conv, init, previous)
        except TimeoutError:
            return self._failed(f"{self.name} did not answer in {SETUP_TIMEOUT_SECONDS:g} s")
        except AgentGone:
            return self._failed(f"{self.name} exited")
        except RequestError as error:
            return self._failed(f"{self.name} refused to start a session: {error}")
        client.session_id = session_id
        await anyio.to_thread.run_sync(self.home.write_session, session_id)
        if resumed:
            text = instruction  # the session knows its role and task already
        else:
            lost = f"{LOST_SESSION_NOTE}\n\n" if previous is not None else ""
            text = f"{role_preamble(self.context)}\n\n{lost}{instruction}"
        prompts = [text]
        stop_reason = "end_turn"
        while prompts:
            prompt = prompts.pop(0)
            try:
                stop_reason = await self._turn(connection, conv, session_id, prompt, refused)
            except AgentGone:
                await client.flush()
                return self._failed(f"{self.name} exited in the middle of its turn")
            except RequestError as error:
                await client.flush()
                return self._failed(f"{self.name} failed: {error}")
            await client.flush()
            if refused.is_set() or stop_reason != "end_turn":
                break
            prompts += self.context.take_followups()
        if stop_reason == "end_turn":
            return RunOutcome(True, self.redact(client.last_message))
        if stop_reason == "cancelled" and refused.is_set():
            return RunOutcome(False, "", "")  # the runtime reports the budget
        return RunOutcome(
            False, self.redact(client.last_message), f"{self.name} stopped: {stop_reason}"
        )

    async def _open_session(
        self,
        connection: ClientSideConnection,
        conv: Conversation,
        init: InitializeResponse,
        previous: str | None,
    ) -> tuple[str, bool]:
        """The session to prompt, and whether it is the agent's previous one."""
        cwd = str(self.context.cwd)
        capabilities = init.agent_capabilities
        if previous and capabilities is not None and capabilities.load_session:
            try:
                await _watched(
                    conv, connection.load_session(cwd=cwd, session_id=previous, mcp_servers=[])
                )
            except RequestError as error:
                await self.context.log("system", f"could not load session {previous}: {error}")
            else:
                await self.context.log("system", f"resumed session {previous}")
                return previous, True
        created = await _watched(conv, connection.new_session(cwd=cwd, mcp_servers=[]))
        await self.context.log("system", f"{self.name} session {created.session_id}")
        return created.session_id, False

    async def _turn(
        self,
        connection: ClientSideConnection,
        conv: Conversation,
        session_id: str,
        text: str,
        refused: anyio.Event,
    ) -> str:
        """One prompt to its end. Cancelled (by the person, or by a budget) through
        `session/cancel`: the agent gets a grace to end its turn, then its process is
        ended with the run."""
        self.context.progress(f"{self.name} is working")
        prompt: list[PromptBlock] = [TextContentBlock(type="text", text=text)]
        ended = anyio.Event()
        answers: list[str] = []
        errors: list[Exception] = []
        # Shielded, so that a cancel leaves the turn to end by itself within the grace.
        turn_scope = anyio.CancelScope(shield=True)

        async def run_prompt() -> None:
            with turn_scope:
                try:
                    response = await _watched(
                        conv, connection.prompt(session_id=session_id, prompt=prompt)
                    )
                    answers.append(response.stop_reason)
                except Exception as error:
                    errors.append(error)
            ended.set()

        async def cancel_on_refusal() -> None:
            await refused.wait()
            await connection.cancel(session_id=session_id)

        async with anyio.create_task_group() as group:
            group.start_soon(run_prompt)
            group.start_soon(cancel_on_refusal)
            try:
                await ended.wait()
            except anyio.get_cancelled_exc_class():
                with anyio.CancelScope(shield=True), anyio.move_on_after(CANCEL_GRACE_SECONDS):
                    await connection.cancel(session_id=session_id)
                    await ended.wait()
                turn_scope.cancel()
                raise
            group.cancel_scope.cancel()
        if errors:
            raise errors[0]
        return answers[0] if answers else "cancelled"

    def _failed(self, error: str) -> RunOutcome:
        tail = "\n".join(self.stderr[-5:])
        return RunOutcome(False, "", error + (f"\nstderr:\n{tail}" if tail else ""))


def role_preamble(context: AgentContext) -> str:
    """What a new session is told of its role before its task: where it works, what it
    may do. The role is enforced whatever the agent makes of this."""
    description = f" ({context.role.description})" if context.role.description else ""
    head = (
        f"[Forkyard: you are agent #{context.agent_number}, in the role "
        f"'{context.role_name}'{description}. "
    )
    if context.writable:
        return head + (
            f"You work in {context.cwd}, your own git worktree of the user's repository; "
            "the user reviews your changes there as a diff and decides what to apply. "
            "Commands run sandboxed, without network.]"
        )
    return head + (
        f"You work in {context.cwd}, the user's own checkout, read-only: read and "
        "search, never change anything, and report what you find.]"
    )


def _capabilities(toolbox: ToolBox) -> ClientCapabilities:
    """What we serve, and only that: files (writing only for roles that write) and
    terminals (only for roles that may run commands)."""
    return ClientCapabilities(
        fs=FileSystemCapabilities(
            read_text_file=True, write_text_file="write_file" in toolbox.permitted
        ),
        terminal="run_command" in toolbox.permitted,
    )


async def _watched(conv: Conversation, request: Awaitable[T]) -> T:
    """`request`'s answer (or its error), or AgentGone as soon as the agent's process
    has exited or its connection closed (whichever the SDK or we notice first)."""
    answers: list[T] = []
    errors: list[Exception] = []
    async with anyio.create_task_group() as group:
        with anyio.CancelScope() as request_scope:

            async def watch() -> None:
                await conv.exited.wait()
                request_scope.cancel()

            group.start_soon(watch)
            try:
                answers.append(await request)
            except ConnectionError:
                pass  # its pipes closed: the agent is gone, as below
            except Exception as error:
                errors.append(error)
            finally:
                group.cancel_scope.cancel()
    if errors:
        raise errors[0]
    if answers:
        return answers[0]
    raise AgentGone
