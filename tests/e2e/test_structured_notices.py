"""`forkyard/notice` end to end: a client that opts into structured notices learns that an
agent is done (or failed, or was cancelled) from a kind and an agent id, and is not also
told with a message meant for people; a client that does not is told as before, with one
plain `window/showMessage`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lsprotocol import types

from forkyard.client import ForkyardClient, default_capabilities
from tests.e2e.conftest import StartServer

pytestmark = pytest.mark.timeout(90)

SED = "sed -i 's/a + b/b + a/' src/app.py"


def structured_capabilities(*, notice_actions: bool = False) -> types.ClientCapabilities:
    """A client with `window.showMessage` that opts into `forkyard/notice` (and, if asked,
    into action notices too, which the structured ones win over)."""
    capabilities = default_capabilities()
    assert capabilities.window is not None
    capabilities.window.show_message = types.ShowMessageRequestClientCapabilities()
    forkyard: dict[str, Any] = {"structuredNotices": True}
    if notice_actions:
        forkyard["noticeActions"] = True
    capabilities.experimental = {"forkyard": forkyard}
    return capabilities


class Told:
    """What the person would be told: `forkyard/notice`s, messages and message requests,
    recorded as they arrive (and waking `wait_until`)."""

    def __init__(self, client: ForkyardClient) -> None:
        self.client = client
        self.asked: list[types.ShowMessageRequestParams] = []

        @client.lsp.feature(types.WINDOW_SHOW_MESSAGE_REQUEST)
        def ask(params: types.ShowMessageRequestParams) -> None:
            self.asked.append(params)
            client.poke()

    @property
    def notices(self) -> list[dict[str, Any]]:
        """`forkyard/notice`s, as ForkyardClient records them."""
        return [
            params for method, params in self.client.notifications if method == "forkyard/notice"
        ]

    def messages(self) -> list[str]:
        shown = self.client.lsp.messages  # type: ignore[attr-defined]
        return [m.message for m in shown]

    async def notice_of(self, agent_id: str) -> dict[str, Any]:
        found: dict[str, Any] = await self.client.wait_until(
            lambda: next((n for n in self.notices if n.get("agentId") == agent_id), None)
        )
        return found

    async def settle(self) -> None:
        """A round trip: whatever the server sent before answering has arrived."""
        await self.client.request("forkyard/agent/list", {})


async def test_a_structured_client_gets_forkyard_notice_instead_of_the_message_and_question(
    start_server: StartServer, repo: Path
) -> None:
    client = await start_server(repo, capabilities=structured_capabilities(notice_actions=True))
    told = Told(client)
    agent = await client.dispatch(SED, backend="command", title="swap")
    notice = await told.notice_of(agent["id"])
    assert notice["kind"] == "agentDone"
    assert notice["level"] == "info"
    assert notice["actions"] == ["Show diff", "Apply", "Discard"]
    assert notice["agent"]["id"] == agent["id"] and notice["agent"]["state"] == "done"
    assert notice["message"] == "Forkyard agent #1 (swap) done: 1 file(s) changed, +1 -1"
    # Its review is published (diagnostics on the hunk) before any question would be asked.
    uri = (repo / "src/app.py").as_uri()
    await client.wait_until(lambda: client.lsp.diagnostics.get(uri))  # type: ignore[attr-defined]
    await told.settle()
    assert not [m for m in told.messages() if "done" in m], "no window/showMessage as well"
    assert told.asked == [], "no window/showMessageRequest for the done agent"


async def test_failed_and_cancelled_agents_have_their_kinds_and_no_actions(
    start_server: StartServer, repo: Path
) -> None:
    client = await start_server(repo, capabilities=structured_capabilities())
    told = Told(client)
    failing = await client.dispatch("echo broken >&2; exit 3", backend="command", title="fails")
    failed = await told.notice_of(failing["id"])
    assert (failed["kind"], failed["level"], failed["actions"]) == ("agentFailed", "error", [])
    assert failed["message"].startswith("Forkyard agent #1 (fails) failed")

    slow = await client.dispatch("echo started; sleep 314159", backend="command", title="slow")
    await client.wait_until(
        lambda: (client.agents[slow["id"]].get("progress") or {}).get("message") == "started"
    )
    await client.request("forkyard/agent/cancel", {"agentId": slow["id"]})
    cancelled = await told.notice_of(slow["id"])
    assert (cancelled["kind"], cancelled["level"]) == ("agentCancelled", "warning")
    assert cancelled["actions"] == [] and cancelled["agent"]["state"] == "cancelled"
    await told.settle()
    assert not [m for m in told.messages() if "agent #" in m], told.messages()


async def test_a_client_without_the_capability_gets_the_plain_message_and_no_notice(
    start_server: StartServer, repo: Path
) -> None:
    capabilities = default_capabilities()
    assert capabilities.window is not None
    capabilities.window.show_message = types.ShowMessageRequestClientCapabilities()
    client = await start_server(repo, capabilities=capabilities)
    told = Told(client)
    agent = await client.dispatch(SED, backend="command", title="swap")
    await client.wait_for_agent(agent["id"], {"done"})
    [done] = await client.wait_until(lambda: [m for m in told.messages() if "done" in m])
    assert done == "Forkyard agent #1 (swap) done: 1 file(s) changed, +1 -1"
    await told.settle()
    assert told.notices == [], "no forkyard/notice for a client that did not ask"
    assert told.asked == []
