// What the Agents view and the status bar show, computed from the server's agents. Pure:
// the vscode-facing classes only turn these into TreeItems, so the grouping, labels and
// actions offered are unit-tested.
import type { Agent, AgentState, FileChange, NoticeNotification, Usage } from "../protocol";

export type GroupId = "running" | "queued" | "review" | "reviewed" | "attention" | "finished";

export interface GroupSpec {
  id: GroupId;
  label: string;
  icon: string;
  states: readonly AgentState[];
}

/** Ordered as a user looks at them: what is moving, what waits for a decision, the rest. */
export const GROUPS: readonly GroupSpec[] = [
  { id: "running", label: "Running", icon: "sync", states: ["starting", "running"] },
  { id: "queued", label: "Queued", icon: "clock", states: ["queued"] },
  { id: "review", label: "To review", icon: "diff", states: ["done"] },
  // Done agents whose every hunk was kept or undone: nothing left to review (the server
  // still has them done, so Apply and Discard stay on their menus).
  { id: "reviewed", label: "Reviewed", icon: "check", states: [] },
  { id: "attention", label: "Failed or interrupted", icon: "warning", states: ["failed", "interrupted"] },
  { id: "finished", label: "Finished", icon: "archive", states: ["applied", "discarded", "cancelled"] },
];

export interface AgentGroup {
  spec: GroupSpec;
  agents: Agent[];
}

/** Whether a done agent has nothing left to review. */
export type Reviewed = (agent: Agent) => boolean;

/** Non-empty groups, newest agent first inside each. */
export function groupAgents(agents: Iterable<Agent>, reviewed: Reviewed = () => false): AgentGroup[] {
  const all = [...agents].sort((a, b) => b.number - a.number);
  return GROUPS.map((spec) => ({ spec, agents: all.filter((a) => groupOf(a, reviewed).id === spec.id) })).filter(
    (group) => group.agents.length > 0,
  );
}

export function groupOf(agent: Agent, reviewed: Reviewed = () => false): GroupSpec {
  if (agent.state === "done" && reviewed(agent)) return GROUPS.find((g) => g.id === "reviewed") as GroupSpec;
  return GROUPS.find((g) => g.states.includes(agent.state)) ?? GROUPS[GROUPS.length - 1];
}

/** An agent's files with nothing left in them (every hunk kept or undone): it moves out
 * of "To review". An agent with no files (an explorer: its summary is the review) never
 * does. */
export function nothingLeft(files: readonly FileChange[], left: (change: FileChange) => { additions: number; deletions: number }): boolean {
  return (
    files.length > 0 &&
    files.every((change) => {
      const counts = left(change);
      return counts.additions + counts.deletions === 0;
    })
  );
}

export function agentLabel(agent: Agent): string {
  return `#${agent.number} ${agent.title}`;
}

export function changesText(agent: Agent): string {
  const c = agent.changes ?? {};
  const files = c.files ?? 0;
  if (files === 0) return "no changes";
  return `${files} file${files === 1 ? "" : "s"} +${c.additions ?? 0} −${c.deletions ?? 0}`;
}

/** The grey text after the label: progress while it works, the diff's size after; then
 * what its model calls used, when that is known. */
export function agentDescription(
  agent: Agent,
  numberOf: (agentId: string) => number | undefined = () => undefined,
): string {
  const usage = usageText(agent.usage);
  const overlaps = overlapsText(agent, numberOf);
  const where = placementText(agent);
  const state = stateDescription(agent) + (overlaps ? ` · ${overlaps}` : "") + (where ? ` · ${where}` : "");
  return usage ? `${state} · ${usage.short}` : state;
}

/** Where a cluster agent runs: "on NODE", "on the cluster" before a node took it; ""
 * for a local agent (most agents: nothing to say). */
export function placementText(agent: Agent): string {
  const placement = agent.placement;
  if (placement?.kind !== "cluster") return "";
  return placement.node ? `on ${placement.node}` : "on the cluster";
}

/** "overlaps #3, #5": other done agents changing the same lines (or lines next to
 * them), from `Agent.overlaps` when the server sends it. Numbers come from `numberOf`
 * (the store knows the agents); an unknown id is left out. */
export function overlapsText(agent: Agent, numberOf: (agentId: string) => number | undefined = () => undefined): string {
  const overlaps = agent.state === "done" ? (agent.overlaps ?? []) : [];
  const numbers = overlaps
    .map((o) => numberOf(o.agentId) ?? (/^\d+$/.test(o.agentId) ? Number(o.agentId) : undefined))
    .filter((n): n is number => n !== undefined)
    .sort((a, b) => a - b);
  return numbers.length ? `overlaps ${numbers.map((n) => `#${n}`).join(", ")}` : "";
}

function stateDescription(agent: Agent): string {
  switch (agent.state) {
    case "queued":
      return "queued";
    case "starting":
    case "running": {
      const p = agent.progress;
      if (!p) return agent.state;
      return p.percentage != null ? `${p.percentage}% ${p.message}` : p.message;
    }
    case "done":
      return changesText(agent);
    case "failed":
      return agent.error ? `failed: ${firstLine(agent.error)}` : "failed";
    case "interrupted":
      return "interrupted: the server stopped while it ran";
    default:
      return agent.state;
  }
}

export interface IconSpec {
  id: string;
  color?: string;
}

const ICONS: Record<AgentState, IconSpec> = {
  queued: { id: "clock" },
  starting: { id: "loading~spin" },
  running: { id: "sync~spin", color: "charts.blue" },
  done: { id: "git-pull-request", color: "charts.green" },
  applied: { id: "pass-filled", color: "charts.green" },
  discarded: { id: "trash" },
  failed: { id: "error", color: "errorForeground" },
  cancelled: { id: "circle-slash" },
  interrupted: { id: "debug-pause", color: "charts.yellow" },
};

export function agentIcon(agent: Agent): IconSpec {
  return ICONS[agent.state];
}

export type AgentAction = "apply" | "discard" | "cancel" | "diff" | "followUp" | "log" | "retry";

/** What may be done to an agent in its state; the tree's menus are keyed on these. */
export function agentActions(agent: Agent): AgentAction[] {
  const actions: AgentAction[] = ["log"];
  const changed = (agent.changes?.files ?? 0) > 0;
  switch (agent.state) {
    case "queued":
    case "starting":
    case "running":
      actions.push("cancel", "followUp");
      if (changed) actions.push("diff");
      break;
    case "done":
      actions.push("diff", "followUp", "discard");
      if (changed) actions.push("apply");
      break;
    case "failed":
    case "cancelled":
    case "interrupted":
      actions.push("retry", "followUp", "discard");
      if (changed) actions.push("diff", "apply");
      break;
    case "applied":
      actions.push("diff", "followUp", "discard");
      break;
    case "discarded":
      break;
  }
  return actions;
}

/** `contextValue` of an agent's tree item: `when` clauses match words in it with
 * `viewItem =~ /\bapply\b/`. */
export function agentContextValue(agent: Agent): string {
  return ["agent", `state-${agent.state}`, ...agentActions(agent)].join(" ");
}

export function fileContextValue(agent: Agent): string {
  return ["agentFile", ...agentActions(agent).filter((a) => a === "apply")].join(" ");
}

export interface FileRow {
  label: string;
  description: string;
  tooltip: string;
}

export function fileRow(change: FileChange): FileRow {
  const slash = change.path.lastIndexOf("/");
  const name = change.path.slice(slash + 1);
  const directory = slash >= 0 ? change.path.slice(0, slash) : "";
  const counts = change.binary ? "binary" : `+${change.additions ?? 0} −${change.deletions ?? 0}`;
  const status = change.status === "modified" ? "" : ` ${change.status}`;
  const renamed = change.oldPath ? ` (from ${change.oldPath})` : "";
  return {
    label: name,
    description: [directory, counts + status].filter(Boolean).join(" · "),
    tooltip: `${change.path}${renamed}: ${change.status}, ${counts}`,
  };
}

export interface StatusText {
  text: string;
  tooltip: string;
}

/** The status bar item: how many agents run and how many wait for review. */
export function statusBarText(agents: Iterable<Agent>): StatusText {
  let running = 0;
  let queued = 0;
  let review = 0;
  for (const agent of agents) {
    if (agent.state === "running" || agent.state === "starting") running += 1;
    else if (agent.state === "queued") queued += 1;
    else if (agent.state === "done") review += 1;
  }
  const parts = [`$(${running > 0 ? "sync~spin" : "rocket"}) ${running}`];
  if (queued > 0) parts.push(`$(clock) ${queued}`);
  parts.push(`$(git-pull-request) ${review}`);
  const tooltip =
    `Forkyard: ${running} running, ${queued} queued, ${review} to review. ` + "Click to show the agents.";
  return { text: parts.join(" "), tooltip };
}

/** One line per overlapping agent, "overlaps #2 (src/app.py)", shown as rows under a
 * done agent: in the row's description it is cut off behind a long title. */
export function overlapNotes(agent: Agent, numberOf: (agentId: string) => number | undefined = () => undefined): string[] {
  return (agent.state === "done" ? (agent.overlaps ?? []) : []).map((overlap) => {
    const number = numberOf(overlap.agentId);
    const name = number === undefined ? overlap.agentId : `#${number}`;
    return `overlaps ${name} (${(overlap.paths ?? []).join(", ")})`;
  });
}

export function agentTooltip(agent: Agent, numberOf: (agentId: string) => number | undefined = () => undefined): string {
  const lines = [
    `**#${agent.number} ${escapeMarkdown(agent.title)}** — ${agent.state}`,
    "",
    `Task: ${escapeMarkdown(agent.task)}`,
    `Role: ${agent.role} · backend: ${agent.backend}`,
  ];
  const where = placementText(agent);
  if (where) lines.push(`Runs ${escapeMarkdown(where)}`);
  if (agent.branch) lines.push(`Branch: \`${agent.branch}\``);
  if (agent.state === "done" || agent.state === "applied") lines.push(`Changes: ${changesText(agent)}`);
  const usage = usageText(agent.usage);
  if (usage) lines.push(usage.long);
  for (const overlap of agent.state === "done" ? (agent.overlaps ?? []) : []) {
    const number = numberOf(overlap.agentId);
    const name = number === undefined ? `agent ${escapeMarkdown(overlap.agentId)}` : `#${number}`;
    lines.push(`Overlaps ${name} in ${escapeMarkdown((overlap.paths ?? []).join(", "))}`);
  }
  if (agent.summary) lines.push("", escapeMarkdown(agent.summary));
  if (agent.error) lines.push("", `Error: ${escapeMarkdown(agent.error)}`);
  return lines.join("  \n");
}

export interface UsageText {
  /** For the description: "1.2k tok · $0.003", or "1.2k tok" when the price is unknown. */
  short: string;
  /** For the tooltip: "tokens: 1,234 in (100 cached) / 56 out; cost $0.0031". */
  long: string;
}

/** What an agent's model calls used, as the Agents view shows it; undefined when nothing
 * is known (no usage, or only zeros: an agent that calls no model), so such agents keep
 * their old, shorter text. A null `costUsd` is an unknown price, shown as such, not as
 * free. */
export function usageText(usage: Usage | null | undefined): UsageText | undefined {
  if (!usage) return undefined;
  const input = usage.inputTokens ?? 0;
  const output = usage.outputTokens ?? 0;
  const cached = usage.cachedTokens ?? 0;
  const cost = usage.costUsd ?? null;
  if (input === 0 && output === 0 && cached === 0 && !cost) return undefined;
  const tokens = `${compactCount(input + output)} tok`;
  const cachedText = cached > 0 ? ` (${groupedCount(cached)} cached)` : "";
  const tokensLong = `tokens: ${groupedCount(input)} in${cachedText} / ${groupedCount(output)} out`;
  if (cost === null) return { short: tokens, long: `${tokensLong}; cost unknown` };
  return { short: `${tokens} · ${dollars(cost, 1)}`, long: `${tokensLong}; cost ${dollars(cost, 2)}` };
}

/** 999, 1.2k, 12k, 1.2M: a count that fits a line. */
export function compactCount(n: number): string {
  if (n < 1000) return String(n);
  for (const [divisor, suffix] of [
    [1e3, "k"],
    [1e6, "M"],
  ] as const) {
    const value = n / divisor;
    if (value < 9.95) return `${value.toFixed(1).replace(/\.0$/, "")}${suffix}`;
    if (value < 999.5) return `${Math.round(value)}${suffix}`;
  }
  return `${Math.round(n / 1e9)}G`;
}

function groupedCount(n: number): string {
  return String(n).replace(/\B(?=(\d{3})+(?!\d))/g, ",");
}

/** $1.23 from a dollar up; below it `digits` significant digits ($0.003, $0.0031). */
function dollars(cost: number, digits: number): string {
  if (cost === 0) return "$0";
  if (cost < 0.0001) return "<$0.0001";
  if (cost >= 1) return `$${cost.toFixed(2)}`;
  return `$${String(Number(cost.toPrecision(digits)))}`;
}

function firstLine(text: string): string {
  const line = text.split("\n", 1)[0];
  return line.length > 80 ? `${line.slice(0, 79)}…` : line;
}

function escapeMarkdown(text: string): string {
  return text.replace(/[\\`*_{}[\]<>()#+!|]/g, "\\$&");
}

/** What a `forkyard/notice` may offer, by the names the protocol gives them. */
export type NoticeAction = NonNullable<NoticeNotification["actions"]>[number];
/** The actions this extension carries out itself (the Agents view's own). */
export const DONE_ACTIONS: readonly NoticeAction[] = ["Show diff", "Apply", "Discard"];

export interface DoneNotice {
  agentId: string;
  actions: NoticeAction[];
}

/** The agent and buttons of a notice that an agent is done, known by its `kind` and
 * `agentId` (never by its text); undefined for any other notice, which is shown as it is.
 * Actions this extension does not know (a newer server's) are not offered. */
export function doneNotice(notice: NoticeNotification): DoneNotice | undefined {
  if (notice.kind !== "agentDone" || typeof notice.agentId !== "string") return undefined;
  const actions = (notice.actions ?? []).filter((action) => DONE_ACTIONS.includes(action));
  return { agentId: notice.agentId, actions };
}
