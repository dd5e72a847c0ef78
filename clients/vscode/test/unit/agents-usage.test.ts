import { test } from "node:test";
import assert from "node:assert/strict";
import { agentDescription, agentTooltip, compactCount, usageText } from "../../src/agents/model";
import { agent } from "./fixtures";

const usage = { inputTokens: 1234, outputTokens: 56, cachedTokens: 100, costUsd: 0.0031 };

test("a model agent's description ends with its tokens and cost", () => {
  const done = agent({ state: "done", changes: { files: 2, additions: 10, deletions: 3 }, usage });
  assert.equal(agentDescription(done), "2 files +10 −3 · 1.3k tok · $0.003");
  const running = agent({ state: "running", progress: { message: "step 3" }, usage });
  assert.equal(agentDescription(running), "step 3 · 1.3k tok · $0.003");
});

test("an unknown price leaves the cost out of the description and says so in the tooltip", () => {
  const a = agent({ state: "done", usage: { ...usage, costUsd: null } });
  assert.equal(agentDescription(a), "no changes · 1.3k tok");
  assert.match(agentTooltip(a), /tokens: 1,234 in \(100 cached\) \/ 56 out; cost unknown/);
});

test("the tooltip gives exact counts and the cost", () => {
  assert.match(
    agentTooltip(agent({ state: "done", usage })),
    /tokens: 1,234 in \(100 cached\) \/ 56 out; cost \$0\.0031/,
  );
  assert.deepEqual(usageText({ inputTokens: 2_500_000, outputTokens: 40_000, cachedTokens: 0, costUsd: 7.5 }), {
    short: "2.5M tok · $7.50",
    long: "tokens: 2,500,000 in / 40,000 out; cost $7.50",
  });
  assert.equal(usageText({ inputTokens: 10, outputTokens: 5, cachedTokens: 0, costUsd: 0 })?.short, "15 tok · $0");
});

test("no usage, or only zeros, shows nothing of it", () => {
  for (const none of [null, undefined, { inputTokens: 0, outputTokens: 0, cachedTokens: 0, costUsd: null }]) {
    assert.equal(usageText(none), undefined);
    const a = agent({ state: "done", usage: none });
    assert.equal(agentDescription(a), "no changes");
    assert.doesNotMatch(agentTooltip(a), /tok|cost/);
  }
});

test("token counts are compacted to fit a line", () => {
  assert.deepEqual(
    [0, 999, 1000, 1234, 9949, 12_345, 999_499, 999_500, 1_234_567, 45_000_000].map(compactCount),
    ["0", "999", "1k", "1.2k", "9.9k", "12k", "999k", "1M", "1.2M", "45M"],
  );
});
