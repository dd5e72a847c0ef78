// The notifications a burst of five agents brings, counted as the person sees them: every
// toast that appears, progress ones included, from five `/run` agents started at once
// until all are done. Run with FORKYARD_VSIX pointing at another build to compare.
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { test } from "node:test";
import { ARTIFACTS, CHAT_FRAME, openEditor, requirements, runCommand } from "./codeServer";

const missing = requirements();
const skip = missing.length > 0 ? `missing: ${missing.join("; ")}` : false;

test("a burst of five agents: the toasts it shows", { skip, timeout: 180_000 }, async () => {
  const editor = await openEditor({ "app.py": "print('hi')\n" });
  try {
    const { page } = editor;
    await page.locator('.statusbar a.statusbar-item-label[aria-label^="Forkyard: 0 running"]').waitFor({ timeout: 60_000 });
    // Every toast that is ever added to the page, by its text.
    await page.evaluate(() => {
      const seen = new Set<string>();
      (window as unknown as { forkyardToasts: Set<string> }).forkyardToasts = seen;
      new MutationObserver(() => {
        const shown = ".notification-toast .notification-list-item-message, .notifications-center .notification-list-item-message";
        for (const toast of document.querySelectorAll(shown)) {
          seen.add(toast.textContent ?? "");
        }
      }).observe(document.body, { childList: true, subtree: true, characterData: true });
    });
    await runCommand(page, "Forkyard: Show chat");
    const chat = page.frameLocator(CHAT_FRAME).frameLocator("#active-frame");
    const input = chat.locator("#input");
    await input.waitFor({ timeout: 20_000 });
    for (let i = 0; i < 5; i++) {
      await input.fill(`/run sleep 3; echo ${i} > burst-${i}.txt`);
      await input.press("Enter");
    }
    // All five done: the status bar counts them (the tree may have them out of view).
    await page
      .locator('.statusbar a.statusbar-item-label[aria-label^="Forkyard: 0 running, 0 queued, 5 to review."]')
      .waitFor({ timeout: 60_000 });
    // Toasts past the third wait in the notification center: counted there.
    await runCommand(page, "Notifications: Show Notifications");
    // Until every agent's being done was told: by its own toast or a grouped one.
    await page.waitForFunction(
      () => {
        const seen = [...(window as unknown as { forkyardToasts: Set<string> }).forkyardToasts];
        return [1, 2, 3, 4, 5].every((n) =>
          seen.some((t) => /done/.test(t) && new RegExp(`#${n}\\b`).test(t)),
        );
      },
      undefined,
      { timeout: 30_000, polling: 200 },
    );
    const toasts = await page.evaluate(() => [...(window as unknown as { forkyardToasts: Set<string> }).forkyardToasts]);
    const line = `toasts for a burst of 5 agents (${path.basename(process.env.FORKYARD_VSIX ?? "this build")}): ${toasts.length}`;
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    fs.appendFileSync(path.join(ARTIFACTS, "timings.txt"), `${line}\n${toasts.map((t) => `  ${t}`).join("\n")}\n`);
    console.log(line);
    await editor.screenshot(`burst-${path.basename(process.env.FORKYARD_VSIX ?? "current")}`);
    if (!process.env.FORKYARD_VSIX) assert.ok(toasts.length <= 2, `at most two toasts (got ${toasts.join(" | ")})`);
  } finally {
    await editor.close();
  }
});
