// What a user does to agents: dispatch, review, apply, discard, cancel, follow up. Each
// command takes a tree node, an agent id or number (from chat links), or nothing (then
// it asks with a quick pick of the agents it applies to).
import * as vscode from "vscode";
import { type ForkyardConnection, openSetting, showError } from "../connection";
import type { Agent, AgentApplyResult, BackendInfo } from "../protocol";
import { AGENT_SCHEME, openAgentChanges, openFileDiff } from "./files";
import { type AgentAction, agentActions, agentDescription, agentLabel } from "./model";
import type { AgentStore } from "./store";
import type { AgentNode } from "./view";

type AgentArgument = AgentNode | Agent | vscode.Uri | string | undefined;

export class AgentActions {
  constructor(
    private readonly connection: ForkyardConnection,
    private readonly store: AgentStore,
    private readonly reveal: (agent: Agent) => Promise<void>,
    /** The hunks an apply of the agent (or of these files) sends: undefined for all. */
    private readonly chosenHunks: (agent: Agent, paths?: string[]) => Promise<string[] | undefined> = async () =>
      undefined,
  ) {}

  register(): vscode.Disposable[] {
    const command = (name: string, run: (...args: never[]) => Promise<unknown>) =>
      vscode.commands.registerCommand(name, (...args: never[]) => run(...args).catch(showError));
    return [
      command("forkyard.dispatchAgent", () => this.dispatch()),
      command("forkyard.runInWorktree", () => this.runCommand()),
      command("forkyard.applyAgent", (arg: AgentArgument) => this.apply(arg)),
      command("forkyard.applyAgentFile", (arg: AgentArgument) => this.applyFile(arg)),
      command("forkyard.discardAgent", (arg: AgentArgument) => this.discard(arg)),
      command("forkyard.cancelAgent", (arg: AgentArgument) => this.cancel(arg)),
      command("forkyard.showAgentDiff", (arg: AgentArgument) => this.showDiff(arg)),
      command("forkyard.sendFollowUp", (arg: AgentArgument) => this.followUp(arg)),
      command("forkyard.showAgentLog", (arg: AgentArgument) => this.showLog(arg)),
      command("forkyard.openAgent", (arg: AgentArgument) => this.openAgent(arg)),
      command("forkyard.openAgentFile", (arg: AgentArgument) => this.openFile(arg)),
      // The same actions with short titles, for the Agents view's menus.
      command("forkyard.agent.apply", (arg: AgentArgument) => this.apply(arg)),
      command("forkyard.agent.applyFile", (arg: AgentArgument) => this.applyFile(arg)),
      command("forkyard.agent.diff", (arg: AgentArgument) => this.showDiff(arg)),
      command("forkyard.agent.discard", (arg: AgentArgument) => this.discard(arg)),
      command("forkyard.agent.cancel", (arg: AgentArgument) => this.cancel(arg)),
      command("forkyard.agent.followUp", (arg: AgentArgument) => this.followUp(arg)),
      command("forkyard.agent.log", (arg: AgentArgument) => this.showLog(arg)),
      command("forkyard.retryAgent", (arg: AgentArgument) => this.retry(arg)),
      command("forkyard.agent.retry", (arg: AgentArgument) => this.retry(arg)),
    ];
  }

  /** The agent a command is about, asking the user when nothing says it. */
  private async pick(arg: AgentArgument, action: AgentAction, verb: string): Promise<Agent | undefined> {
    if (typeof arg === "string") {
      const known = this.store.get(arg);
      if (known) return known;
      const { agent } = await this.connection.request("forkyard/agent/read", { agentId: arg });
      this.store.update(agent);
      return agent;
    }
    if (arg instanceof vscode.Uri) arg = new URLSearchParams(arg.query).get("agent") ?? undefined;
    if (typeof arg === "string") return this.pick(arg, action, verb);
    if (arg && "kind" in arg) {
      if (arg.kind !== "group") return arg.agent;
      arg = undefined;
    }
    if (arg && "id" in arg) return arg;
    await this.connection.ready();
    const candidates = this.store
      .all()
      .filter((agent) => agentActions(agent).includes(action))
      .sort((a, b) => b.number - a.number);
    if (candidates.length === 0) {
      void vscode.window.showInformationMessage(`Forkyard: no agent to ${verb}.`);
      return undefined;
    }
    const picked = await vscode.window.showQuickPick(
      candidates.map((agent) => ({ label: agentLabel(agent), description: agentDescription(agent), agent })),
      { placeHolder: `Agent to ${verb}` },
    );
    return picked?.agent;
  }

  /** What the person typed last when a dispatch failed: offered again, never lost. */
  private draftTask = "";

  /** Backend first (unavailable ones shown with why, and not taken), then the role,
   * then the task: what is missing is said before anything is typed, and a task whose
   * dispatch fails is kept for the next try. */
  async dispatch(): Promise<void> {
    await this.connection.ready();
    const capabilities = this.connection.capabilities;
    const backend = await this.pickBackend(capabilities?.backendDetails ?? []);
    if (backend === null) return;
    const roles = capabilities?.roles?.length ? capabilities.roles : ["worker", "explorer", "default"];
    const ordered = [...roles].sort((a, b) => Number(b === "worker") - Number(a === "worker"));
    const role = await vscode.window.showQuickPick(
      ordered.map((name) => ({
        label: name,
        description:
          name === "worker"
            ? "writes in its own worktree"
            : name === "explorer"
              ? "reads your checkout, writes nothing"
              : name === "default"
                ? "as worker"
                : undefined,
      })),
      { title: "Role of the agent", placeHolder: "The first, worker, writes in its own worktree" },
    );
    if (!role) return;
    for (;;) {
      const task = await vscode.window.showInputBox({
        title: `Forkyard: Dispatch agent (${role.label}${backend ? `, ${backend}` : ""})`,
        prompt: "What should the agent do? It works in its own worktree; you review its diff.",
        placeHolder: "Add type hints to the payment module",
        value: this.draftTask,
        ignoreFocusOut: true,
      });
      if (!task?.trim()) return;
      this.draftTask = task;
      try {
        const { agent } = await this.connection.request("forkyard/agent/dispatch", {
          task: task.trim(),
          role: role.label,
          ...(backend ? { backend } : {}),
        });
        this.draftTask = "";
        this.store.update(agent);
        void this.reveal(agent);
        return;
      } catch (error) {
        // A user error (no model, an unknown role) is one message, the task kept.
        const message = error instanceof Error ? error.message : String(error);
        const choice = await vscode.window.showErrorMessage(
          `Forkyard: ${message}`,
          "Edit task",
          ...(/model/i.test(message) ? ["Set up a model"] : []),
        );
        if (choice === "Set up a model") await openSetting("forkyard.models", false);
        if (choice !== "Edit task") return;
      }
    }
  }

  /** The backend, asked when there is a choice; undefined: the server's default; null:
   * the person gave up. */
  private async pickBackend(details: BackendInfo[]): Promise<string | undefined | null> {
    const choices = details.filter((b) => b.name !== "command");
    if (choices.length === 0 || (choices.length === 1 && choices[0].available)) return undefined;
    // The built-in loop first: it is the server's default; available ones before the rest.
    const ordered = [...choices].sort(
      (a, b) =>
        Number(b.available) - Number(a.available) ||
        Number(b.name === "llm") - Number(a.name === "llm") ||
        a.name.localeCompare(b.name),
    );
    for (;;) {
      const picked = await vscode.window.showQuickPick(
        ordered.map((b) => ({
          label: `${b.available ? "$(check)" : "$(circle-slash)"} ${b.name}`,
          description: !b.available
            ? `not available: ${b.reason ?? "unknown reason"}`
            : b.name === "llm"
              ? "Forkyard's own agent on your configured model"
              : undefined,
          backend: b,
        })),
        { title: "Backend", placeHolder: "Which agent program does the work" },
      );
      if (!picked) return null;
      if (picked.backend.available) return picked.backend.name;
      const choice = await vscode.window.showWarningMessage(
        `Forkyard: ${picked.backend.name} is not available: ${picked.backend.reason ?? "unknown reason"}`,
        "Pick another",
        ...(picked.backend.name === "llm" ? ["Set up a model"] : []),
      );
      if (choice === "Set up a model") {
        await openSetting("forkyard.models", false);
        return null;
      }
      if (choice !== "Pick another") return null;
    }
  }

  async runCommand(): Promise<void> {
    await this.connection.ready();
    const command = await vscode.window.showInputBox({
      title: "Forkyard: Run command in background worktree",
      prompt: "A shell command, run in a new worktree of your checkout (sandboxed); its changes come back as a diff.",
      placeHolder: "npm test -- --update-snapshots",
      ignoreFocusOut: true,
    });
    if (!command?.trim()) return;
    const { agent } = await this.connection.request("forkyard/agent/dispatch", {
      task: command.trim(),
      role: "worker",
      backend: "command",
    });
    this.store.update(agent);
    void this.reveal(agent);
  }

  async apply(arg: AgentArgument, paths?: string[]): Promise<void> {
    const agent = await this.pick(arg, "apply", "apply");
    if (!agent) return;
    const result = await applyAndSave(this.connection, agent, paths, await this.chosenHunks(agent, paths));
    reportApply(agent, result);
  }

  async applyFile(arg: AgentArgument): Promise<void> {
    if (arg && typeof arg === "object" && "kind" in arg && arg.kind === "file") {
      await this.apply(arg.agent, [arg.change.path]);
      return;
    }
    // From the diff editor's title bar: the agent's side of the diff names agent and file.
    if (arg instanceof vscode.Uri && arg.scheme === AGENT_SCHEME) {
      const agentId = new URLSearchParams(arg.query).get("agent");
      if (agentId) {
        const agent = await this.pick(agentId, "apply", "apply");
        if (agent) await this.apply(agent, [arg.path.replace(/^\//, "")]);
        return;
      }
    }
    const agent = await this.pick(arg, "apply", "apply a file of");
    if (!agent) return;
    const diff = await this.store.diff(agent);
    const file = await vscode.window.showQuickPick(
      diff.files.map((f) => ({ label: f.path, description: `+${f.additions ?? 0} −${f.deletions ?? 0}` })),
      { placeHolder: "File to apply" },
    );
    if (file) await this.apply(agent, [file.label]);
  }

  async discard(arg: AgentArgument): Promise<void> {
    const agent = await this.pick(arg, "discard", "discard");
    if (!agent) return;
    const answer = await vscode.window.showWarningMessage(
      `Discard agent #${agent.number} (${agent.title})? Its worktree and branch are removed; ` +
        `the work stays under refs/forkyard/discarded/${agent.number}.`,
      { modal: true },
      "Discard",
    );
    if (answer !== "Discard") return;
    const result = await this.connection.request("forkyard/agent/discard", { agentId: agent.id });
    this.store.update(result.agent);
  }

  async cancel(arg: AgentArgument): Promise<void> {
    const agent = await this.pick(arg, "cancel", "cancel");
    if (!agent) return;
    const result = await this.connection.request("forkyard/agent/cancel", { agentId: agent.id });
    this.store.update(result.agent);
  }

  async showDiff(arg: AgentArgument): Promise<void> {
    const agent = await this.pick(arg, "diff", "review");
    if (!agent) return;
    const diff = await this.store.diff(agent);
    await openAgentChanges(agent, diff.files);
  }

  async openFile(arg: AgentArgument): Promise<void> {
    if (arg && typeof arg === "object" && "kind" in arg && arg.kind === "file") {
      await openFileDiff(arg.agent, arg.change);
    } else {
      await this.showDiff(arg);
    }
  }

  /** The task again, as a new agent on the same base: for a failed, interrupted or
   * cancelled one. */
  async retry(arg: AgentArgument): Promise<void> {
    const agent = await this.pick(arg, "retry", "retry");
    if (!agent) return;
    const result = await this.connection.request("forkyard/agent/retry", { agentId: agent.id });
    this.store.update(result.agent);
    void this.reveal(result.agent);
  }

  async followUp(arg: AgentArgument): Promise<void> {
    const agent = await this.pick(arg, "followUp", "send a follow-up to");
    if (!agent) return;
    const text = await vscode.window.showInputBox({
      title: `Follow-up for agent #${agent.number}`,
      prompt:
        agent.state === "running"
          ? "The agent gets it at its next step."
          : "The agent runs again in the same worktree with this instruction.",
      ignoreFocusOut: true,
    });
    if (!text?.trim()) return;
    const result = await this.connection.request("forkyard/agent/message", { agentId: agent.id, text: text.trim() });
    this.store.update(result.agent);
  }

  async showLog(arg: AgentArgument): Promise<void> {
    const agent = await this.pick(arg, "log", "show the log of");
    if (!agent) return;
    const uri = vscode.Uri.from({ scheme: "forkyard-log", path: `/agent-${agent.number}.log`, query: agent.id });
    const document = await vscode.workspace.openTextDocument(uri);
    await vscode.window.showTextDocument(document, { preview: true });
  }

  /** From a chat link: show the agent in the tree and what can be done with it. */
  async openAgent(arg: AgentArgument): Promise<void> {
    const agent = await this.pick(arg, "log", "open");
    if (!agent) return;
    // Revealed first: focusing the view later would close the quick pick.
    await this.reveal(agent);
    const labels: Partial<Record<AgentAction, string>> = {
      diff: "$(diff) Show diff",
      apply: "$(check) Apply",
      retry: "$(debug-restart) Retry",
      followUp: "$(comment) Send follow-up…",
      cancel: "$(debug-stop) Cancel",
      discard: "$(trash) Discard",
      log: "$(output) Show log",
    };
    const actions = agentActions(agent);
    const choice = await vscode.window.showQuickPick(
      (Object.keys(labels) as AgentAction[])
        .filter((action) => actions.includes(action))
        .map((action) => ({ label: labels[action] ?? action, action })),
      { title: `${agentLabel(agent)} — ${agentDescription(agent)}` },
    );
    if (!choice) return;
    const run: Record<AgentAction, (a: Agent) => Promise<void>> = {
      diff: (a) => this.showDiff(a),
      apply: (a) => this.apply(a),
      followUp: (a) => this.followUp(a),
      retry: (a) => this.retry(a),
      cancel: (a) => this.cancel(a),
      discard: (a) => this.discard(a),
      log: (a) => this.showLog(a),
    };
    await run[choice.action](agent);
  }
}

/** Applies through the server (which edits the buffers with workspace/applyEdit), then
 * saves the files that had no unsaved changes before, so applying lands on disk like a
 * merge would; a buffer the user was editing keeps the change unsaved, for them to see. */
export async function applyAndSave(
  connection: ForkyardConnection,
  agent: Agent,
  paths?: string[],
  hunkIds?: string[],
): Promise<AgentApplyResult> {
  const dirtyBefore = new Set(vscode.workspace.textDocuments.filter((d) => d.isDirty).map((d) => d.uri.toString()));
  const result = await connection.request("forkyard/agent/apply", {
    agentId: agent.id,
    ...(paths ? { paths } : {}),
    ...(hunkIds ? { hunkIds } : {}),
  });
  const save = vscode.workspace.getConfiguration("forkyard").get<boolean>("saveAfterApply", true);
  if (result.applied && save) {
    const root = vscode.workspace.workspaceFolders?.[0]?.uri;
    for (const path of result.paths) {
      if (!root) break;
      const uri = vscode.Uri.joinPath(root, path);
      const document = vscode.workspace.textDocuments.find((d) => d.uri.toString() === uri.toString());
      if (document?.isDirty && !dirtyBefore.has(uri.toString())) await document.save();
    }
  }
  return result;
}

function reportApply(agent: Agent, result: AgentApplyResult): void {
  if (!result.applied) {
    void vscode.window.showWarningMessage(`Forkyard: agent #${agent.number} was not applied.`);
    return;
  }
  if (result.conflicts.length > 0) {
    const list = result.conflicts.map((c) => `${c.path}: ${c.reason}`).join("; ");
    void vscode.window.showWarningMessage(
      `Forkyard applied agent #${agent.number} to ${result.paths.length} file(s); not applied, ` +
        `your version changed there: ${list}`,
    );
    return;
  }
  vscode.window.setStatusBarMessage(
    `$(check) Forkyard applied agent #${agent.number} to ${result.paths.length} file(s)`,
    5000,
  );
}
