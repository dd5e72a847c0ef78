// Per-hunk decisions, the chat's live agent lines and calm notices, as the person meets
// them: an undone hunk disappears from the agent's side and from a later apply, counts
// follow what is left; an agent's newest line in the thread says "interrupted" with Retry
// after a restart; several agents done together are one toast; settings named in a
// reply open them; commands keep their spaces.
import { test } from "node:test";
import assert from "node:assert/strict";
import { agent } from "./fixtures";
import { decide, hunksToApply, openHunks, remainingCounts, withoutUndone } from "../../src/review/decisions";
import { failedText, groupedDoneText } from "../../src/noticeText";
import { agentBrief, applyAgent, loadThread } from "../../src/chat/model";
import { renderMarkdown, renderMessage } from "../../src/webview/render";
import { agentActions, agentDescription } from "../../src/agents/model";
import type { FileChange, Message } from "../../src/protocol";

const BASE = "a\nb\nc\nd\ne\n";
const AGENT_TEXT = "a\nB\nc\nd\nE\nF\n";
const CHANGE: FileChange = {
  path: "x.txt",
  uri: "file:///r/x.txt",
  status: "modified",
  additions: 3,
  deletions: 2,
  hunks: [
    { id: "h1", oldStart: 2, oldLines: 1, newStart: 2, newLines: 1, header: "", text: "-b\n+B" },
    { id: "h2", oldStart: 5, oldLines: 1, newStart: 5, newLines: 2, header: "", text: "-e\n+E\n+F" },
  ],
};

test("an undone hunk is the base's lines again on the agent's side, the others stay", () => {
  assert.equal(withoutUndone(AGENT_TEXT, CHANGE, (id) => id === "h1"), "a\nb\nc\nd\nE\nF\n");
  assert.equal(withoutUndone(AGENT_TEXT, CHANGE, (id) => id === "h2"), "a\nB\nc\nd\ne\n");
  assert.equal(withoutUndone(AGENT_TEXT, CHANGE, () => true), BASE);
  assert.equal(withoutUndone(AGENT_TEXT, CHANGE, () => false), AGENT_TEXT);
});

test("decisions: open hunks, what is left to count, and what an apply sends", () => {
  const a = agent({ state: "done" });
  let table = decide({}, a, "h1", "kept");
  assert.deepEqual(openHunks(table, a, CHANGE).map((h) => h.id), ["h2"]);
  assert.deepEqual(remainingCounts(table, a, CHANGE), { additions: 2, deletions: 1 });
  assert.equal(hunksToApply(table, a, [CHANGE]), undefined, "nothing undone: apply everything");
  table = decide(table, a, "h2", "undone");
  assert.deepEqual(hunksToApply(table, a, [CHANGE]), ["h1"]);
  // A follow-up that changes a hunk gives it a new id: decided afresh. A new updatedAt
  // alone (overlaps, a partial apply) keeps the decisions.
  const again = { ...a, updatedAt: "2025-02-01T00:00:00Z" };
  assert.deepEqual(openHunks(table, again, CHANGE).map((h) => h.id), []);
  const followUp = { ...CHANGE, hunks: CHANGE.hunks?.map((h) => ({ ...h, id: `${h.id}-v2` })) };
  assert.deepEqual(openHunks(table, again, followUp).map((h) => h.id), ["h1-v2", "h2-v2"]);
  assert.equal(hunksToApply(table, again, [followUp]), undefined);
});

test("an agent's newest line in the thread is live: interrupted, with Retry", () => {
  const thread = { id: "t", title: "t", createdAt: "x", updatedAt: "x" };
  const line = (id: string, text: string): Message => ({
    id, threadId: "t", turnId: null, role: "event", text, agentId: "agent-4", createdAt: "x",
  });
  let state = loadThread(thread, [line("m1", "agent #4 is running"), line("m2", "agent #4: still going")]);
  state = applyAgent(state, agentBrief(agent({ id: "agent-4", number: 4, state: "interrupted" })));
  const newest = renderMessage(state.messages[1], state);
  assert.match(newest, /class="badge agent-state state-interrupted">interrupted</);
  assert.match(newest, /class="retry-agent" data-agent="agent-4"/);
  assert.doesNotMatch(renderMessage(state.messages[0], state), /agent-state/, "older lines stay as written");
  state = applyAgent(state, { id: "agent-4", number: 4, state: "running", progress: "step 2" });
  const running = renderMessage(state.messages[1], state);
  assert.match(running, /running · step 2/);
  assert.doesNotMatch(running, /retry-agent/);
});

test("settings named in a reply open them; inline code keeps its text", () => {
  const html = renderMarkdown("set `forkyard.models`, then run `sed 's/x/\\n    return/'`");
  assert.match(html, /class="setting-link" role="button" data-setting="forkyard.models"/);
  assert.ok(html.includes("<code>sed &#39;s/x/\\n    return/&#39;</code>"), html);
});

test("notices: one line for agents done together; a failed agent's error and last lines", () => {
  assert.equal(groupedDoneText([2, 3, 5]), "Forkyard agents #2, #3 and #5 are done: review them in the Agents view.");
  const failed = agent({ number: 7, state: "failed", error: "exit status 2" });
  const text = failedText(
    { kind: "agentFailed", level: "error", message: "Forkyard agent #7 failed", agentId: failed.id, agent: failed },
    ["$ make", "cc: error: foo.c: no such file", "exit status 2"],
  );
  assert.equal(text, "Forkyard agent #7 failed: exit status 2 — $ make — cc: error: foo.c: no such file");
});

test("failed, interrupted and cancelled agents offer Retry; an interrupted one says why", () => {
  for (const state of ["failed", "interrupted", "cancelled"] as const) {
    assert.ok(agentActions(agent({ state })).includes("retry"), state);
  }
  assert.ok(!agentActions(agent({ state: "done" })).includes("retry"));
  assert.equal(agentDescription(agent({ state: "interrupted" })), "interrupted: the server stopped while it ran");
  const overlapping = agent({ state: "done", overlaps: [{ agentId: "agent-9", paths: ["a.py"] }] });
  assert.match(agentDescription(overlapping, (id) => (id === "agent-9" ? 9 : undefined)), /overlaps #9$/);
});

test("inline code is escaped: a message cannot inject markup through it", () => {
  assert.ok(renderMarkdown("`<img src=x onerror=alert(1)>`").includes("<code>&lt;img src=x onerror=alert(1)&gt;</code>"));
});
