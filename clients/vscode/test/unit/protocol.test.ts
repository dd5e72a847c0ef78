// The agent-state sets of src/protocol.ts mean what the server's do: the extension and
// `forkyard_protocol.models` must not disagree about which agents hold a slot or are
// finished, so these are read from the Python source and compared.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { agentActions } from "../../src/agents/model";
import { ACTIVE_STATES, type AgentState, CANCELLABLE_STATES, FINAL_STATES } from "../../src/protocol";
import { agent } from "./fixtures";

// A Record keyed on every state: the type checker fails when a state is added or dropped.
const EVERY_STATE: Record<AgentState, true> = {
  queued: true,
  starting: true,
  running: true,
  done: true,
  applied: true,
  discarded: true,
  failed: true,
  cancelled: true,
  interrupted: true,
};

/** The members of `NAME: frozenset[str] = frozenset({...})` in the protocol's models.py
 * (the scripts run from clients/vscode). */
function pythonStates(name: string): string[] {
  const source = readFileSync(join("..", "..", "protocol", "forkyard_protocol", "models.py"), "utf8");
  const found = new RegExp(`^${name}\\b[^=]*=\\s*frozenset\\(\\s*\\{([^}]*)\\}`, "m").exec(source);
  assert.ok(found, `${name} not found in models.py`);
  return [...found[1].matchAll(/"([a-z]+)"/g)].map((m) => m[1]).sort();
}

test("ACTIVE_STATES and FINAL_STATES are the server's", () => {
  assert.deepEqual([...ACTIVE_STATES].sort(), pythonStates("ACTIVE_STATES"));
  assert.deepEqual([...FINAL_STATES].sort(), pythonStates("FINAL_STATES"));
});

test("every state is queued, active or final, and exactly one of them", () => {
  for (const state of Object.keys(EVERY_STATE) as AgentState[]) {
    const kinds = [state === "queued", ACTIVE_STATES.has(state), FINAL_STATES.has(state)];
    assert.equal(kinds.filter(Boolean).length, 1, state);
  }
});

test("cancel is offered exactly for the agents that are queued or active", () => {
  for (const state of Object.keys(EVERY_STATE) as AgentState[]) {
    const offered = agentActions(agent({ state })).includes("cancel");
    assert.equal(offered, CANCELLABLE_STATES.has(state), state);
  }
  assert.ok(CANCELLABLE_STATES.has("queued"), "a queued agent can be cancelled before it starts");
});
