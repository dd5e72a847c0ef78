import { test } from "node:test";
import assert from "node:assert/strict";
import { CHAT_PLACED_KEY, placeChatOnce } from "../../src/chat/placement";

function memento() {
  const values = new Map<string, unknown>();
  return {
    values,
    get: <T>(key: string) => values.get(key) as T | undefined,
    update: async (key: string, value: unknown) => void values.set(key, value),
  };
}

test("the chat is moved to the secondary side bar once, then left where the person keeps it", async () => {
  const state = memento();
  const calls: unknown[][] = [];
  const execute = async (...args: unknown[]) => void calls.push(args);
  assert.equal(await placeChatOnce(state, execute), true);
  assert.deepEqual(calls, [
    ["vscode.moveViews", { viewIds: ["forkyard.chat"], destinationId: "workbench.panel.chat" }],
    ["workbench.action.closeAuxiliaryBar"],
  ]);
  assert.equal(state.values.get(CHAT_PLACED_KEY), true);
  assert.equal(await placeChatOnce(state, execute), false);
  assert.equal(calls.length, 2, "not moved again");
});

test("an editor without the command keeps the chat where it is, and is asked again next time", async () => {
  const state = memento();
  assert.equal(await placeChatOnce(state, async () => Promise.reject(new Error("no such command"))), false);
  assert.equal(state.values.get(CHAT_PLACED_KEY), undefined);
});
