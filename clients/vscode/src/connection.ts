// The language client: starts `forkyard serve`, passes the settings, and gives the rest of
// the extension typed requests and notifications of the Forkyard protocol.
import * as fs from "node:fs";
import * as vscode from "vscode";
import {
  CodeLensRequest,
  DidChangeConfigurationNotification,
  LanguageClient,
  type LanguageClientOptions,
  type Middleware,
  RevealOutputChannelOn,
  type ServerOptions,
  State,
  TransportKind,
} from "vscode-languageclient/node";
import type {
  ForkyardCapabilities,
  ForkyardNotifications,
  ParamsOf,
  RequestMethod,
  ResultOf,
} from "./protocol";
import { type NoticeCenter } from "./notices";
import { type ProgressPlacement, showServerProgress } from "./progress";
import { INSTALL_COMMAND, pathFromEnviron, resolveServerCommand } from "./serverCommand";
import { secretLikeModelKeys, serverSettings } from "./settings";

type NotificationHandler<M extends keyof ForkyardNotifications> = (params: ForkyardNotifications[M]) => void;

/** The PATHs of this process's parent and grandparent (Linux): in code-server and over
 * Remote SSH the extension host runs under a server started from the user's shell,
 * whose PATH is the one the user set up. Empty where /proc is not there. */
function parentPaths(): string[] {
  const found: string[] = [];
  let pid = process.ppid;
  for (let depth = 0; depth < 2 && pid > 1; depth++) {
    try {
      const value = pathFromEnviron(fs.readFileSync(`/proc/${pid}/environ`, "utf8"));
      if (value) found.push(value);
      const status = fs.readFileSync(`/proc/${pid}/status`, "utf8");
      pid = Number(/^PPid:\s*(\d+)/m.exec(status)?.[1] ?? 0);
    } catch {
      break;
    }
  }
  return found;
}

function isExecutable(file: string): boolean {
  try {
    fs.accessSync(file, fs.constants.X_OK);
    return fs.statSync(file).isFile();
  } catch {
    return false;
  }
}

export function currentServerSettings(): Record<string, unknown> {
  const config = vscode.workspace.getConfiguration("forkyard");
  return serverSettings((key) => config.inspect(key));
}

export class ForkyardConnection implements vscode.Disposable {
  private client: LanguageClient | undefined;
  private starting: Promise<LanguageClient> | undefined;
  private readonly handlers = new Map<string, Set<(params: unknown) => void>>();
  private readonly readyEmitter = new vscode.EventEmitter<void>();
  private readonly disposables: vscode.Disposable[] = [];
  /** Fires each time a server (re)starts and is initialized. */
  readonly onReady = this.readyEmitter.event;
  capabilities: ForkyardCapabilities | undefined;
  /** Where agents' notices go (set by the extension). */
  notices: NoticeCenter | undefined;
  /** The language client's middleware (set by the extension before the first start). */
  middleware: Middleware = {};
  private clientDisposables: vscode.Disposable[] = [];

  constructor(
    private readonly output: vscode.OutputChannel,
    private readonly extensionUri: vscode.Uri,
  ) {
    this.disposables.push(
      vscode.workspace.onDidChangeConfiguration((event) => this.configurationChanged(event)),
      this.onNotification("forkyard/notice", (notice) => this.notices?.show(notice)),
    );
  }

  get running(): boolean {
    return this.client?.state === State.Running;
  }

  /** The started client; starts it on first use. Rejects with a message for the user. */
  ready(): Promise<LanguageClient> {
    if (!this.starting) {
      this.starting = this.start().catch((error: unknown) => {
        this.starting = undefined;
        throw error;
      });
    }
    return this.starting;
  }

  private async start(): Promise<LanguageClient> {
    const folder = vscode.workspace.workspaceFolders?.[0];
    if (!folder || folder.uri.scheme !== "file") {
      throw new Error("Forkyard needs a folder of a git repository open in VS Code.");
    }
    const setting = vscode.workspace.getConfiguration("forkyard").get<unknown>("server.command");
    const resolved = resolveServerCommand(setting, process.env, isExecutable, {
      workspace: folder.uri.fsPath,
      parentPaths: parentPaths(),
    });
    if (!resolved.ok) {
      void this.offerFix(resolved.message, resolved.missing);
      throw new Error(resolved.message);
    }
    if (resolved.foundIn) this.output.appendLine(`found forkyard in ${resolved.foundIn} (not on this window's PATH)`);
    const settings = currentServerSettings();
    this.warnAboutSecrets(settings);
    const serverOptions: ServerOptions = {
      command: resolved.command,
      args: resolved.args,
      transport: TransportKind.stdio,
      options: { cwd: folder.uri.fsPath },
    };
    const clientOptions: LanguageClientOptions = {
      // Every file: the server reads open buffers to place an agent's hunks on the user's
      // current text and to apply without overwriting unsaved edits.
      documentSelector: [{ scheme: "file" }],
      workspaceFolder: folder,
      initializationOptions: settings,
      outputChannel: this.output,
      revealOutputChannelOn: RevealOutputChannelOn.Never,
      middleware: this.middleware,
      // The `connectionOptions.maxRestartCount` default (4 in 3 minutes) is fine.
    };
    const client = new LanguageClient("forkyard", "Forkyard", serverOptions, clientOptions);
    // Agents' notices as data (`forkyard/notice`): a done agent is known by its kind and
    // id, and VS Code shows its "Show diff / Apply / Discard" as a toast that never takes
    // the cursor. `noticeActions` too: a server without structured notices then asks with
    // a message request, whose buttons it carries out itself.
    client.registerFeature({
      fillClientCapabilities(capabilities) {
        capabilities.experimental = {
          ...(capabilities.experimental as object | undefined),
          forkyard: { noticeActions: true, structuredNotices: true },
        };
      },
      initialize() {},
      getState: () => ({ kind: "static" }),
      clear() {},
    });
    for (const [method, handlers] of this.handlers) {
      client.onNotification(method, (params: unknown) => handlers.forEach((handler) => handler(params)));
    }
    this.output.appendLine(`starting ${resolved.command} ${resolved.args.join(" ")} in ${folder.uri.fsPath}`);
    // Running again after a crash and an automatic restart too: views reload then.
    client.onDidChangeState((change) => {
      if (change.newState === State.Running) {
        this.readCapabilities(client);
        this.readyEmitter.fire();
      }
    });
    try {
      await client.start();
    } catch (error) {
      void client.dispose();
      throw new Error(`Forkyard's language server did not start: ${String(error)}. See the Forkyard output.`);
    }
    // It replaces a handler that client.start() registered, so it comes after it.
    this.clientDisposables.push(
      showServerProgress(client, () =>
        vscode.workspace.getConfiguration("forkyard").get<ProgressPlacement>("agentProgress", "notification"),
      ),
    );
    this.client = client;
    return client;
  }

  private readCapabilities(client: LanguageClient): void {
    const experimental = client.initializeResult?.capabilities.experimental as
      | { forkyard?: ForkyardCapabilities }
      | undefined;
    this.capabilities = experimental?.forkyard;
  }

  /** VS Code asks the server's lenses of `document` again (after a hunk was undone). */
  refreshCodeLenses(document: vscode.TextDocument): void {
    this.client?.getFeature(CodeLensRequest.method)?.getProvider(document)?.onDidChangeCodeLensEmitter.fire();
  }

  async restart(): Promise<void> {
    await this.stop();
    await this.ready();
  }

  async request<M extends RequestMethod>(method: M, params: ParamsOf<M>): Promise<ResultOf<M>> {
    const client = await this.ready();
    return client.sendRequest<ResultOf<M>>(method, params);
  }

  /** Registered for every client this connection starts, including after a restart. */
  onNotification<M extends keyof ForkyardNotifications>(method: M, handler: NotificationHandler<M>): vscode.Disposable {
    let set = this.handlers.get(method);
    if (!set) {
      set = new Set();
      this.handlers.set(method, set);
      this.client?.onNotification(method, (params: unknown) => set?.forEach((h) => h(params)));
    }
    const untyped = handler as (params: unknown) => void;
    set.add(untyped);
    return new vscode.Disposable(() => set?.delete(untyped));
  }

  private configurationChanged(event: vscode.ConfigurationChangeEvent): void {
    if (!event.affectsConfiguration("forkyard")) return;
    // The command, and the state directory, are read only when the server starts.
    if (event.affectsConfiguration("forkyard.server.command") || event.affectsConfiguration("forkyard.stateDir")) {
      void vscode.window
        .showInformationMessage("Restart Forkyard's language server for the new setting to apply?", "Restart")
        .then((choice) => (choice === "Restart" ? this.restart().catch(showError) : undefined));
    }
    const client = this.client;
    if (!client || !this.running) return;
    const settings = currentServerSettings();
    this.warnAboutSecrets(settings);
    void client.sendNotification(DidChangeConfigurationNotification.type, { settings: { forkyard: settings } });
  }

  private warnAboutSecrets(settings: Record<string, unknown>): void {
    const keys = secretLikeModelKeys(settings.models);
    if (keys.length > 0) {
      void vscode.window.showWarningMessage(
        `Forkyard reads API keys from environment variables only: remove ${keys.join(", ")} from ` +
          "your settings and name the variable in apiKeyEnv instead.",
      );
    }
  }

  /** The error, with fixes that work: the install command to copy, the packaged readme
   * (vsce stores it as readme.md), and the setting opened on the tab where it lives. */
  private async offerFix(message: string, missing: boolean): Promise<void> {
    const actions = missing ? ["Copy install command", "How to install", "Open Settings"] : ["Open Settings"];
    const choice = await vscode.window.showErrorMessage(message, ...actions);
    if (choice === "Open Settings") {
      await openSetting("forkyard.server.command");
    } else if (choice === "How to install") {
      await vscode.commands.executeCommand("markdown.showPreview", readmeUri(this.extensionUri));
    } else if (choice === "Copy install command") {
      await vscode.env.clipboard.writeText(INSTALL_COMMAND);
      void vscode.window.showInformationMessage(
        `Copied \`${INSTALL_COMMAND}\`: run it in a terminal, then reload the window.`,
      );
    }
  }

  /** Ends the server politely (shutdown, exit); VS Code waits for it on deactivation. */
  async stop(): Promise<void> {
    const client = this.client;
    this.client = undefined;
    this.starting = undefined;
    this.clientDisposables.forEach((d) => d.dispose());
    this.clientDisposables = [];
    if (client) await client.dispose(2000).catch(() => undefined);
  }

  dispose(): void {
    this.disposables.forEach((d) => d.dispose());
    void this.stop();
    this.readyEmitter.dispose();
  }
}

/** The extension's readme as packaged: `readme.md` in a .vsix, `README.md` in a clone. */
export function readmeUri(extensionUri: vscode.Uri): vscode.Uri {
  for (const name of ["readme.md", "README.md"]) {
    const uri = vscode.Uri.joinPath(extensionUri, name);
    if (fs.existsSync(uri.fsPath)) return uri;
  }
  return vscode.Uri.joinPath(extensionUri, "README.md");
}

/** Opens the Settings editor on `key`, on the Remote tab when VS Code runs remotely
 * (code-server, SSH) for a `machine` setting: those live there, the User tab says "No
 * Settings Found". */
export async function openSetting(key: string, machine = true): Promise<void> {
  if (machine && vscode.env.remoteName !== undefined) {
    const commands = await vscode.commands.getCommands(true);
    if (commands.includes("workbench.action.openRemoteSettings")) {
      try {
        await vscode.commands.executeCommand("workbench.action.openRemoteSettings", { query: key });
        return;
      } catch {
        // an older VS Code without arguments: the User tab below
      }
    }
  }
  await vscode.commands.executeCommand("workbench.action.openSettings", key);
}

export function showError(error: unknown): void {
  const message = error instanceof Error ? error.message : String(error);
  void vscode.window.showErrorMessage(message.startsWith("Forkyard") ? message : `Forkyard: ${message}`);
}
