import { test } from "node:test";
import assert from "node:assert/strict";
import {
  agentActions,
  agentContextValue,
  agentDescription,
  agentTooltip,
  overlapNotes,
  nothingLeft,
  placementText,
  agentIcon,
  doneNotice,
  fileContextValue,
  fileRow,
  groupAgents,
  statusBarText,
} from "../../src/agents/model";
import type { FileChange } from "../../src/protocol";
import { agent } from "./fixtures";

test("agents are grouped by state, the groups in a fixed order, newest agent first", () => {
  const agents = [
    agent({ number: 1, state: "done", changes: { files: 1, additions: 2, deletions: 1 } }),
    agent({ number: 2, state: "running" }),
    agent({ number: 3, state: "queued" }),
    agent({ number: 4, state: "done" }),
    agent({ number: 5, state: "failed", error: "exit status 2" }),
    agent({ number: 6, state: "applied" }),
    agent({ number: 7, state: "starting" }),
  ];
  const groups = groupAgents(agents);
  assert.deepEqual(
    groups.map((g) => [g.spec.label, g.agents.map((a) => a.number)]),
    [
      ["Running", [7, 2]],
      ["Queued", [3]],
      ["To review", [4, 1]],
      ["Failed or interrupted", [5]],
      ["Finished", [6]],
    ],
  );
});

test("empty groups are not shown", () => {
  assert.deepEqual(
    groupAgents([agent({ state: "cancelled" })]).map((g) => g.spec.id),
    ["finished"],
  );
  assert.deepEqual(groupAgents([]), []);
});

test("the description is the progress while running, the diff's size when done", () => {
  assert.equal(
    agentDescription(agent({ state: "running", progress: { message: "running tests", percentage: 40 } })),
    "40% running tests",
  );
  assert.equal(agentDescription(agent({ state: "running", progress: { message: "step 3" } })), "step 3");
  assert.equal(agentDescription(agent({ state: "running" })), "running");
  assert.equal(
    agentDescription(agent({ state: "done", changes: { files: 2, additions: 10, deletions: 3 } })),
    "2 files +10 −3",
  );
  assert.equal(agentDescription(agent({ state: "done" })), "no changes");
  assert.equal(agentDescription(agent({ state: "failed", error: "boom\ntraceback" })), "failed: boom");
});

test("icons are codicons that say the state, spinning while it works", () => {
  assert.equal(agentIcon(agent({ state: "running" })).id, "sync~spin");
  assert.equal(agentIcon(agent({ state: "failed" })).id, "error");
  assert.equal(agentIcon(agent({ state: "done" })).id, "git-pull-request");
});

test("apply is offered only for an agent with changes, cancel only while it works", () => {
  const changed = { files: 1, additions: 1, deletions: 0 };
  assert.ok(agentActions(agent({ state: "done", changes: changed })).includes("apply"));
  assert.ok(!agentActions(agent({ state: "done" })).includes("apply"));
  assert.ok(agentActions(agent({ state: "running" })).includes("cancel"));
  assert.ok(!agentActions(agent({ state: "done", changes: changed })).includes("cancel"));
  assert.deepEqual(agentActions(agent({ state: "discarded" })), ["log"]);
  const value = agentContextValue(agent({ state: "done", changes: changed }));
  assert.match(value, /\bapply\b/);
  assert.match(value, /\bstate-done\b/);
  assert.equal(fileContextValue(agent({ state: "done", changes: changed })), "agentFile apply");
  assert.equal(fileContextValue(agent({ state: "applied", changes: changed })), "agentFile");
});

test("a changed file shows its name, folder and +/- counts", () => {
  const row = fileRow({
    path: "src/pkg/app.py",
    uri: "file:///repo/src/pkg/app.py",
    status: "modified",
    additions: 3,
    deletions: 1,
  });
  assert.deepEqual(row, {
    label: "app.py",
    description: "src/pkg · +3 −1",
    tooltip: "src/pkg/app.py: modified, +3 −1",
  });
  assert.equal(
    fileRow({ path: "NEW.md", uri: "file:///repo/NEW.md", status: "added", additions: 2 }).description,
    "+2 −0 added",
  );
});

test("the status bar counts running, queued and to-review agents", () => {
  const status = statusBarText([
    agent({ state: "running" }),
    agent({ state: "starting" }),
    agent({ state: "queued" }),
    agent({ state: "done" }),
    agent({ state: "applied" }),
  ]);
  assert.equal(status.text, "$(sync~spin) 2 $(clock) 1 $(git-pull-request) 1");
  assert.match(status.tooltip, /2 running, 1 queued, 1 to review/);
  assert.equal(statusBarText([]).text, "$(rocket) 0 $(git-pull-request) 0");
});

test("a done notice is known by its kind and agent id, whatever its text; other notices have no buttons", () => {
  const done = {
    level: "info",
    message: "Le travail #12 est fini", // any wording: never parsed
    kind: "agentDone",
    agentId: "agent-12",
    agent: agent({ number: 12, state: "done" }),
    actions: ["Show diff", "Apply", "Discard"],
  } as const;
  assert.deepEqual(doneNotice({ ...done, actions: [...done.actions] }), {
    agentId: "agent-12",
    actions: ["Show diff", "Apply", "Discard"],
  });
  // An action a newer server may add is not offered; a done notice without an agent id is
  // shown as a plain message.
  const newer = { ...done, actions: ["Apply", "Rebase"] } as unknown as Parameters<typeof doneNotice>[0];
  assert.deepEqual(doneNotice(newer)?.actions, ["Apply"]);
  assert.equal(doneNotice({ ...done, actions: [...done.actions], agentId: null }), undefined);
  const failed = {
    level: "error",
    message: "Forkyard agent #12 (fix it) is done: no, failed",
    kind: "agentFailed",
    agentId: "agent-12",
    actions: [],
  } as const;
  assert.equal(doneNotice({ ...failed, actions: [] }), undefined, "the text saying 'done' does not matter");
});

test("a cluster agent says where it runs, in its description and tooltip; a local one says nothing", () => {
  const onNode = agent({ state: "running", progress: { message: "step 3" }, placement: { kind: "cluster", node: "gpu-2" } });
  assert.equal(agentDescription(onNode), "step 3 · on gpu-2");
  assert.match(agentTooltip(onNode), /Runs on gpu-2/);
  assert.equal(placementText(agent({ state: "queued", placement: { kind: "cluster", node: null } })), "on the cluster");
  const local = agent({ state: "running", placement: { kind: "local", node: null } });
  assert.equal(agentDescription(local), "running");
  assert.doesNotMatch(agentTooltip(local), /Runs on/);
});

test("a done agent with every hunk kept or undone leaves To review for Reviewed", () => {
  const a = agent({ number: 1, state: "done" });
  const b = agent({ id: "b", number: 2, state: "done" });
  const groups = groupAgents([a, b], (x) => x.id === a.id);
  assert.deepEqual(
    groups.map((g) => [g.spec.id, g.agents.map((x) => x.number)]),
    [
      ["review", [2]],
      ["reviewed", [1]],
    ],
  );
  const change: FileChange = { path: "a.py", uri: "file:///r/a.py", status: "modified", additions: 2, deletions: 2, hunks: [] };
  assert.equal(nothingLeft([change], () => ({ additions: 0, deletions: 0 })), true);
  assert.equal(nothingLeft([change], () => ({ additions: 1, deletions: 0 })), false);
  assert.equal(nothingLeft([], () => ({ additions: 0, deletions: 0 })), false, "an explorer's summary is its review");
});

test("a done agent's overlaps are rows of their own, and its hover names agents by number", () => {
  const a = agent({ number: 1, state: "done", overlaps: [{ agentId: "agent-b", paths: ["src/app.py"] }] });
  const numbers = (id: string) => (id === "agent-b" ? 2 : undefined);
  assert.deepEqual(overlapNotes(a, numbers), ["overlaps #2 (src/app.py)"]);
  assert.match(agentTooltip(a, numbers), /Overlaps #2 in src\/app\.py/);
  assert.doesNotMatch(agentTooltip(a, numbers), /agent-b/);
  assert.deepEqual(overlapNotes({ ...a, state: "running" }, numbers), [], "only done agents overlap");
});
