// Issue 18's "the overlap shown in VS Code", in a real code-server: two command agents
// change the same line of the same file; once both are done, each one's row in the Agents
// tree says it overlaps the other ("overlaps #2" on #1, "overlaps #1" on #2), so the
// person knows before applying either that the second will not merge cleanly, and its
// tooltip says in which file. What is read is what the person sees: the tree's rendered
// description, inside the row's visible width, and the hover. A screenshot is kept.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { answerInput, type Editor, openEditor, requirements, runCommand } from "./codeServer";

const APP = ["def add(a, b):", "    return a + b", "", "", "def greet():", '    return "hello"', ""].join("\n");

let editor: Editor;
const missing = requirements();
const skip = missing.length > 0 ? `missing: ${missing.join("; ")}` : false;

before(async () => {
  if (missing.length > 0) {
    if (process.env.FORKYARD_E2E_REQUIRED) throw new Error(`cannot run: ${missing.join("; ")}`);
    return;
  }
  editor = await openEditor({ "src/app.py": APP, "README.md": "# sample\n" });
});

after(async () => {
  await editor?.close();
});

const agentRow = (n: number) => editor.page.locator(`.monaco-list-row[aria-label^="agent ${n},"][aria-label$=", done"]`);

/** The grey text VS Code renders after an agent's label in the tree. */
const description = (n: number) => agentRow(n).locator(".label-description");

async function runInWorktree(command: string): Promise<void> {
  await runCommand(editor.page, "Forkyard: Run command in background worktree…");
  await answerInput(editor.page, command);
}

/** The description's text, after checking it is not cut off by the row's edge: text
 * past the edge is in the page but not on the screen. */
async function seenDescription(n: number): Promise<string> {
  const [text, row] = [await description(n).boundingBox(), await agentRow(n).boundingBox()];
  assert.ok(text && row, `agent #${n}'s row and description are on the page`);
  assert.ok(
    text.x + text.width <= row.x + row.width,
    `agent #${n}'s description ends at ${Math.round(text.x + text.width)}px, its row at ${Math.round(row.x + row.width)}px`,
  );
  return description(n).innerText();
}

test("two agents changing the same line each show the other as an overlap in the Agents tree", { skip, timeout: 150_000 }, async () => {
  const { page } = editor;
  try {
    await page.locator('.statusbar a.statusbar-item-label[aria-label^="Forkyard: 0 running"]').waitFor({ timeout: 60_000 });
    await runCommand(page, "Forkyard: Show agents");
    // A command agent's title is its command, longer than the side bar's default 300px
    // leave room for: the side bar is made wider, as a person reviewing agents would.
    const sidebar = page.locator(".part.sidebar");
    const box = await sidebar.boundingBox();
    assert.ok(box);
    await page.mouse.move(box.x + box.width, box.y + box.height / 2);
    await page.mouse.down();
    await page.mouse.move(box.x + 700, box.y + box.height / 2, { steps: 10 });
    await page.mouse.up();
    await page.mouse.move(box.x + 1000, box.y + box.height / 2);
    await page.waitForFunction(() => (document.querySelector(".part.sidebar")?.clientWidth ?? 0) >= 650);

    await runInWorktree("sed -i 's/a + b/b + a/' src/app.py");
    await description(1).filter({ hasText: "1 file +1 −1" }).waitFor({ timeout: 60_000 });
    // Alone, #1 overlaps nobody: its description is only its changes.
    assert.equal(await seenDescription(1), "1 file +1 −1");

    await runInWorktree("sed -i 's/a + b/a - -b/' src/app.py");
    // Each names the other, and only the other, after its changes.
    await description(2).filter({ hasText: "overlaps" }).waitFor({ timeout: 60_000 });
    await description(1).filter({ hasText: "overlaps" }).waitFor({ timeout: 30_000 });
    assert.equal(await seenDescription(2), "1 file +1 −1 · overlaps #1");
    assert.equal(await seenDescription(1), "1 file +1 −1 · overlaps #2");
    await editor.screenshot("agents-overlaps");

    // The hover says in which file they overlap.
    await agentRow(1).locator(".label-name").hover();
    const hover = page.locator(".workbench-hover", { hasText: "#1 sed" });
    await hover.waitFor({ timeout: 20_000 });
    assert.match(await hover.innerText(), /^Overlaps .+ in src\/app\.py$/m);
    await editor.screenshot("agents-overlaps-hover");
  } catch (error) {
    await editor.screenshot("failed-overlaps").catch(() => undefined);
    throw error;
  }
});
