// Forkyard for VS Code: starts `forkyard serve` and gives the protocol a native face —
// the Chat view, the Agents tree, diffs, palette commands and a status bar item.
import * as vscode from "vscode";
import { AgentActions } from "./agents/actions";
import { AGENT_SCHEME, AgentFileProvider } from "./agents/files";
import { statusBarText } from "./agents/model";
import { AgentStore } from "./agents/store";
import { type AgentNode, AgentsTreeProvider } from "./agents/view";
import { placeChatOnce } from "./chat/placement";
import { ChatViewProvider } from "./chat/view";
import { ForkyardConnection, showError } from "./connection";
import { NoticeCenter } from "./notices";
import type { Agent } from "./protocol";
import { AgentSideLenses, HunkDecisions, registerHunkCommands } from "./review/controls";
import { hunksToApply } from "./review/decisions";
import { LiveHunks } from "./review/middleware";
import { applyAndSave } from "./agents/actions";
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
  const decisions = new HunkDecisions(context.workspaceState);
  const live = new LiveHunks(store, decisions);
  const reviewMiddleware = live.middleware();
  const tree = new AgentsTreeProvider(store, (agent, change) => live.remaining(agent, change), (listener) =>
    vscode.Disposable.from(live.onDidChange(listener), decisions.onDidChange(listener)),
  );
  const treeView = vscode.window.createTreeView<AgentNode>(AGENTS_VIEW, {
    treeDataProvider: tree,
    showCollapseAll: true,
  });
  const reveal = async (agent: Agent) => {
    await vscode.commands.executeCommand(`${AGENTS_VIEW}.focus`);
    const current = store.get(agent.id) ?? agent;
    await treeView.reveal({ kind: "agent", agent: current }, { select: true, focus: false, expand: true });
  };
  const chosenHunks = async (agent: Agent, paths?: string[]) =>
    hunksToApply(decisions.current, agent, (await store.diff(agent)).files, paths);
  const actions = new AgentActions(connection, store, (agent) => reveal(agent).catch(() => undefined), chosenHunks);
  const agentSide = new AgentSideLenses(store, decisions);
  connection.middleware = {
    ...reviewMiddleware,
    // The server's "Show diff" (a lens, a code action) opens VS Code's diff editor here,
    // not a patch file.
    executeCommand: async (command, args, next) =>
      command === "forkyard.showDiff" && typeof args[0] === "string" ? actions.showDiff(args[0]) : next(command, args),
  };
  // "Apply agent #N to this file" where people look: the editor's title bar and menu,
  // for a file that a done agent changes.
  const updateFileContext = () => {
    const uri = vscode.window.activeTextEditor?.document.uri.toString();
    void vscode.commands.executeCommand("setContext", "forkyard.fileHasAgent", Boolean(uri && live.agentsIn(uri).length));
  };
  const notices = new NoticeCenter({
    onDone: async (agentId, action) => {
      const run = { "Show diff": actions.showDiff, Apply: actions.apply, Discard: actions.discard }[action];
      await run.call(actions, agentId).catch(showError);
    },
    onFailed: async (agentId, action) => {
      await (action === "Retry" ? actions.retry(agentId) : actions.showLog(agentId)).catch(showError);
    },
    lastLines: async (agentId) => {
      const { log } = await connection.request("forkyard/agent/read", { agentId });
      return log.slice(-3).map((entry) => entry.text);
    },
    showAgents: async () => {
      await vscode.commands.executeCommand(`${AGENTS_VIEW}.focus`);
    },
  });
  connection.notices = notices;
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
      const review = store.all().filter((a) => a.state === "done" && !tree.reviewed(a)).length;
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
    // The badge counts agents left to review: keeping or undoing hunks moves it too.
    live.onDidChange(updateStatus),
    decisions.onDidChange(updateStatus),
    trust.onDidChange(updateStatus),
    vscode.workspace.registerTextDocumentContentProvider(
      AGENT_SCHEME,
      new AgentFileProvider(connection, store, (agent, change, text) => decisions.shown(agent, change, text), decisions.onDidChange),
    ),
    decisions,
    live,
    notices,
    agentSide,
    vscode.languages.registerCodeLensProvider({ scheme: AGENT_SCHEME }, agentSide),
    ...registerHunkCommands(connection, store, decisions, async (agent, paths, hunkIds) => {
      const result = await applyAndSave(connection, agent, paths, hunkIds);
      if (!result.applied || result.conflicts.length > 0) {
        void vscode.window.showWarningMessage(
          `Forkyard: that hunk of agent #${agent.number} was not applied` +
            (result.conflicts.length ? `: ${result.conflicts.map((c) => c.reason).join("; ")}` : "."),
        );
        return false;
      }
      return true;
    }),
    decisions.onDidChange(() => {
      for (const editor of vscode.window.visibleTextEditors) connection.refreshCodeLenses(editor.document);
    }),
    live.onDidChange(updateFileContext),
    vscode.window.onDidChangeActiveTextEditor(updateFileContext),
    vscode.commands.registerCommand("forkyard.applyAgentToFile", async (uri?: vscode.Uri) => {
      const target = (uri instanceof vscode.Uri ? uri : vscode.window.activeTextEditor?.document.uri)?.toString();
      const agents = target ? live.agentsIn(target).map((id) => store.get(id)).filter((a): a is Agent => !!a) : [];
      const root = vscode.workspace.workspaceFolders?.[0]?.uri;
      if (!target || !root || agents.length === 0) {
        void vscode.window.showInformationMessage("Forkyard: no done agent changes this file.");
        return;
      }
      const agent =
        agents.length === 1
          ? agents[0]
          : (
              await vscode.window.showQuickPick(
                agents.map((a) => ({ label: `#${a.number} ${a.title}`, agent: a })),
                { placeHolder: "Agent to apply to this file" },
              )
            )?.agent;
      if (!agent) return;
      const path = vscode.workspace.asRelativePath(vscode.Uri.parse(target), false);
      await actions.apply(agent, [path]).catch(showError);
    }),
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

  // The chat in the secondary side bar by default (once: after that, where the person
  // keeps it); placed before the server starts, so the layout settles before anything
  // (a notice, a person's first command) can meet it. The status bar item shows once it
  // has: what it offers (the agents, the chat) is then where it stays.
  const placed = placeChatOnce(context.globalState, (command, ...args) =>
    vscode.commands.executeCommand(command, ...args),
  ).catch(() => false);
  // Start the server now: agents that ran before the reload show up, and the chat view
  // restores its thread as soon as it is opened.
  placed.then(() => {
    updateStatus();
    return connection.ready();
  }).catch((error: unknown) => {
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
