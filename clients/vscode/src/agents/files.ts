// The agent's version of a file as a read-only document (`forkyard-agent:` URIs over
// `forkyard/agent/file`), and the diffs that put it beside the user's own file.
import * as vscode from "vscode";
import type { ForkyardConnection } from "../connection";
import type { Agent, FileChange } from "../protocol";
import type { AgentStore } from "./store";

export const AGENT_SCHEME = "forkyard-agent";

/** The agent's side: the path keeps the file's name so VS Code picks its language. */
export function agentFileUri(agent: Agent, path: string): vscode.Uri {
  return vscode.Uri.from({
    scheme: AGENT_SCHEME,
    path: `/${path}`,
    query: new URLSearchParams({ agent: agent.id, n: String(agent.number) }).toString(),
  });
}

/** An empty document standing for a file that does not exist on one side. */
export function emptyUri(path: string): vscode.Uri {
  return vscode.Uri.from({ scheme: AGENT_SCHEME, path: `/${path}`, query: "empty=1" });
}

export class AgentFileProvider implements vscode.TextDocumentContentProvider, vscode.Disposable {
  private readonly changedEmitter = new vscode.EventEmitter<vscode.Uri>();
  private readonly open = new Map<string, vscode.Uri>();
  private readonly subscriptions: vscode.Disposable[];
  readonly onDidChange = this.changedEmitter.event;

  constructor(
    private readonly connection: ForkyardConnection,
    private readonly store: AgentStore,
    /** The agent's text as the diff shows it (undone hunks put back). */
    private readonly shown: (agent: Agent, change: FileChange, text: string) => string = (_a, _c, text) => text,
    decisionsChanged?: vscode.Event<string>,
  ) {
    // A follow-up changes the agent's files: refresh the documents shown of it.
    this.subscriptions = [
      store.onDidChange((agent) => {
        for (const uri of this.open.values()) {
          const id = new URLSearchParams(uri.query).get("agent");
          if (!agent || id === agent.id) this.changedEmitter.fire(uri);
        }
      }),
      vscode.workspace.onDidCloseTextDocument((document) => this.open.delete(document.uri.toString())),
    ];
    if (decisionsChanged) {
      this.subscriptions.push(
        decisionsChanged((agentId) => {
          for (const uri of this.open.values()) {
            if (new URLSearchParams(uri.query).get("agent") === agentId) this.changedEmitter.fire(uri);
          }
        }),
      );
    }
  }

  async provideTextDocumentContent(uri: vscode.Uri): Promise<string> {
    const query = new URLSearchParams(uri.query);
    const agentId = query.get("agent");
    if (!agentId) return "";
    this.open.set(uri.toString(), uri);
    const path = uri.path.replace(/^\//, "");
    const { text } = await this.connection.request("forkyard/agent/file", { agentId, path });
    const agent = this.store.get(agentId);
    if (!agent || text == null) return text ?? "";
    const change = (await this.store.diff(agent).catch(() => undefined))?.files.find((f) => f.path === path);
    return change ? this.shown(agent, change, text) : text;
  }

  dispose(): void {
    this.subscriptions.forEach((d) => d.dispose());
    this.changedEmitter.dispose();
  }
}

/** [label resource, left, right] of one file: the user's file against the agent's. */
export function diffSides(agent: Agent, change: FileChange): [vscode.Uri, vscode.Uri, vscode.Uri] {
  const userFile = vscode.Uri.parse(change.uri);
  const left = change.status === "added" ? emptyUri(change.path) : userFile;
  const right = change.status === "deleted" ? emptyUri(change.path) : agentFileUri(agent, change.path);
  return [userFile, left, right];
}

export async function openFileDiff(agent: Agent, change: FileChange): Promise<void> {
  const [, left, right] = diffSides(agent, change);
  const title = `${change.path} ↔ agent #${agent.number}`;
  await vscode.commands.executeCommand("vscode.diff", left, right, title, { preview: true });
}

/** All files of an agent in VS Code's multi-file diff editor. */
export async function openAgentChanges(agent: Agent, files: FileChange[]): Promise<void> {
  if (files.length === 0) {
    void vscode.window.showInformationMessage(`Forkyard: agent #${agent.number} changed no files.`);
    return;
  }
  if (files.length === 1) {
    await openFileDiff(agent, files[0]);
    return;
  }
  try {
    await vscode.commands.executeCommand(
      "vscode.changes",
      `Agent #${agent.number}: ${agent.title}`,
      files.map((change) => diffSides(agent, change)),
    );
  } catch {
    await openFileDiff(agent, files[0]);
  }
}
