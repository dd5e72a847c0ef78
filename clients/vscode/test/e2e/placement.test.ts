// The chat opens in the secondary side bar on first run (code-server 4.100 has no
// contribution point for it: the extension moves the view once), and the Agents view keeps
// the primary side bar.
import assert from "node:assert/strict";
import { test } from "node:test";
import { CHAT_FRAME, openEditor, requirements, runCommand } from "./codeServer";

const missing = requirements();
const skip = missing.length > 0 ? `missing: ${missing.join("; ")}` : false;

test("the chat is in the secondary side bar, the Agents view in the primary one", { skip, timeout: 120_000 }, async () => {
  const editor = await openEditor({ "app.py": "print('hi')\n" });
  try {
    const { page } = editor;
    await page.locator('.statusbar a.statusbar-item-label[aria-label^="Forkyard: 0 running"]').waitFor({ timeout: 60_000 });
    await runCommand(page, "Forkyard: Show chat");
    const secondary = page.locator(".part.auxiliarybar");
    await secondary.waitFor({ state: "visible", timeout: 20_000 });
    const input = page.frameLocator(CHAT_FRAME).frameLocator("#active-frame").locator("#input");
    await input.waitFor({ timeout: 20_000 });
    // A webview is drawn over its part: its frame lies inside the secondary side bar.
    const bar = await secondary.boundingBox();
    const frame = await page.locator(CHAT_FRAME).boundingBox();
    assert.ok(bar && frame, "both are on screen");
    assert.ok(frame.x >= bar.x - 1 && frame.x + frame.width <= bar.x + bar.width + 1, `${JSON.stringify({ bar, frame })}`);
    await editor.screenshot("chat-secondary-side-bar");
    await page.locator(".part.editor").click(); // the palette's keys, not the chat's input
    await runCommand(page, "Forkyard: Show agents");
    // The Agents view alone in the Forkyard container (its header hidden, as for any
    // single view), the chat gone from it.
    await page.locator('.part.sidebar .pane-header[aria-label="Agents Section"]').waitFor({ state: "attached", timeout: 20_000 });
    assert.equal(await page.locator('.part.sidebar .pane-header[aria-label="Chat Section"]').count(), 0, "the chat left it");
  } finally {
    await editor.close();
  }
});
