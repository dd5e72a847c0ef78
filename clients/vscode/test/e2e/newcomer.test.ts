// A newcomer's first open, in a real code-server: `forkyard` installed where people put it
// (only on the PATH of the shell that starts code-server, and in ~/.local/bin) and no
// Forkyard setting at all: the server starts, with no error, cold and again warm (the
// daemon already running), each timed from opening the workspace to the server answering.
// Then a code-server whose configured server is missing: the error's "How to install"
// opens the packaged readme, and "Open Settings" shows the setting where it lives.
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { test } from "node:test";
import { ARTIFACTS, type Editor, openEditor, requirements, runCommand } from "./codeServer";

const missing = requirements();
const skip = missing.length > 0 ? `missing: ${missing.join("; ")}` : false;
const STATUS = '.statusbar a.statusbar-item-label[aria-label^="Forkyard:"]';
const FILES = { "app.py": "print('hi')\n", "README.md": "# sample\n" };

/** The figure of the closing note, kept with the screenshots. */
function record(name: string, ms: number): void {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  fs.appendFileSync(path.join(ARTIFACTS, "timings.txt"), `${name}: ${ms} ms\n`);
  console.log(`${name}: ${ms} ms`);
}

async function failing(editor: Editor | undefined, name: string, run: () => Promise<void>): Promise<void> {
  try {
    await run();
  } catch (error) {
    await editor?.screenshot(`failed-${name}`).catch(() => undefined);
    throw error;
  }
}

test("with forkyard only on the launching shell's PATH and no setting, the server starts with no error", { skip, timeout: 180_000 }, async () => {
  if (missing.length > 0 && process.env.FORKYARD_E2E_REQUIRED) throw new Error(missing.join("; "));
  const editor = await openEditor(FILES, {}, { serverCommand: null, forkyardOnShellPath: true });
  await failing(editor, "newcomer", async () => {
    const { page } = editor;
    await page.locator(STATUS).waitFor({ timeout: 60_000 });
    // The status item appears with the extension; the server answers when it counts agents.
    await page.locator('.statusbar a.statusbar-item-label[aria-label^="Forkyard: 0 running"]').waitFor({ timeout: 60_000 });
    await runCommand(page, "Forkyard: Show agents");
    // The Agents view alone in its container (the chat is in the secondary side bar), so
    // its header is hidden, as for any single view.
    await page.locator('.part.sidebar .pane-header[aria-label="Agents Section"]').waitFor({ state: "attached" });
    const cold = Date.now() - editor.openedAt;
    assert.equal(await page.locator(".notification-toast", { hasText: /not found|did not start/ }).count(), 0);
    assert.equal(await page.locator('.statusbar-item-label[aria-label*="not running"]').count(), 0);
    record("open workspace -> server answering, cold (daemon started)", cold);

    const reloaded = Date.now();
    await page.reload();
    await page.locator(".monaco-workbench").waitFor({ timeout: 60_000 });
    await page.locator('.statusbar a.statusbar-item-label[aria-label^="Forkyard: 0 running"]').waitFor({ timeout: 60_000 });
    record("open workspace -> server answering, warm (daemon running)", Date.now() - reloaded);
    assert.equal(await page.locator(".notification-toast", { hasText: /not found|did not start/ }).count(), 0);
    await editor.screenshot("newcomer");
  }).finally(() => editor.close());
});

test("a missing server offers a fix: the readme opens, and the setting on its tab", { skip, timeout: 180_000 }, async () => {
  const editor = await openEditor(FILES, {}, { serverCommand: ["/nonexistent/forkyard", "serve"] });
  await failing(editor, "missing-server", async () => {
    const { page } = editor;
    const toast = page.locator(".notification-toast", { hasText: "/nonexistent/forkyard does not exist" });
    await toast.waitFor({ timeout: 60_000 });
    await editor.screenshot("notification-missing-server");
    await toast.getByRole("button", { name: "How to install" }).click();
    // VS Code's Markdown preview of the packaged readme, not "cannot be found".
    await page.locator(".tab", { hasText: /Preview readme\.md/i }).waitFor({ timeout: 30_000 });
    // The readme's preview, not the chat (also a webview, in the secondary side bar).
    const preview = page.frameLocator('iframe.webview.ready[src*="extensionId=vscode.markdown"]').frameLocator("#active-frame");
    await preview.locator("h1", { hasText: "Forkyard for VS Code" }).waitFor({ timeout: 30_000 });
    await preview.locator("h2", { hasText: "Install" }).first().waitFor();

    await runCommand(page, "Forkyard: Restart language server");
    const again = page.locator(".notification-toast", { hasText: "/nonexistent/forkyard does not exist" });
    await again.getByRole("button", { name: "Open Settings" }).click({ timeout: 30_000 });
    const settings = page.locator(".settings-editor");
    await settings.waitFor({ timeout: 20_000 });
    await settings.locator(".setting-item-contents", { hasText: "Server: Command" }).first().waitFor({ timeout: 20_000 });
    assert.equal(await settings.getByText("No Settings Found").isVisible(), false);
    await editor.screenshot("settings-server-command");
  }).finally(() => editor.close());
});
