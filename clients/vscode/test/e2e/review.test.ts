// Review you can see, a chat that tells the truth, and calm notices, in a real code-server:
// in the diff a hunk is kept and another undone from the per-hunk controls; in the file a
// code lens applies a hunk; the chat stays scrolled to the newest message; an agent whose
// daemon died shows as interrupted in the chat and in the tree, and Retry runs it again;
// five agents finishing together make one toast. Screenshots of each are kept.
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { after, before, test } from "node:test";
import { ARTIFACTS, answerInput, type Editor, eventually, killDaemon, openEditor, requirements, runCommand } from "./codeServer";

const APP = [
  "def greet():",
  '    return "hello world"',
  "",
  "",
  "def add(a, b):",
  "    return a + b",
  "",
  "",
  "def sub(a, b):",
  "    return a - b",
  "",
].join("\n");
const TWO_HUNKS = "sed -i 's/hello world/hello forkyard/; s/a - b/b - a/' app.py";

let editor: Editor;
const missing = requirements();
const skip = missing.length > 0 ? `missing: ${missing.join("; ")}` : false;

before(async () => {
  if (missing.length > 0) {
    if (process.env.FORKYARD_E2E_REQUIRED) throw new Error(`cannot run: ${missing.join("; ")}`);
    return;
  }
  editor = await openEditor({ "app.py": APP, "README.md": "# sample\n" });
});

after(async () => {
  await editor?.close();
});

function step(name: string, run: () => Promise<void>): () => Promise<void> {
  return async () => {
    try {
      await run();
    } catch (error) {
      await editor.screenshot(`failed-${name}`).catch(() => undefined);
      throw error;
    }
  };
}

const agentRow = (n: number, state?: string) =>
  editor.page.locator(`.monaco-list-row[aria-label^="agent ${n},"]${state ? `[aria-label$=", ${state}"]` : ""}`);

async function runInWorktree(command: string): Promise<void> {
  await runCommand(editor.page, "Forkyard: Run command in background worktree…");
  await answerInput(editor.page, command);
}

test("in the diff, one hunk is kept and another undone from the per-hunk controls", { skip, timeout: 120_000 }, step("keep-undo", async () => {
  const { page, repo } = editor;
  await page.locator('.statusbar a.statusbar-item-label[aria-label^="Forkyard: 0 running"]').waitFor({ timeout: 60_000 });
  await runInWorktree(TWO_HUNKS);
  await agentRow(1, "done").waitFor({ timeout: 60_000 });
  // The Agents view's badge counts it (1 agent(s) to review).
  await page.locator('.activitybar [aria-label*="to review"]').first().waitFor({ state: "attached", timeout: 20_000 });
  const file = page.locator('.monaco-list-row[aria-label="app.py: modified, +2 −2"]');
  await file.click();
  const diff = page.locator(".monaco-diff-editor");
  const modified = diff.locator(".editor.modified");
  await modified.locator(".view-lines", { hasText: "b - a" }).waitFor({ timeout: 20_000 });
  // Keep and Undo over each hunk, on the agent's side.
  const keep = modified.locator(".codelens-decoration a", { hasText: "Keep" });
  await keep.first().waitFor({ timeout: 20_000 });
  assert.equal(await keep.count(), 2);
  await editor.screenshot("diff-hunk-controls");
  await keep.first().click();
  await diff.locator(".editor.original .view-lines", { hasText: "hello forkyard" }).waitFor({ timeout: 20_000 });
  await eventually(() => fs.readFileSync(path.join(repo, "app.py"), "utf8").includes("hello forkyard"), "kept hunk saved");
  // The kept hunk's controls go; the other hunk's stay.
  await keep.nth(1).waitFor({ state: "detached", timeout: 20_000 });
  const undo = modified.locator(".codelens-decoration a", { hasText: "Undo" });
  await undo.click();
  // The undone hunk is the base's text again on the agent's side: no difference left.
  await modified.locator(".view-lines", { hasText: "a - b" }).waitFor({ timeout: 20_000 });
  await modified.locator(".codelens-decoration a", { hasText: "Keep" }).waitFor({ state: "detached", timeout: 20_000 });
  assert.equal(fs.readFileSync(path.join(repo, "app.py"), "utf8"), APP.replace("hello world", "hello forkyard"));
  // The tree counts what is left: nothing of app.py; so the agent has left "To review"
  // for "Reviewed" (it is still done: Apply and Discard stay on its menu).
  await page.locator('.monaco-list-row[aria-label="app.py: modified, +0 −0"]').waitFor({ timeout: 20_000 });
  const group = (label: string) => page.locator(".monaco-list-row", { has: page.locator(".label-name", { hasText: new RegExp(`^${label}$`) }) });
  await group("Reviewed").waitFor({ timeout: 20_000 });
  await group("To review").waitFor({ state: "detached", timeout: 20_000 });
  // Nor does the view's badge count it.
  await page.locator('.activitybar [aria-label*="to review"]').waitFor({ state: "detached", timeout: 20_000 });
  await editor.screenshot("diff-after-keep-undo");
  await page.keyboard.press("Control+W");
}));

test("in the file, a code lens applies a hunk", { skip, timeout: 120_000 }, step("lens", async () => {
  const { page } = editor;
  await runInWorktree("sed -i 's/a + b/b + a/' app.py");
  await agentRow(2, "done").waitFor({ timeout: 60_000 });
  await page.keyboard.press("Control+P");
  await answerInput(page, "app.py");
  const code = page.locator('.monaco-editor[data-uri$="/app.py"]').first();
  await code.locator(".view-lines").waitFor({ timeout: 20_000 });
  const lens = code.locator(".codelens-decoration a", { hasText: "Apply hunk from agent #2" });
  await lens.waitFor({ timeout: 30_000 });
  // The hunk's lines are marked so they can be seen (Information, not a "…" hint).
  await code.locator(".squiggly-info").first().waitFor({ timeout: 20_000 });
  await editor.screenshot("file-code-lens");
  // Its Show diff opens VS Code's diff of the agent, not a patch file.
  await code.locator(".codelens-decoration a", { hasText: "Show diff" }).click();
  await page.locator(".tab", { hasText: "app.py ↔ agent #2" }).waitFor({ timeout: 20_000 });
  await page.keyboard.press("Control+W");
  await page.locator(".tab.active", { hasText: "app.py" }).waitFor();
  await lens.click();
  await code.locator(".view-line", { hasText: "return b + a" }).waitFor({ timeout: 20_000 });
  await lens.waitFor({ state: "detached", timeout: 20_000 });
  await page.keyboard.press("Control+S");
  await page.keyboard.press("Control+W");
}));

test("the chat stays scrolled to the newest message when sending after scrolling up", { skip, timeout: 90_000 }, step("scroll", async () => {
  const { page } = editor;
  await runCommand(page, "Forkyard: New chat");
  const chat = editor.chat();
  const input = chat.locator("#input");
  await input.waitFor({ timeout: 20_000 });
  for (let i = 0; i < 4; i++) {
    await input.fill("/help");
    await input.press("Enter");
    await chat.locator(".message-assistant").nth(i).waitFor({ timeout: 20_000 });
  }
  const messages = chat.locator("#messages");
  await messages.evaluate((el) => {
    el.scrollTop = 0;
  });
  await input.fill("/agents");
  await input.press("Enter");
  const reply = chat.locator(".message-assistant", { hasText: "#2" }).last();
  await reply.waitFor({ timeout: 20_000 });
  // Scrolled in the frame after the reply renders: asked until it holds.
  const deadline = Date.now() + 10_000;
  let gap = Number.POSITIVE_INFINITY;
  while (gap >= 40 && Date.now() < deadline) {
    gap = await messages.evaluate((el) => el.scrollHeight - el.scrollTop - el.clientHeight);
  }
  assert.ok(gap < 40, `scrolled to the newest message (${gap}px from the bottom)`);
  await editor.screenshot("chat");
}));

test("an agent whose daemon died is interrupted in the chat and the tree, and Retry runs it again", { skip, timeout: 120_000 }, step("interrupted", async () => {
  const { page, home } = editor;
  const chat = editor.chat();
  const input = chat.locator("#input");
  await input.fill("/run echo started; sleep 120");
  await input.press("Enter");
  await agentRow(3, "running").waitFor({ timeout: 30_000 });
  const line = chat.locator(".message-event.live", { hasText: "#3" });
  await line.locator(".agent-state", { hasText: "running" }).waitFor({ timeout: 20_000 });
  killDaemon(path.join(home, "state"));
  // The front starts a new daemon, which finds #3 was running: interrupted.
  await agentRow(3, "interrupted").waitFor({ timeout: 60_000 });
  await line.locator(".agent-state", { hasText: "interrupted" }).waitFor({ timeout: 30_000 });
  await editor.screenshot("chat-interrupted");
  await line.locator(".retry-agent").click();
  await agentRow(4, "running").waitFor({ timeout: 30_000 });
  await editor.screenshot("agents-retried");
  const row = agentRow(4);
  await row.hover();
  await row.locator('.action-label[aria-label="Cancel"]').click();
  await agentRow(4, "cancelled").waitFor({ timeout: 30_000 });
  // A cancel is what the person did: no toast for it.
  assert.equal(await page.locator(".notification-toast", { hasText: "cancelled" }).count(), 0);
}));

test("five agents finishing together make one toast", { skip, timeout: 120_000 }, step("burst", async () => {
  const { page } = editor;
  await runCommand(page, "Notifications: Clear All Notifications");
  const chat = editor.chat();
  const input = chat.locator("#input");
  // One chat message cannot start five agents; five quick /run messages can.
  for (let i = 0; i < 5; i++) {
    await input.fill(`/run sleep 3; echo ${i} > burst-${i}.txt`);
    await input.press("Enter");
  }
  for (let n = 5; n <= 9; n++) await agentRow(n, "done").waitFor({ timeout: 60_000 });
  const grouped = page.locator(".notification-toast", { hasText: /Forkyard agents (#\d+, )+.*are done/ });
  await grouped.first().waitFor({ timeout: 20_000 });
  await editor.screenshot("notifications");
  await runCommand(page, "Notifications: Show Notifications");
  const items = page.locator(".notifications-center .notification-list-item");
  await items.first().waitFor({ timeout: 10_000 });
  const count = await items.count();
  fs.appendFileSync(path.join(ARTIFACTS, "timings.txt"), `notifications for a burst of 5 agents: ${count}\n`);
  console.log(`notifications for a burst of 5 agents: ${count}`);
  assert.ok(count <= 2, `at most two toasts for five agents (got ${count})`);
}));

test("without a model, Dispatch agent… says llm is not available and why, before any typing", { skip, timeout: 60_000 }, step("no-model", async () => {
  const { page } = editor;
  await runCommand(page, "Notifications: Clear All Notifications");
  await runCommand(page, "Forkyard: Dispatch agent…");
  await page.locator(".quick-input-title", { hasText: "Backend" }).waitFor({ timeout: 20_000 });
  const llm = page.locator(".quick-input-list .monaco-list-row", { hasText: "llm" });
  await llm.filter({ hasText: "not available" }).waitFor({ timeout: 10_000 });
  await answerInput(page, "llm");
  const warning = page.locator(".notification-toast", { hasText: "llm is not available" });
  await warning.waitFor({ timeout: 10_000 });
  await editor.screenshot("notification-no-model");
  await warning.getByRole("button", { name: "Set up a model" }).click();
  await page.locator(".settings-editor .setting-item-contents", { hasText: "Models" }).first().waitFor({ timeout: 20_000 });
  await page.keyboard.press("Control+W");
}));
