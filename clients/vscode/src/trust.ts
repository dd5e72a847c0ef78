// Repository trust: until the user trusts a repository, the server ignores the keys of its
// `.forkyard.toml` that reach the network, run commands or pick secrets. The status bar
// says so, and "Forkyard: Trust This Repository" runs the server's `forkyard.trust`
// command, which records the decision in the user's config and applies the file at once.
import * as vscode from "vscode";
import type { ForkyardConnection } from "./connection";
import type { TrustResult } from "./protocol";
import { type TrustState, trustStateOf } from "./trustText";

export { trustStatusText } from "./trustText";

export class RepositoryTrust implements vscode.Disposable {
  state: TrustState | undefined;
  private readonly emitter = new vscode.EventEmitter<void>();
  readonly onDidChange = this.emitter.event;
  private readonly disposables: vscode.Disposable[];

  constructor(private readonly connection: ForkyardConnection) {
    this.disposables = [
      this.emitter,
      connection.onReady(() => void this.refresh().catch(() => undefined)),
      vscode.commands.registerCommand("forkyard.trustRepository", () => this.trust()),
    ];
  }

  async refresh(): Promise<void> {
    const status = await this.connection.request("forkyard/status", { disk: false });
    this.state = trustStateOf(status);
    this.emitter.fire();
  }

  /** Asks first: trusting lets the file point the chat at any server with any key. */
  async trust(): Promise<void> {
    const keys = this.state?.ignoredKeys ?? [];
    const detail =
      "Its .forkyard.toml may then choose models and API key variables, backends, setup " +
      "commands and sandbox paths." +
      (keys.length > 0 ? ` Ignored now: ${keys.join(", ")}.` : "");
    const choice = await vscode.window.showWarningMessage(
      "Trust this repository's Forkyard settings?",
      { modal: true, detail },
      "Trust",
    );
    if (choice !== "Trust") return;
    try {
      const client = await this.connection.ready();
      const result = await client.sendRequest<TrustResult>("workspace/executeCommand", {
        command: "forkyard.trust",
        arguments: [],
      });
      this.state = trustStateOf(result);
      this.emitter.fire();
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      void vscode.window.showErrorMessage(`Forkyard: cannot trust this repository: ${message}`);
    }
  }

  dispose(): void {
    this.disposables.forEach((d) => d.dispose());
  }
}
