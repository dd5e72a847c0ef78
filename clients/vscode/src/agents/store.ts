// The agents the server knows, kept current from `forkyard/agent/list` and
// `forkyard/agent/changed`; the tree, the status bar and the diff documents listen to it.
import * as vscode from "vscode";
import type { ForkyardConnection } from "../connection";
import type { Agent, AgentDiffResult } from "../protocol";

export class AgentStore implements vscode.Disposable {
  private readonly agents = new Map<string, Agent>();
  private readonly diffs = new Map<string, { updatedAt: string; diff: Promise<AgentDiffResult> }>();
  private readonly resolved = new Map<string, { updatedAt: string; diff: AgentDiffResult }>();
  private readonly changedEmitter = new vscode.EventEmitter<Agent | undefined>();
  private readonly disposables: vscode.Disposable[] = [];
  /** An agent changed (undefined: the whole list was reloaded). */
  readonly onDidChange = this.changedEmitter.event;

  constructor(private readonly connection: ForkyardConnection) {
    this.disposables.push(
      connection.onNotification("forkyard/agent/changed", ({ agent }) => this.update(agent)),
      connection.onReady(() => void this.reload()),
    );
  }

  all(): Agent[] {
    return [...this.agents.values()];
  }

  get(idOrNumber: string): Agent | undefined {
    return this.agents.get(idOrNumber) ?? this.all().find((a) => String(a.number) === idOrNumber.replace(/^#/, ""));
  }

  async reload(): Promise<void> {
    try {
      const { agents } = await this.connection.request("forkyard/agent/list", {});
      // A `forkyard/agent/changed` that arrived while the list was on its way is newer.
      const known = new Map(this.agents);
      this.agents.clear();
      this.diffs.clear();
      this.resolved.clear();
      for (const agent of agents) {
        const seen = known.get(agent.id);
        this.agents.set(agent.id, seen && seen.updatedAt > agent.updatedAt ? seen : agent);
      }
      this.changedEmitter.fire(undefined);
    } catch {
      // The server is not running; the connection has told the user why.
    }
  }

  update(agent: Agent): void {
    this.agents.set(agent.id, agent);
    this.changedEmitter.fire(agent);
  }

  /** The agent's diff, fetched once per version of the agent. */
  diff(agent: Agent): Promise<AgentDiffResult> {
    const cached = this.diffs.get(agent.id);
    if (cached && cached.updatedAt === agent.updatedAt) return cached.diff;
    const diff = this.connection.request("forkyard/agent/diff", { agentId: agent.id });
    this.diffs.set(agent.id, { updatedAt: agent.updatedAt, diff });
    diff.then(
      (result) => this.resolved.set(agent.id, { updatedAt: agent.updatedAt, diff: result }),
      () => this.diffs.delete(agent.id),
    );
    return diff;
  }

  /** The agent's diff of its current version when it has arrived already, else undefined. */
  knownDiff(agent: Agent): AgentDiffResult | undefined {
    const known = this.resolved.get(agent.id);
    return known && known.updatedAt === agent.updatedAt ? known.diff : undefined;
  }

  dispose(): void {
    this.disposables.forEach((d) => d.dispose());
    this.changedEmitter.dispose();
  }
}
