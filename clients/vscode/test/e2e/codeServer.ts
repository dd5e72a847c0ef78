// A real VS Code for end-to-end tests: code-server (VS Code in the browser) with the built
// .vsix installed, a fresh profile and a sample git repository, driven by Playwright over
// Debian's chromium. Everything lives in one temporary folder, removed at the end.
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { type Browser, chromium, type FrameLocator, type Page } from "playwright-core";

/** The chat webview's outer frame (other webviews, a Markdown preview, may be open too). */
export const CHAT_FRAME = 'iframe.webview.ready[src*="extensionId=forkyard."]';

/** clients/vscode: the test runs from there (npm scripts and e2e.sh cd into it). */
export const EXTENSION_DIR = process.cwd();
export const REPO_ROOT = path.resolve(EXTENSION_DIR, "..", "..");
export const ARTIFACTS = process.env.FORKYARD_E2E_ARTIFACTS ?? path.join(EXTENSION_DIR, "test-artifacts");

const CODE_SERVER =
  process.env.FORKYARD_CODE_SERVER ??
  path.join(os.homedir(), ".cache", "forkyard", "code-server", "node_modules", ".bin", "code-server");
const CHROMIUM = process.env.FORKYARD_CHROMIUM ?? "/usr/bin/chromium";
const VSIX = process.env.FORKYARD_VSIX ?? path.join(EXTENSION_DIR, "forkyard.vsix");
/** The server of this checkout, as `./setup.sh` installs it (`uv sync`). */
const SERVER = process.env.FORKYARD_SERVER ?? path.join(REPO_ROOT, ".venv", "bin", "forkyard");

export function requirements(): string[] {
  const missing: string[] = [];
  if (!fs.existsSync(CODE_SERVER)) missing.push(`code-server (${CODE_SERVER}): run scripts/e2e.sh`);
  if (!fs.existsSync(CHROMIUM)) missing.push(`chromium (${CHROMIUM}): apt-get install chromium`);
  if (!fs.existsSync(VSIX)) missing.push(`the extension (${VSIX}): npm run package`);
  if (!fs.existsSync(SERVER)) missing.push(`forkyard (${SERVER}): ./setup.sh --no-demo`);
  return missing;
}

function git(cwd: string, ...args: string[]): void {
  const done = spawnSync("git", args, {
    cwd,
    encoding: "utf8",
    env: {
      ...process.env,
      GIT_AUTHOR_NAME: "Test",
      GIT_AUTHOR_EMAIL: "test@example.com",
      GIT_COMMITTER_NAME: "Test",
      GIT_COMMITTER_EMAIL: "test@example.com",
    },
  });
  if (done.status !== 0) throw new Error(`git ${args.join(" ")}: ${done.stderr}`);
}

export function makeRepo(root: string, files: Record<string, string>): string {
  fs.mkdirSync(root, { recursive: true });
  git(root, "init", "-q", "-b", "main");
  for (const [name, text] of Object.entries(files)) {
    fs.mkdirSync(path.dirname(path.join(root, name)), { recursive: true });
    fs.writeFileSync(path.join(root, name), text);
  }
  git(root, "add", "-A");
  git(root, "commit", "-q", "-m", "initial");
  return root;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

/** Resolves when `stream` has printed a line matching `pattern`. */
function waitForOutput(child: ChildProcess, pattern: RegExp, timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    let seen = "";
    const timer = setTimeout(() => reject(new Error(`code-server did not start:\n${seen}`)), timeoutMs);
    const onData = (chunk: Buffer) => {
      seen += chunk.toString();
      if (pattern.test(seen)) {
        clearTimeout(timer);
        resolve();
      }
    };
    child.stdout?.on("data", onData);
    child.stderr?.on("data", onData);
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`code-server exited (${code}):\n${seen}`));
    });
  });
}

export interface Editor {
  page: Page;
  /** Console messages of the page and its frames (the webviews) that report a blocked
   * resource or script: the chat's Content Security Policy must never need to. */
  cspViolations: string[];
  repo: string;
  home: string;
  /** When the workbench was there (ms since the epoch): "open workspace" for timings. */
  openedAt: number;
  /** The user's settings.json. */
  userSettings: string;
  /** The chat webview's document (VS Code nests it in two iframes). */
  chat(): FrameLocator;
  screenshot(name: string): Promise<string>;
  close(): Promise<void>;
}

export interface EditorOptions {
  /** forkyard.server.command in the Machine settings; null: no Forkyard setting at all
   * (a newcomer's code-server). Default: this checkout's server. */
  serverCommand?: string[] | null;
  /** A newcomer's install: `forkyard` linked into a directory only the shell that starts
   * code-server has on its PATH, and into ~/.local/bin. */
  forkyardOnShellPath?: boolean;
}

/** The server of this checkout (for tests that link it somewhere). */
export const FORKYARD_SERVER = SERVER;

export async function openEditor(
  files: Record<string, string>,
  settings: Record<string, unknown> = {},
  options: EditorOptions = {},
): Promise<Editor> {
  const home = fs.mkdtempSync(path.join(os.tmpdir(), "forkyard-vscode-e2e-"));
  const repo = makeRepo(path.join(home, "sample"), files);
  const userData = path.join(home, "user-data");
  const extensions = path.join(home, "extensions");
  fs.mkdirSync(path.join(userData, "User"), { recursive: true });
  fs.mkdirSync(path.join(userData, "Machine"), { recursive: true });
  // forkyard.server.command is machine-scoped (a repository's settings cannot choose a
  // program to run): in code-server, as over Remote SSH, it belongs in the Machine settings.
  const command = options.serverCommand === undefined ? [SERVER, "serve"] : options.serverCommand;
  fs.writeFileSync(
    path.join(userData, "Machine", "settings.json"),
    JSON.stringify(command ? { "forkyard.server.command": command } : {}),
  );
  let shellPath = process.env.PATH ?? "";
  if (options.forkyardOnShellPath) {
    for (const dir of [path.join(home, "shell-bin"), path.join(home, ".local", "bin")]) {
      fs.mkdirSync(dir, { recursive: true });
      fs.symlinkSync(SERVER, path.join(dir, "forkyard"));
    }
    shellPath = `${path.join(home, "shell-bin")}${path.delimiter}${shellPath}`;
  }
  const userSettings = path.join(userData, "User", "settings.json");
  const baseSettings = {
    "workbench.startupEditor": "none",
    "workbench.tips.enabled": false,
    "workbench.colorTheme": "Default Dark Modern",
    "security.workspace.trust.enabled": false,
    "telemetry.telemetryLevel": "off",
    "extensions.autoCheckUpdates": false,
    "extensions.autoUpdate": false,
    "git.openRepositoryInParentFolders": "never",
    "chat.disableAIFeatures": true,
    // With the chat in the secondary side bar the editor is narrower than the diff
    // editor's breakpoint: keep diffs side by side, as the tests read both sides.
    "diffEditor.useInlineViewWhenSpaceIsLimited": false,
    // Fewer things that move under the mouse.
    "editor.stickyScroll.enabled": false,
    "workbench.reduceMotion": "on",
    ...settings,
  };
  fs.writeFileSync(userSettings, JSON.stringify(baseSettings));
  // The server's world: its own state directory, and no user config of the machine's.
  const env = {
    ...process.env,
    PATH: shellPath,
    HOME: home,
    XDG_CONFIG_HOME: path.join(home, ".config"),
    FORKYARD_STATE_DIR: path.join(home, "state"),
  };
  const install = spawnSync(CODE_SERVER, ["--extensions-dir", extensions, "--install-extension", VSIX], {
    env,
    encoding: "utf8",
  });
  if (install.status !== 0) throw new Error(`installing ${VSIX} failed:\n${install.stdout}${install.stderr}`);

  const port = await freePort();
  const server = spawn(
    CODE_SERVER,
    [
      "--auth", "none",
      "--bind-addr", `127.0.0.1:${port}`,
      "--disable-telemetry",
      "--disable-update-check",
      "--disable-workspace-trust",
      "--config", path.join(home, "code-server.yaml"),
      "--user-data-dir", userData,
      "--extensions-dir", extensions,
      repo,
    ],
    // Its own process group: the extension host and `forkyard serve` are killed with it.
    { env, detached: true, stdio: ["ignore", "pipe", "pipe"] },
  );
  const serverLog = fs.createWriteStream(path.join(home, "code-server.log"));
  server.stdout?.pipe(serverLog);
  server.stderr?.pipe(serverLog);
  let browser: Browser | undefined;
  const stopServer = () => {
    if (server.pid && server.exitCode === null) {
      try {
        process.kill(-server.pid, "SIGKILL");
      } catch {
        // already gone
      }
    }
  };
  try {
    await waitForOutput(server, /HTTP server listening/, 30_000);
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking"],
    });
    const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
    const cspViolations: string[] = [];
    page.on("console", (message) => {
      if (/Content Security Policy/i.test(message.text())) cspViolations.push(message.text());
    });
    const startedAt = Date.now();
    await page.goto(`http://127.0.0.1:${port}/?folder=${encodeURIComponent(repo)}`);
    await page.locator(".monaco-workbench").waitFor({ timeout: 60_000 });
    // Screenshots of earlier failures go (they would mislead); each test file of a run
    // runs in its own process and adds its own screenshots beside the others'.
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    for (const name of fs.readdirSync(ARTIFACTS)) {
      if (name.startsWith("failed-")) fs.rmSync(path.join(ARTIFACTS, name), { force: true });
    }
    const opened = browser;
    return {
      page,
      cspViolations,
      userSettings,
      repo,
      home,
      openedAt: startedAt,
      chat: () => page.frameLocator(CHAT_FRAME).frameLocator("#active-frame"),
      screenshot: async (name) => {
        const file = path.join(ARTIFACTS, `${name}.png`);
        await page.screenshot({ path: file });
        return file;
      },
      close: async () => {
        await opened.close().catch(() => undefined);
        stopServer();
        // The daemon `forkyard serve` started lives on by design (agents outlive editors):
        // the test's own goes with the test.
        await stopDaemon(path.join(home, "state"));
        serverLog.close();
        if (!process.env.FORKYARD_E2E_KEEP) fs.rmSync(home, { recursive: true, force: true });
      },
    };
  } catch (error) {
    await browser?.close().catch(() => undefined);
    stopServer();
    throw error;
  }
}

/** Runs a palette command by its title, e.g. "Forkyard: Show agents". */
export async function runCommand(page: Page, title: string): Promise<void> {
  const widget = page.locator(".quick-input-widget");
  if (await widget.isVisible()) {
    await page.keyboard.press("Escape");
    await widget.waitFor({ state: "hidden" });
  }
  // F1 opens the palette from wherever the keyboard is, but a webview that holds the
  // focus (the chat, at start) may keep the key: press it again, up to three times.
  const input = page.locator(".quick-input-widget input");
  for (let attempt = 1; ; attempt++) {
    await page.keyboard.press("F1");
    try {
      await input.waitFor({ timeout: attempt < 3 ? 5_000 : 30_000 });
      break;
    } catch (error) {
      if (attempt >= 3) throw error;
      await page.locator(".part.editor").click().catch(() => undefined);
    }
  }
  await input.fill(`>${title}`);
  await page.locator(".quick-input-list .monaco-list-row", { hasText: title }).first().waitFor();
  await page.keyboard.press("Enter");
}

/** Answers the input box a command opened. */
export async function answerInput(page: Page, text: string): Promise<void> {
  const input = page.locator(".quick-input-widget input");
  await input.waitFor();
  await input.fill(text);
  await page.keyboard.press("Enter");
}

/** Waits until `check` holds, for things that send no event we could wait on (a file on
 * disk written by the editor). */
export async function eventually(check: () => boolean, what: string, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** SIGKILL the daemon of `stateDir`, as a crash or a machine going to sleep would end
 * it: its running agents are interrupted. */
export function killDaemon(stateDir: string): void {
  const pid = Number.parseInt(fs.readFileSync(path.join(stateDir, "daemon.pid"), "utf8"), 10);
  process.kill(pid, "SIGKILL");
}

/** SIGTERM the daemon of `stateDir` (if one runs) and wait until it is gone. */
async function stopDaemon(stateDir: string): Promise<void> {
  let pid: number;
  try {
    pid = Number.parseInt(fs.readFileSync(path.join(stateDir, "daemon.pid"), "utf8"), 10);
  } catch {
    return;
  }
  const alive = () => {
    try {
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  };
  if (!Number.isInteger(pid) || !alive()) return;
  process.kill(pid, "SIGTERM");
  for (let waited = 0; alive() && waited < 10_000; waited += 50) {
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  if (alive()) process.kill(pid, "SIGKILL");
}
