// The extension in a real VS Code (code-server 4.100.3 in chromium), as a user drives it:
// dispatch a command agent from the palette, watch it in the Agents view, open its diff,
// apply it from the tree and find the change on disk; apply one hunk with the server's
// quick fix in the diff; /run and /agents in the chat; a streamed reply, a queued message
// and Stop against a scripted model; an attached selection; the thread after a reload;
// agent progress with Cancel; Dispatch agent…; a setting changed in the Settings editor.
// The tests run in order on one editor: each starts where the one before left it.
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { after, before, test } from "node:test";
import {
  answerInput,
  type Editor,
  eventually,
  openEditor,
  requirements,
  runCommand,
} from "./codeServer";
import { type FakeModel, startFakeModel } from "./fakeModel";

const APP = 'def greet():\n    return "hello world"\n\n\ndef add(a, b):\n    return a + b\n';
const TASK = "sed -i 's/hello world/hello forkyard/' app.py";

let editor: Editor;
let model: FakeModel;
const missing = requirements();

before(async () => {
  if (missing.length > 0) {
    // scripts/e2e.sh installs everything: there a missing piece is a failure, not a skip.
    if (process.env.FORKYARD_E2E_REQUIRED) throw new Error(`cannot run: ${missing.join("; ")}`);
    return;
  }
  model = await startFakeModel();
  // The model comes from VS Code's settings: it reaches the server as initializationOptions.
  editor = await openEditor(
    { "app.py": APP, "README.md": "# sample\n" },
    {
      "forkyard.models": { default: { provider: "openai", baseUrl: model.baseUrl, model: "fake" } },
      // A progress notification with Cancel, as a user may choose (the default is the
      // status bar): its test below cancels from it.
      "forkyard.agentProgress": "notification",
    },
  );
});

after(async () => {
  await editor?.close();
  await model?.close();
});

const skip = missing.length > 0 ? `missing: ${missing.join("; ")}` : false;

/** A test step that leaves a screenshot of the editor behind when it fails. */
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

test("a command agent dispatched from the palette reaches done in the Agents view", { skip, timeout: 90_000 }, step("dispatch", async () => {
  const { page } = editor;
  await page.locator('.statusbar a.statusbar-item-label[aria-label^="Forkyard:"]').waitFor({ timeout: 30_000 });
  await runCommand(page, "Forkyard: Run command in background worktree…");
  await answerInput(page, TASK);
  // The tree item's accessible label ends with the agent's state.
  const done = page.locator('.monaco-list-row[aria-label^="agent 1,"][aria-label$=", done"]');
  await done.waitFor({ timeout: 60_000 });
  await page.locator(".monaco-list-row", { hasText: "To review" }).waitFor();
  const file = page.locator('.monaco-list-row[aria-label="app.py: modified, +1 −1"]');
  await file.waitFor();
  await page.locator('.statusbar a.statusbar-item-label[aria-label^="Forkyard: 0 running, 0 queued, 1 to review."]').waitFor();
  await editor.screenshot("agents");
}));

test("clicking a changed file opens the diff of the user's file against the agent's", { skip, timeout: 60_000 }, step("diff", async () => {
  const { page } = editor;
  await page.locator('.monaco-list-row[aria-label="app.py: modified, +1 −1"]').click();
  const diff = page.locator(".monaco-diff-editor");
  await diff.waitFor({ timeout: 20_000 });
  await page.locator(".tab", { hasText: "app.py ↔ agent #1" }).waitFor();
  // Both sides are rendered: the user's line on the left, the agent's on the right.
  await diff.locator(".editor.original .view-lines", { hasText: "hello world" }).waitFor({ timeout: 20_000 });
  await diff.locator(".editor.modified .view-lines", { hasText: "hello forkyard" }).waitFor({ timeout: 20_000 });
  await editor.screenshot("diff");
}));

test("Apply in the Agents view brings the change to the file on disk", { skip, timeout: 60_000 }, step("apply", async () => {
  const { page, repo } = editor;
  const row = page.locator('.monaco-list-row[aria-label^="agent 1,"]');
  await row.hover();
  await row.locator('.action-label[aria-label="Apply"]').click();
  await page.locator('.monaco-list-row[aria-label^="agent 1,"][aria-label$=", applied"]').waitFor({ timeout: 30_000 });
  const appFile = path.join(repo, "app.py");
  await eventually(() => fs.readFileSync(appFile, "utf8").includes("hello forkyard"), "app.py saved on disk");
  assert.equal(fs.readFileSync(appFile, "utf8"), APP.replace("hello world", "hello forkyard"));
}));

test("/run and /agents in the chat view: the agent's events show inline, agents are linked", { skip, timeout: 60_000 }, step("chat", async () => {
  const { page } = editor;
  await runCommand(page, "Forkyard: New chat");
  const chat = editor.chat();
  const input = chat.locator("#input");
  await input.waitFor({ timeout: 20_000 });
  await input.fill("/run sed -i 's/a + b/b + a/' app.py");
  await input.press("Enter");
  // Events of the agent the chat started land in its thread, with a link to the agent.
  const event = chat.locator(".message-event", { hasText: "agent #2" }).filter({ hasText: "is done" });
  await event.waitFor({ timeout: 30_000 });
  // Its link opens the agent: what can be done with it, in a quick pick.
  await event.locator("a.open-agent").click();
  await page.locator(".quick-input-list .monaco-list-row", { hasText: "Show diff" }).waitFor({ timeout: 10_000 });
  assert.match((await page.locator(".quick-input-title").textContent()) ?? "", /^#2 sed/);
  await page.keyboard.press("Escape");
  // The done notice's Show diff opens VS Code's diff of the agent (not a patch file).
  const notice = page.locator(".notification-toast", { hasText: "Forkyard agent #2" });
  await notice.getByRole("button", { name: "Show diff" }).click({ timeout: 20_000 });
  await page.locator(".tab", { hasText: "app.py ↔ agent #2" }).waitFor({ timeout: 20_000 });
  await notice.waitFor({ state: "detached" });
  await input.click();
  await input.pressSequentially("/ag");
  await chat.locator(".completion", { hasText: "/agents" }).waitFor();
  await input.press("Enter"); // completes to /agents
  assert.equal(await input.inputValue(), "/agents");
  await input.press("Enter"); // sends it
  const reply = chat.locator(".message-assistant .message-body").filter({ hasText: "applied" });
  await reply.waitFor({ timeout: 20_000 });
  const text = await reply.innerText();
  assert.match(text, /#1\s+sed -i 's\/hello world/);
  assert.match(text, /#2\s+sed -i 's\/a \+ b/);
  assert.equal(await reply.locator('a.agent-link[data-agent="1"]').count(), 1);
  await editor.screenshot("chat");
}));

test("in the diff, the server's quick fix applies one hunk to the user's file", { skip, timeout: 60_000 }, step("hunk", async () => {
  const { page, repo } = editor;
  await page.locator('.monaco-list-row[aria-label="app.py: modified, +1 −1"]').click();
  await page.locator(".tab", { hasText: "app.py ↔ agent #2" }).waitFor({ timeout: 20_000 });
  const diff = page.locator(".monaco-diff-editor");
  const original = diff.locator(".editor.original");
  // The diff editor focuses its right side once it has settled; then the cursor goes on
  // the hunk's line on the left, the user's file.
  await diff.locator(".editor.modified .monaco-editor.focused").waitFor({ timeout: 20_000 });
  await original.locator(".view-line", { hasText: "return a + b" }).click();
  await original.locator(".monaco-editor.focused").waitFor();
  // The hint on the agent's hunk brings the server's code actions: the lightbulb.
  await original.locator(".lightBulbWidget").click({ timeout: 20_000 });
  // The menu blocks the mouse while it is open: choose with the keyboard.
  const action = page.locator(".action-widget .monaco-list-row", { hasText: "Apply hunk from agent #2" });
  await action.waitFor();
  for (let i = 0; i < 5 && !(await action.getAttribute("class"))?.includes("focused"); i++) {
    await page.keyboard.press("ArrowDown");
  }
  await page.keyboard.press("Enter");
  await original.locator(".view-line", { hasText: "return b + a" }).waitFor({ timeout: 20_000 });
  await editor.screenshot("hunk-applied");
  await page.keyboard.press("Control+S");
  await eventually(() => fs.readFileSync(path.join(repo, "app.py"), "utf8").includes("b + a"), "app.py saved");
  await page.keyboard.press("Control+W");
}));

test("a reply streams in; a message sent meanwhile is queued; Stop interrupts the reply", { skip, timeout: 60_000 }, step("streaming", async () => {
  const chat = editor.chat();
  const input = chat.locator("#input");
  model.script({ chunks: ["Streaming ", "**part one**"], hold: true }, { chunks: ["Second ", "answer."] });
  await input.fill("hello model");
  await input.press("Enter");
  await model.holding();
  const first = chat.locator(".message-assistant.streaming", { hasText: "Streaming part one" });
  await first.waitFor({ timeout: 20_000 });
  assert.equal(await first.locator("strong").innerText(), "part one", "rendered as markdown while streaming");
  const stop = chat.locator("#stop");
  await stop.waitFor();
  // The input stays usable while the reply streams.
  await input.fill("second question");
  await input.press("Enter");
  await chat.locator(".message-user.queued", { hasText: "second question" }).waitFor({ timeout: 10_000 });
  await editor.screenshot("chat-streaming");
  await stop.click();
  const interrupted = chat.locator(".message-assistant", { hasText: "Streaming part one" });
  await interrupted.locator(".badge", { hasText: "interrupted" }).waitFor({ timeout: 20_000 });
  await chat.locator(".message-assistant", { hasText: "Second answer." }).waitFor({ timeout: 20_000 });
  await stop.waitFor({ state: "hidden" });
  assert.equal(await chat.locator(".message-user.queued").count(), 0);
  assert.deepEqual(model.requests, ["hello model", "second question"]);
}));

test("the editor's selection attached to a message reaches the model", { skip, timeout: 60_000 }, step("attach", async () => {
  const { page } = editor;
  await page.keyboard.press("Control+P");
  await answerInput(page, "app.py");
  const code = page.locator('.monaco-editor[data-uri$="/app.py"] .view-lines').first();
  await code.waitFor({ timeout: 20_000 });
  await code.click();
  await page.keyboard.press("Control+A");
  await runCommand(page, "Forkyard: Attach selection to chat");
  const chat = editor.chat();
  await chat.locator("#attachment-label", { hasText: "app.py:1-" }).waitFor({ timeout: 10_000 });
  model.script({ chunks: ["It greets."] });
  const input = chat.locator("#input");
  await input.fill("what does this do?");
  await input.press("Enter");
  await chat.locator(".message-assistant", { hasText: "It greets." }).waitFor({ timeout: 20_000 });
  await chat.locator("#attachment").waitFor({ state: "hidden" });
  const body = model.bodies[model.bodies.length - 1];
  assert.match(body, /what does this do\?/);
  assert.match(body, /return \\"hello forkyard\\"/, "the selected code went with the message");
}));

test("the chat thread comes back after the window reloads", { skip, timeout: 90_000 }, step("reload", async () => {
  const { page } = editor;
  await page.reload();
  await page.locator(".monaco-workbench").waitFor({ timeout: 60_000 });
  // The extension is active again once its status bar item is back.
  await page.locator('.statusbar a.statusbar-item-label[aria-label^="Forkyard:"]').waitFor({ timeout: 30_000 });
  await runCommand(page, "Forkyard: Show chat");
  const chat = editor.chat();
  await chat.locator(".message-assistant .message-body").filter({ hasText: "applied" }).waitFor({ timeout: 30_000 });
  assert.equal(await chat.locator("#thread-title").textContent(), "/run sed -i 's/a + b/b + a/' app.py");
  await chat.locator(".message-assistant", { hasText: "Second answer." }).waitFor();
  await chat.locator(".message-event", { hasText: "agent #2" }).first().waitFor();
  await editor.screenshot("chat-after-reload");
}));

test("an agent's progress shows in VS Code's progress UI, and its Cancel cancels the agent", { skip, timeout: 60_000 }, step("progress", async () => {
  const { page } = editor;
  await runCommand(page, "Forkyard: Run command in background worktree…");
  await answerInput(page, "echo working; sleep 60");
  await page.locator('.monaco-list-row[aria-label^="agent 3,"][aria-label$=", running"]').waitFor({ timeout: 30_000 });
  // The progress's title is "agent #N: <title>"; the server's own notices say "Forkyard agent #N".
  const notification = page.locator(".notification-toast", { hasText: "agent #3: echo working" });
  await notification.waitFor({ timeout: 20_000 });
  await editor.screenshot("progress");
  await notification.hover();
  await notification.getByRole("button", { name: "Cancel" }).click();
  await page.locator('.monaco-list-row[aria-label^="agent 3,"][aria-label$=", cancelled"]').waitFor({ timeout: 20_000 });
  await notification.waitFor({ state: "detached", timeout: 10_000 });
}));

test("Dispatch agent… asks for the backend, the role and the task, and the agent runs on the model", { skip, timeout: 60_000 }, step("dispatch-llm", async () => {
  const { page } = editor;
  model.script({ chunks: ["The sample has two functions: greet and add."] });
  await runCommand(page, "Forkyard: Dispatch agent…");
  // Where other agent programs (codex, claude, aider) are known, the backend comes first.
  const title = page.locator(".quick-input-title");
  await title.waitFor({ timeout: 20_000 });
  if ((await title.textContent())?.startsWith("Backend")) await answerInput(page, "llm");
  await page.locator(".quick-input-title", { hasText: "Role of the agent" }).waitFor({ timeout: 20_000 });
  await answerInput(page, "explorer");
  await page.locator(".quick-input-title", { hasText: "Dispatch agent (explorer" }).waitFor({ timeout: 20_000 });
  await answerInput(page, "Describe the sample");
  const done = page.locator('.monaco-list-row[aria-label^="agent 4,"][aria-label$=", done"]');
  await done.waitFor({ timeout: 30_000 });
  assert.match(model.requests[model.requests.length - 1], /Describe the sample/);
  // Its events go to the latest thread, the summary with them (the fake model, asked for
  // the agent's title too, answers it with the same words: the newest line is the summary).
  const event = editor.chat().locator(".message-event", { hasText: "agent #4" }).filter({ hasText: "greet and add" }).last();
  await event.waitFor({ timeout: 10_000 });
  await editor.screenshot("dispatched");
}));

/** Sets a number in VS Code's Settings editor as a user does, waits until it is saved,
 * and closes the editor again (it keeps the keyboard focus otherwise). */
async function setNumberSetting(
  key: string,
  title: string,
  value: number,
  saved: (settingsJson: string) => boolean,
): Promise<void> {
  const { page } = editor;
  await runCommand(page, "Preferences: Open User Settings");
  const settingsEditor = page.locator(".settings-editor");
  await settingsEditor.waitFor({ timeout: 20_000 });
  // The search box has the focus; it may still hold the last search.
  await settingsEditor.locator(".settings-header .monaco-editor.focused").waitFor({ timeout: 10_000 });
  await page.keyboard.press("Control+A");
  await page.keyboard.type(key);
  const input = settingsEditor.locator(".setting-item-contents", { hasText: title }).locator("input");
  await input.waitFor({ timeout: 20_000 });
  await input.fill(String(value));
  await input.press("Tab");
  await eventually(() => saved(fs.readFileSync(editor.userSettings, "utf8")), `${key} saved`);
  await page.locator(".tab", { hasText: "Settings" }).locator(".codicon-close").click();
  await settingsEditor.waitFor({ state: "detached" });
}

test("a setting changed in VS Code's Settings editor reaches the running server", { skip, timeout: 90_000 }, step("settings", async () => {
  const { page } = editor;
  const key = "forkyard.commandTimeoutSeconds";
  await setNumberSetting(key, "Command Timeout Seconds", 1, (json) => /"forkyard\.commandTimeoutSeconds": 1\b/.test(json));
  // A command agent now gets one second: this one fails on the new limit.
  await runCommand(page, "Forkyard: Run command in background worktree…");
  await answerInput(page, "sleep 30");
  await page.locator('.monaco-list-row[aria-label^="agent 5,"][aria-label$=", failed"]').waitFor({ timeout: 20_000 });
  // Back to the default: VS Code then drops the line.
  await setNumberSetting(key, "Command Timeout Seconds", 3600, (json) => !json.includes(`"${key}"`));
}));

test("the chat webview breaks none of its Content Security Policy", { skip }, () => {
  const ours = editor.cspViolations;
  assert.deepEqual(ours, []);
});
