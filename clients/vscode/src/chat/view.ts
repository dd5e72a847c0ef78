// The chat view's host side: holds the shown thread (so a hidden and re-shown webview, or
// a reloaded window, gets it back), sends the user's messages, and forwards the thread's
// notifications to the webview.
import * as vscode from "vscode";
import { ResponseError } from "vscode-languageclient/node";
import { type ForkyardConnection, openSetting, showError } from "../connection";
import type { ChatContext, ChatParams } from "../protocol";
import type { Attachment, FromWebview, ToWebview } from "./messages";
import {
  type AgentBrief,
  agentBrief,
  applyEvent,
  type ChatEvent,
  type ChatState,
  emptyChat,
  isBusy,
  loadThread,
  threadOf,
} from "./model";

const THREAD_KEY = "forkyard.chat.threadId";

export class ChatViewProvider implements vscode.WebviewViewProvider, vscode.Disposable {
  static readonly viewId = "forkyard.chat";
  private view: vscode.WebviewView | undefined;
  private state: ChatState = emptyChat();
  private restored: Promise<void> | undefined;
  /** Chat requests that start a thread and have not been answered yet: notifications of
   * threads not shown are kept meanwhile, since one of them is that new thread. */
  private startingThreads = 0;
  private buffered: ChatEvent[] = [];
  private attachment: { context: ChatContext; label: string } | null = null;
  /** What the user was typing, for when the view is shown again (not across reloads). */
  private draft = "";
  private endProgress: (() => void) | undefined;
  private readonly disposables: vscode.Disposable[] = [];
  /** Every agent's state now, for the lines of the thread that name it. */
  private agents: Record<string, AgentBrief> = {};

  constructor(
    private readonly extensionUri: vscode.Uri,
    private readonly connection: ForkyardConnection,
    private readonly memento: vscode.Memento,
  ) {
    const forward = (event: ChatEvent) => this.onEvent(event);
    this.disposables.push(
      connection.onNotification("forkyard/chat/message", ({ message }) => forward({ kind: "message", message })),
      connection.onNotification("forkyard/chat/delta", (delta) => forward({ kind: "delta", delta })),
      connection.onNotification("forkyard/chat/turn", (turn) => forward({ kind: "turn", turn })),
      connection.onNotification("forkyard/agent/changed", ({ agent }) => {
        const brief = agentBrief(agent);
        this.agents[agent.id] = brief;
        this.state = applyEvent(this.state, { kind: "agent", agent: brief });
        this.post({ type: "event", event: { kind: "agent", agent: brief } });
      }),
      // After a server restart the thread is read again: turns running then are gone.
      connection.onReady(() => {
        this.restored = undefined;
        void this.loadAgents();
        if (this.view) void this.restore();
      }),
    );
  }

  resolveWebviewView(view: vscode.WebviewView): void {
    this.view = view;
    const dist = vscode.Uri.joinPath(this.extensionUri, "dist");
    const media = vscode.Uri.joinPath(this.extensionUri, "media");
    view.webview.options = { enableScripts: true, localResourceRoots: [dist, media] };
    view.webview.html = chatHtml(view.webview, dist, media);
    view.webview.onDidReceiveMessage((message: FromWebview) => this.receive(message).catch(showError));
    view.onDidDispose(() => {
      if (this.view === view) this.view = undefined;
    });
  }

  private post(message: ToWebview): void {
    void this.view?.webview.postMessage(message);
  }

  private postState(): void {
    this.state = { ...this.state, agents: { ...this.agents, ...(this.state.agents ?? {}) } };
    this.post({ type: "state", state: this.state, attachment: this.attachmentView(), draft: this.draft });
    this.updateProgress();
  }

  private attachmentView(): Attachment | null {
    return this.attachment ? { label: this.attachment.label } : null;
  }

  /** The agents as the server knows them now (after a restart: `interrupted` ones too). */
  async loadAgents(): Promise<void> {
    try {
      const { agents } = await this.connection.request("forkyard/agent/list", {});
      this.agents = Object.fromEntries(agents.map((a) => [a.id, agentBrief(a)]));
      this.state = { ...this.state, agents: { ...this.agents } };
      this.postState();
    } catch {
      // not running: the connection says why
    }
  }

  /** The thread shown before the window reloaded, read again from the server. */
  private restore(): Promise<void> {
    if (!this.restored) {
      this.restored = (async () => {
        const threadId = this.state.thread?.id ?? this.memento.get<string>(THREAD_KEY);
        if (threadId) await this.openThread(threadId, false);
        else this.postState();
      })();
    }
    return this.restored;
  }

  private async openThread(threadId: string, reportErrors = true): Promise<void> {
    try {
      const { thread, messages } = await this.connection.request("forkyard/thread/read", { threadId });
      this.state = loadThread(thread, messages);
      await this.memento.update(THREAD_KEY, thread.id);
    } catch (error) {
      if (reportErrors) throw error;
      this.state = emptyChat();
      // Forget the thread only when the server says it does not know it; a server that
      // is not running yet must not lose the user's place.
      if (error instanceof ResponseError) await this.memento.update(THREAD_KEY, undefined);
    }
    this.postState();
  }

  private onEvent(event: ChatEvent): void {
    const thread = this.state.thread;
    if (thread && threadOf(event) === thread.id) {
      this.state = applyEvent(this.state, event);
      this.post({ type: "event", event });
      this.updateProgress();
    } else if (this.startingThreads > 0) {
      this.buffered.push(event);
    }
  }

  async receive(message: FromWebview): Promise<void> {
    switch (message.type) {
      case "ready":
        this.postState();
        await this.restore();
        return;
      case "send":
        this.draft = "";
        await this.send(message.text);
        return;
      case "draft":
        this.draft = message.text;
        return;
      case "stop":
        if (this.state.thread) {
          await this.connection.request("forkyard/chat/interrupt", { threadId: this.state.thread.id });
        }
        return;
      case "newThread":
        await this.newThread();
        return;
      case "listThreads":
        await this.postThreads();
        return;
      case "openThread":
        await this.openThread(message.threadId);
        return;
      case "openAgent":
        await vscode.commands.executeCommand("forkyard.openAgent", message.agent);
        return;
      case "openLink":
        if (/^https?:\/\//i.test(message.href)) await vscode.env.openExternal(vscode.Uri.parse(message.href));
        return;
      case "attachSelection":
        this.attachSelection();
        return;
      case "clearAttachment":
        this.attachment = null;
        this.post({ type: "attachment", attachment: null });
        return;
      case "copy":
        await vscode.env.clipboard.writeText(message.text);
        return;
      case "retry":
        await vscode.commands.executeCommand("forkyard.retryAgent", message.agent);
        return;
      case "openSetting":
        await openSetting(message.key, false);
        return;
    }
  }

  async send(text: string): Promise<void> {
    const trimmed = text.trim();
    if (!trimmed) return;
    const params: ChatParams = { text: trimmed };
    if (this.attachment) params.context = this.attachment.context;
    const threadId = this.state.thread?.id;
    if (threadId) params.threadId = threadId;
    else this.startingThreads += 1;
    try {
      const result = await this.connection.request("forkyard/chat", params);
      this.attachment = null;
      this.post({ type: "attachment", attachment: null });
      if (!threadId) await this.adoptNewThread(result.threadId);
    } catch (error) {
      // Shown in the thread, where the user looks, rather than as a notification.
      this.post({ type: "error", text: error instanceof Error ? error.message : String(error) });
    } finally {
      if (!threadId) {
        this.startingThreads -= 1;
        if (this.startingThreads === 0) this.buffered = [];
      }
    }
  }

  /** Shows the thread a first message started, with what it already streamed. */
  private async adoptNewThread(threadId: string): Promise<void> {
    const { thread, messages } = await this.connection.request("forkyard/thread/read", { threadId });
    let state = loadThread(thread, messages);
    for (const event of this.buffered) {
      if (threadOf(event) === threadId) state = applyEvent(state, event);
    }
    this.buffered = this.buffered.filter((event) => threadOf(event) !== threadId);
    this.state = state;
    await this.memento.update(THREAD_KEY, threadId);
    this.postState();
  }

  async newThread(): Promise<void> {
    this.state = emptyChat();
    await this.memento.update(THREAD_KEY, undefined);
    this.postState();
    this.post({ type: "focus" });
  }

  async pickThread(): Promise<void> {
    const { threads } = await this.connection.request("forkyard/thread/list", {});
    const picked = await vscode.window.showQuickPick(
      [
        { label: "$(add) New chat", id: "" },
        ...threads.map((t) => ({
          label: t.title,
          description: new Date(t.updatedAt).toLocaleString(),
          id: t.id,
          picked: t.id === this.state.thread?.id,
        })),
      ],
      { placeHolder: "Open a chat thread" },
    );
    if (!picked) return;
    if (picked.id) await this.openThread(picked.id);
    else await this.newThread();
    await this.focus();
  }

  private async postThreads(): Promise<void> {
    const { threads } = await this.connection.request("forkyard/thread/list", {});
    this.post({ type: "threads", threads, currentId: this.state.thread?.id ?? null });
  }

  /** The editor's selection (or whole file) goes with the next message. */
  attachSelection(): void {
    const editor = vscode.window.activeTextEditor;
    if (!editor || editor.document.uri.scheme !== "file") {
      void vscode.window.showInformationMessage("Forkyard: open a file and select the code to attach.");
      return;
    }
    const { selection, document } = editor;
    const name = vscode.workspace.asRelativePath(document.uri);
    const context: ChatContext = { uri: document.uri.toString() };
    let label = name;
    if (!selection.isEmpty) {
      context.range = {
        start: { line: selection.start.line, character: selection.start.character },
        end: { line: selection.end.line, character: selection.end.character },
      };
      label = `${name}:${selection.start.line + 1}-${selection.end.line + 1}`;
    }
    this.attachment = { context, label };
    this.post({ type: "attachment", attachment: this.attachmentView() });
  }

  async focus(): Promise<void> {
    await vscode.commands.executeCommand(`${ChatViewProvider.viewId}.focus`);
    this.post({ type: "focus" });
  }

  /** VS Code's own progress bar on the view while a turn runs or waits. */
  private updateProgress(): void {
    const busy = isBusy(this.state);
    if (busy && !this.endProgress) {
      void vscode.window.withProgress({ location: { viewId: ChatViewProvider.viewId } }, () =>
        new Promise<void>((resolve) => {
          this.endProgress = resolve;
        }),
      );
    } else if (!busy && this.endProgress) {
      this.endProgress();
      this.endProgress = undefined;
    }
  }

  dispose(): void {
    this.endProgress?.();
    this.disposables.forEach((d) => d.dispose());
  }
}

function nonce(): string {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  return Array.from({ length: 32 }, () => alphabet[Math.floor(Math.random() * alphabet.length)]).join("");
}

/** The page: local script and styles only, under a Content Security Policy that allows
 * nothing else (no remote resources, no inline script but our nonce). */
export function chatHtml(webview: vscode.Webview, dist: vscode.Uri, media: vscode.Uri): string {
  const script = webview.asWebviewUri(vscode.Uri.joinPath(dist, "webview.js"));
  const style = webview.asWebviewUri(vscode.Uri.joinPath(media, "chat.css"));
  const n = nonce();
  const csp = [
    "default-src 'none'",
    `style-src ${webview.cspSource}`,
    `font-src ${webview.cspSource}`,
    `img-src ${webview.cspSource} data:`,
    `script-src 'nonce-${n}'`,
  ].join("; ");
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="UTF-8">
<meta http-equiv="Content-Security-Policy" content="${csp}">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<link rel="stylesheet" href="${style}">
<title>Forkyard chat</title>
</head>
<body>
<header id="thread-bar"><span id="thread-title">New chat</span></header>
<main id="messages" aria-live="polite"></main>
<footer id="composer">
  <div id="completions" role="listbox" hidden></div>
  <div id="attachment" hidden><span id="attachment-label"></span><button id="clear-attachment" title="Remove">×</button></div>
  <textarea id="input" rows="3" placeholder="Message Forkyard, or / for commands (Enter sends, Shift+Enter for a new line)" aria-label="Message"></textarea>
  <div id="buttons">
    <button id="attach" class="secondary" title="Attach the editor's selection">Attach selection</button>
    <span class="spacer"></span>
    <button id="stop" class="secondary" hidden title="Stop the reply">Stop</button>
    <button id="send" title="Send (Enter)">Send</button>
  </div>
</footer>
<script nonce="${n}" src="${script}"></script>
</body>
</html>`;
}
