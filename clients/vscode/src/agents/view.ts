// The Agents tree: groups by state, agents, and each agent's changed files.
import * as vscode from "vscode";
import type { Agent, FileChange } from "../protocol";
import {
  agentContextValue,
  agentDescription,
  agentIcon,
  agentLabel,
  agentTooltip,
  fileContextValue,
  fileRow,
  type GroupSpec,
  groupAgents,
  groupOf,
  nothingLeft,
  overlapNotes,
} from "./model";
import type { AgentStore } from "./store";

export type AgentNode =
  | { kind: "group"; spec: GroupSpec; count: number }
  | { kind: "agent"; agent: Agent }
  | { kind: "file"; agent: Agent; change: FileChange }
  | { kind: "note"; agent: Agent; text: string; isSummary?: boolean };

export class AgentsTreeProvider implements vscode.TreeDataProvider<AgentNode>, vscode.Disposable {
  private readonly changedEmitter = new vscode.EventEmitter<AgentNode | undefined>();
  private readonly subscription: vscode.Disposable;
  readonly onDidChangeTreeData = this.changedEmitter.event;

  constructor(
    private readonly store: AgentStore,
    /** What is left of a file to review (after partial applies and undone hunks). */
    private readonly remaining?: (agent: Agent, change: FileChange) => { additions: number; deletions: number },
    reviewChanged?: vscode.Event<unknown>,
  ) {
    // Group membership and counts move with any change, so the whole tree refreshes;
    // VS Code keeps expansion by the items' ids.
    const refresh = () => this.changedEmitter.fire(undefined);
    const subscriptions = [store.onDidChange(refresh), ...(reviewChanged ? [reviewChanged(refresh)] : [])];
    this.subscription = vscode.Disposable.from(...subscriptions);
  }

  getChildren(node?: AgentNode): AgentNode[] | Promise<AgentNode[]> {
    if (!node) {
      return groupAgents(this.store.all(), this.reviewed).map(({ spec, agents }) => ({
        kind: "group",
        spec,
        count: agents.length,
      }));
    }
    if (node.kind === "group") {
      const group = groupAgents(this.store.all(), this.reviewed).find((g) => g.spec.id === node.spec.id);
      return (group?.agents ?? []).map((agent) => ({ kind: "agent", agent }));
    }
    if (node.kind === "agent") return this.files(node.agent);
    return [];
  }

  /** A done agent with nothing left to review (every hunk kept or undone): it leaves
   * "To review". Its diff of this version not there yet: fetched, and the tree redrawn
   * once it is, if that moves the agent. */
  readonly reviewed = (agent: Agent): boolean => {
    const remaining = this.remaining;
    if (agent.state !== "done" || !remaining) return false;
    const diff = this.store.knownDiff(agent);
    if (diff) return nothingLeft(diff.files, (change) => remaining(agent, change));
    this.store.diff(agent).then(
      (fetched) => {
        if (nothingLeft(fetched.files, (change) => remaining(agent, change))) this.changedEmitter.fire(undefined);
      },
      () => undefined,
    );
    return false;
  };

  private async files(agent: Agent): Promise<AgentNode[]> {
    const overlaps: AgentNode[] = overlapNotes(agent, (id) => this.store.get(id)?.number).map((text) => ({
      kind: "note",
      agent,
      text,
    }));
    return [...overlaps, ...(await this.diffFiles(agent))];
  }

  private async diffFiles(agent: Agent): Promise<AgentNode[]> {
    try {
      const diff = await this.store.diff(agent);
      if (diff.files.length === 0) {
        // An explorer's work is its summary: show it where the files would be.
        const summary = agent.summary?.trim().split("\n", 1)[0];
        return [{ kind: "note", agent, text: summary || "no changes", isSummary: Boolean(summary) }];
      }
      return diff.files.map((change) => {
        const left = agent.state === "done" && this.remaining ? this.remaining(agent, change) : undefined;
        return { kind: "file", agent, change: left ? { ...change, ...left } : change };
      });
    } catch (error) {
      return [{ kind: "note", agent, text: `diff unavailable: ${error instanceof Error ? error.message : error}` }];
    }
  }

  getParent(node: AgentNode): AgentNode | undefined {
    if (node.kind === "agent") {
      const spec = groupOf(node.agent, this.reviewed);
      return { kind: "group", spec, count: 0 };
    }
    if (node.kind === "file" || node.kind === "note") return { kind: "agent", agent: node.agent };
    return undefined;
  }

  getTreeItem(node: AgentNode): vscode.TreeItem {
    switch (node.kind) {
      case "group": {
        const item = new vscode.TreeItem(node.spec.label, vscode.TreeItemCollapsibleState.Expanded);
        item.id = `group:${node.spec.id}`;
        item.description = String(node.count || "");
        item.iconPath = new vscode.ThemeIcon(node.spec.icon);
        item.contextValue = `group group-${node.spec.id}`;
        return item;
      }
      case "agent": {
        const { agent } = node;
        const changed = (agent.changes?.files ?? 0) > 0;
        const expandable = changed || agent.state === "done";
        const item = new vscode.TreeItem(
          agentLabel(agent),
          !expandable
            ? vscode.TreeItemCollapsibleState.None
            : agent.state === "done"
              ? vscode.TreeItemCollapsibleState.Expanded
              : vscode.TreeItemCollapsibleState.Collapsed,
        );
        // The state is part of the id so that an agent reaching `done` opens its files.
        item.id = `agent:${agent.id}:${groupOf(agent, this.reviewed).id}`;
        item.description = agentDescription(agent, (id) => this.store.get(id)?.number);
        item.tooltip = new vscode.MarkdownString(agentTooltip(agent, (id) => this.store.get(id)?.number));
        const icon = agentIcon(agent);
        item.iconPath = new vscode.ThemeIcon(icon.id, icon.color ? new vscode.ThemeColor(icon.color) : undefined);
        item.contextValue = agentContextValue(agent);
        item.accessibilityInformation = { label: `agent ${agent.number}, ${agent.title}, ${agent.state}` };
        return item;
      }
      case "file": {
        const row = fileRow(node.change);
        const item = new vscode.TreeItem(row.label, vscode.TreeItemCollapsibleState.None);
        item.id = `file:${node.agent.id}:${node.agent.updatedAt}:${node.change.path}`;
        item.description = row.description;
        item.tooltip = row.tooltip;
        item.resourceUri = vscode.Uri.parse(node.change.uri);
        item.contextValue = fileContextValue(node.agent);
        item.command = {
          command: "forkyard.openAgentFile",
          title: "Open diff",
          arguments: [node],
        };
        return item;
      }
      case "note": {
        const item = new vscode.TreeItem(node.text, vscode.TreeItemCollapsibleState.None);
        item.contextValue = "note";
        if (node.isSummary && node.agent.summary) {
          item.iconPath = new vscode.ThemeIcon("note");
          item.tooltip = new vscode.MarkdownString(node.agent.summary);
          item.command = { command: "forkyard.showAgentLog", title: "Show log", arguments: [node.agent] };
        }
        return item;
      }
    }
  }

  dispose(): void {
    this.subscription.dispose();
    this.changedEmitter.dispose();
  }
}
