import { test } from "node:test";
import assert from "node:assert/strict";
import {
  applyDelta,
  applyEvent,
  applyMessage,
  applyTurn,
  isBusy,
  loadThread,
  type ChatState,
} from "../../src/chat/model";
import { acceptCompletion, completeSlash } from "../../src/chat/slash";
import { renderMarkdown, renderMessage, renderMessages } from "../../src/webview/render";
import type { Message } from "../../src/protocol";

const thread = { id: "t1", title: "hello", createdAt: "x", updatedAt: "x" };

function message(fields: Partial<Message> & Pick<Message, "id" | "role" | "text">): Message {
  return { threadId: "t1", createdAt: "2025-01-01T00:00:00Z", ...fields };
}

test("a reply streams in from deltas, then the complete message replaces it", () => {
  let state: ChatState = loadThread(thread, [message({ id: "u1", role: "user", text: "hi", turnId: "turn1" })]);
  state = applyTurn(state, { threadId: "t1", turnId: "turn1", state: "running" });
  state = applyDelta(state, { threadId: "t1", turnId: "turn1", messageId: "a1", delta: "Hel" });
  state = applyDelta(state, { threadId: "t1", turnId: "turn1", messageId: "a1", delta: "lo" });
  assert.equal(state.messages[1].text, "Hello");
  assert.equal(state.messages[1].streaming, true);
  assert.ok(isBusy(state));
  state = applyMessage(state, message({ id: "a1", role: "assistant", text: "Hello!", turnId: "turn1" }));
  state = applyDelta(state, { threadId: "t1", turnId: "turn1", messageId: "a1", delta: "late" });
  state = applyTurn(state, { threadId: "t1", turnId: "turn1", state: "completed" });
  assert.deepEqual(
    state.messages.map((m) => [m.id, m.text, Boolean(m.streaming)]),
    [
      ["u1", "hi", false],
      ["a1", "Hello!", false],
    ],
  );
  assert.ok(!isBusy(state));
});

test("notifications of another thread do not touch this one; a repeated message is not doubled", () => {
  let state = loadThread(thread, []);
  state = applyEvent(state, { kind: "message", message: message({ id: "x", role: "user", text: "a", threadId: "t2" }) });
  state = applyEvent(state, { kind: "delta", delta: { threadId: "t2", turnId: "q", messageId: "y", delta: "b" } });
  assert.equal(state.messages.length, 0);
  state = applyMessage(state, message({ id: "e1", role: "event", text: "agent #1 is done" }));
  state = applyMessage(state, message({ id: "e1", role: "event", text: "agent #1 is done" }));
  assert.equal(state.messages.length, 1);
});

test("an interrupted turn stops showing its reply as streaming, and a message sent meanwhile shows queued", () => {
  let state = loadThread(thread, [
    message({ id: "u1", role: "user", text: "one", turnId: "turn1" }),
    message({ id: "u2", role: "user", text: "two", turnId: "turn2" }),
  ]);
  state = applyTurn(state, { threadId: "t1", turnId: "turn1", state: "running" });
  state = applyTurn(state, { threadId: "t1", turnId: "turn2", state: "queued" });
  state = applyDelta(state, { threadId: "t1", turnId: "turn1", messageId: "a1", delta: "par" });
  const html = renderMessages(state);
  assert.match(html, /data-id="u2"[^]*?<span class="badge">queued<\/span>/);
  assert.doesNotMatch(renderMessage(state.messages[0], state), /queued/);
  state = applyTurn(state, { threadId: "t1", turnId: "turn1", state: "interrupted" });
  assert.equal(state.messages[2].streaming, false);
  assert.match(renderMessage(state.messages[2], state), /interrupted/);
});

test("markdown is rendered, code highlighted, raw HTML escaped, only http links kept", () => {
  const html = renderMarkdown(
    "**bold** <script>alert(1)</script>\n\n```python\ndef f():\n    return 1\n```\n\n" +
      "[site](https://example.com) [bad](javascript:alert(1)) ![img](https://example.com/x.png)",
  );
  assert.match(html, /<strong>bold<\/strong>/);
  assert.match(html, /&lt;script&gt;alert\(1\)&lt;\/script&gt;/);
  assert.doesNotMatch(html, /<script>/);
  assert.match(html, /<span class="hljs-keyword">def<\/span>/);
  assert.match(html, /data-href="https:\/\/example.com"/);
  assert.doesNotMatch(html, /javascript:/);
  assert.doesNotMatch(html, /<img/);
});

test("agent references become links that open the agent, but not inside code", () => {
  const html = renderMarkdown("- #1 **sed** `done` (worker)\n\nSee agent #12, not `#3`.");
  assert.match(html, /data-agent="1"/);
  assert.match(html, /data-agent="12"/);
  assert.doesNotMatch(html, /data-agent="3"/);
});

test("an agent event shows inline with a link to its agent", () => {
  const state = loadThread(thread, [message({ id: "e", role: "event", text: "Agent #2 is done", agentId: "ag2" })]);
  const html = renderMessage(state.messages[0], state);
  assert.match(html, /class="message message-event"/);
  assert.match(html, /data-agent="ag2"/);
});

test("slash commands complete from a slash and a prefix", () => {
  assert.deepEqual(
    completeSlash("/d").map((c) => c.name),
    ["dispatch", "diff", "discard"],
  );
  assert.equal(completeSlash("/").length, 9);
  assert.deepEqual(completeSlash("/agents now"), []);
  assert.deepEqual(completeSlash("hello"), []);
  assert.equal(acceptCompletion(completeSlash("/ru")[0]), "/run ");
  assert.equal(acceptCompletion(completeSlash("/ag")[0]), "/agents");
});
