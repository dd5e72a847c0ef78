// Per-hunk Keep / Undo, as Copilot and Cursor users know it: over each hunk of a done
// agent in the diff editor (on the agent's side) and in the file itself (beside the
// server's "Apply hunk" lens). Keep applies that hunk to the user's file; Undo drops it
// from the agent's proposal: the diff's agent side shows the base lines there, its
// lenses and diagnostics go, and a later Apply of the agent leaves it out. Decisions are
// kept per agent version in the workspace state.
import * as vscode from "vscode";
import type { ForkyardConnection } from "../connection";
import type { Agent, FileChange, Hunk } from "../protocol";
import type { AgentStore } from "../agents/store";
import { type Decision, type DecisionTable, decide, decisionOf, openHunks, withoutUndone } from "./decisions";

const KEY = "forkyard.hunkDecisions";
export const AGENT_SCHEME = "forkyard-agent";

export class HunkDecisions implements vscode.Disposable {
  private table: DecisionTable;
  private readonly emitter = new vscode.EventEmitter<string>();
  /** Fires with the agent id whose decisions changed. */
  readonly onDidChange = this.emitter.event;

  constructor(private readonly memento: vscode.Memento) {
    this.table = memento.get<DecisionTable>(KEY) ?? {};
  }

  get current(): DecisionTable {
    return this.table;
  }

  of(agent: Agent, hunkId: string): Decision | undefined {
    return decisionOf(this.table, agent, hunkId);
  }

  async set(agent: Agent, hunkId: string, decision: Decision): Promise<void> {
    this.table = decide(this.table, agent, hunkId, decision);
    await this.memento.update(KEY, this.table);
    this.emitter.fire(agent.id);
  }

  /** The agent's text of `change` as the diff shows it: undone hunks put back. */
  shown(agent: Agent, change: FileChange, agentText: string): string {
    return withoutUndone(agentText, change, (id) => this.of(agent, id) === "undone");
  }

  dispose(): void {
    this.emitter.dispose();
  }
}

/** The 0-based line of `hunk` in the agent's text as shown, undone hunks above it put
 * back to their base lines. */
export function shownLine(change: FileChange, hunk: Hunk, undone: (id: string) => boolean): number {
  let shift = 0;
  for (const other of change.hunks ?? []) {
    if (other.newStart >= hunk.newStart || !undone(other.id)) continue;
    const removed = other.text.split("\n").filter((l) => l.startsWith("-")).length;
    shift += removed - other.newLines;
  }
  const start = hunk.newLines === 0 ? hunk.newStart : hunk.newStart - 1;
  return Math.max(0, start + shift);
}

/** Keep / Undo lenses on the agent's side of a diff (`forkyard-agent:` documents). */
export class AgentSideLenses implements vscode.CodeLensProvider, vscode.Disposable {
  private readonly emitter = new vscode.EventEmitter<void>();
  private readonly subscriptions: vscode.Disposable[];
  readonly onDidChangeCodeLenses = this.emitter.event;

  constructor(
    private readonly store: AgentStore,
    private readonly decisions: HunkDecisions,
  ) {
    this.subscriptions = [
      store.onDidChange(() => this.emitter.fire()),
      decisions.onDidChange(() => this.emitter.fire()),
    ];
  }

  async provideCodeLenses(document: vscode.TextDocument): Promise<vscode.CodeLens[]> {
    const agentId = new URLSearchParams(document.uri.query).get("agent");
    const agent = agentId ? this.store.get(agentId) : undefined;
    if (!agent || agent.state !== "done") return [];
    const path = document.uri.path.replace(/^\//, "");
    const change = (await this.store.diff(agent)).files.find((f) => f.path === path);
    if (!change) return [];
    const undone = (id: string) => this.decisions.of(agent, id) === "undone";
    const lenses: vscode.CodeLens[] = [];
    for (const hunk of openHunks(this.decisions.current, agent, change)) {
      const line = Math.min(shownLine(change, hunk, undone), Math.max(0, document.lineCount - 1));
      const range = new vscode.Range(line, 0, line, 0);
      const args = [agent.id, path, hunk.id];
      lenses.push(
        new vscode.CodeLens(range, { title: "$(check) Keep", command: "forkyard.hunk.keep", arguments: args, tooltip: "Apply this hunk to your file" }),
        new vscode.CodeLens(range, { title: "$(discard) Undo", command: "forkyard.hunk.undo", arguments: args, tooltip: "Drop this hunk of the agent's change" }),
      );
    }
    return lenses;
  }

  dispose(): void {
    this.subscriptions.forEach((d) => d.dispose());
    this.emitter.dispose();
  }
}

/** What the server's lenses and diagnostics on the user's file carry in `data`. */
export interface HunkData {
  agentId: string;
  hunkId: string;
  kind?: string;
  path?: string;
  number?: number;
}

export function hunkData(data: unknown): HunkData | undefined {
  if (!data || typeof data !== "object") return undefined;
  const { agentId, hunkId } = data as Record<string, unknown>;
  return typeof agentId === "string" && typeof hunkId === "string" ? (data as HunkData) : undefined;
}

/** The commands behind the lenses. */
export function registerHunkCommands(
  connection: ForkyardConnection,
  store: AgentStore,
  decisions: HunkDecisions,
  apply: (agent: Agent, paths: string[], hunkIds: string[]) => Promise<boolean>,
): vscode.Disposable[] {
  const agentOf = async (agentId: string): Promise<Agent> => {
    const known = store.get(agentId);
    if (known) return known;
    const { agent } = await connection.request("forkyard/agent/read", { agentId });
    return agent;
  };
  return [
    vscode.commands.registerCommand("forkyard.hunk.keep", async (agentId: string, path: string, hunkId: string) => {
      const agent = await agentOf(agentId);
      if (await apply(agent, [path], [hunkId])) await decisions.set(agent, hunkId, "kept");
    }),
    vscode.commands.registerCommand("forkyard.hunk.undo", async (agentId: string, path: string, hunkId: string) => {
      const agent = await agentOf(agentId);
      await decisions.set(agent, hunkId, "undone");
      vscode.window.setStatusBarMessage(`$(discard) Dropped a hunk of agent #${agent.number} in ${path}`, 4000);
    }),
  ];
}
