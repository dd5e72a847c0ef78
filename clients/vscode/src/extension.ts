// Forkyard for VS Code: starts `forkyard serve` and gives the protocol a native face —
// the Chat view, the Agents tree, diffs, palette commands and a status bar item.
import * as vscode from "vscode";
import { AgentActions } from "./agents/actions";
import { AGENT_SCHEME, AgentFileProvider } from "./agents/files";
import { statusBarText } from "./agents/model";
import { AgentStore } from "./agents/store";
import { type AgentNode, AgentsTreeProvider } from "./agents/view";
import { ChatViewProvider } from "./chat/view";
import { ForkyardConnection, showError } from "./connection";
import type { Agent } from "./protocol";
import { RepositoryTrust, trustStatusText } from "./trust";

const AGENTS_VIEW = "forkyard.agents";

/** An agent's log as a read-only document (`forkyard/agent/read`). */
class AgentLogProvider implements vscode.TextDocumentContentProvider {
  constructor(private readonly connection: ForkyardConnection) {}

  async provideTextDocumentContent(uri: vscode.Uri): Promise<string> {
    const { agent, log } = await this.connection.request("forkyard/agent/read", { agentId: uri.query });
    const header = [
      `agent #${agent.number}: ${agent.title} (${agent.state})`,
      `task: ${agent.task}`,
      `role: ${agent.role}, backend: ${agent.backend}${agent.branch ? `, branch: ${agent.branch}` : ""}`,
      agent.summary ? `summary: ${agent.summary}` : "",
      agent.error ? `error: ${agent.error}` : "",
      "",
    ].filter((line, i, lines) => line !== "" || i === lines.length - 1);
    return [...header, ...log.map((entry) => `${entry.time} [${entry.kind}] ${entry.text}`)].join("\n") + "\n";
  }
}

let activeConnection: ForkyardConnection | undefined;

export function activate(context: vscode.ExtensionContext): void {
  const output = vscode.window.createOutputChannel("Forkyard");
  const connection = new ForkyardConnection(output, context.extensionUri);
  activeConnection = connection;
  const store = new AgentStore(connection);
  const tree = new AgentsTreeProvider(store);
  const treeView = vscode.window.createTreeView<AgentNode>(AGENTS_VIEW, {
    treeDataProvider: tree,
    showCollapseAll: true,
  });
  const reveal = async (agent: Agent) => {
    await vscode.commands.executeCommand(`${AGENTS_VIEW}.focus`);
    const current = store.get(agent.id) ?? agent;
    await treeView.reveal({ kind: "agent", agent: current }, { select: true, focus: false, expand: true });
  };
  const actions = new AgentActions(connection, store, (agent) => reveal(agent).catch(() => undefined));
  connection.onDoneNotice = async (agentId, action) => {
    const run = { "Show diff": actions.showDiff, Apply: actions.apply, Discard: actions.discard }[action];
    await run.call(actions, agentId).catch(showError);
  };
  const chat = new ChatViewProvider(context.extensionUri, connection, context.workspaceState);

  const trust = new RepositoryTrust(connection);
  const status = vscode.window.createStatusBarItem("forkyard.status", vscode.StatusBarAlignment.Left, 50);
  status.name = "Forkyard agents";
  status.command = "forkyard.showAgents";
  const updateStatus = () => {
    const agents = statusBarText(store.all());
    const untrusted = trustStatusText(trust.state);
    const text = untrusted ? `${agents.text} ${untrusted.text}` : agents.text;
    const tooltip = untrusted ? `${agents.tooltip}\n${untrusted.tooltip}` : agents.tooltip;
    status.text = text;
    status.tooltip = tooltip;
    status.accessibilityInformation = { label: tooltip };
    status.command = untrusted ? "forkyard.trustRepository" : "forkyard.showAgents";
    treeView.badge = (() => {
      const review = store.all().filter((a) => a.state === "done").length;
      return review > 0 ? { value: review, tooltip: `${review} agent(s) to review` } : undefined;
    })();
    status.show();
  };

  context.subscriptions.push(
    output,
    connection,
    store,
    tree,
    treeView,
    chat,
    status,
    trust,
    store.onDidChange(updateStatus),
    trust.onDidChange(updateStatus),
    vscode.workspace.registerTextDocumentContentProvider(AGENT_SCHEME, new AgentFileProvider(connection, store)),
    vscode.workspace.registerTextDocumentContentProvider("forkyard-log", new AgentLogProvider(connection)),
    vscode.window.registerWebviewViewProvider(ChatViewProvider.viewId, chat, {
      webviewOptions: { retainContextWhenHidden: false },
    }),
    ...actions.register(),
    vscode.commands.registerCommand("forkyard.newChat", async () => {
      await chat.newThread();
      await chat.focus();
    }),
    vscode.commands.registerCommand("forkyard.showChat", () => chat.focus()),
    vscode.commands.registerCommand("forkyard.pickThread", () => chat.pickThread().catch(showError)),
    vscode.commands.registerCommand("forkyard.attachSelection", async () => {
      chat.attachSelection();
      await chat.focus();
    }),
    vscode.commands.registerCommand("forkyard.showAgents", () => vscode.commands.executeCommand(`${AGENTS_VIEW}.focus`)),
    vscode.commands.registerCommand("forkyard.refreshAgents", () => store.reload()),
    vscode.commands.registerCommand("forkyard.restartServer", () => connection.restart().catch(showError)),
    vscode.commands.registerCommand("forkyard.showOutput", () => output.show()),
  );

  updateStatus();
  // Start the server now: agents that ran before the reload show up, and the chat view
  // restores its thread as soon as it is opened.
  connection.ready().catch((error: unknown) => {
    output.appendLine(String(error instanceof Error ? error.message : error));
    status.text = "$(error) Forkyard";
    status.tooltip = "Forkyard's language server is not running: click to see why.";
    status.command = "forkyard.showOutput";
  });
}

/** VS Code waits for the returned promise: the server gets shutdown and exit, and marks
 * its running agents interrupted with their logs on disk, before the window goes. */
export function deactivate(): Promise<void> | undefined {
  return activeConnection?.stop();
}
