// Per-hunk decisions on a done agent's change, as a person makes them in the diff or in
// the file: Keep (the hunk is applied to their file) or Undo (the hunk is dropped from the
// agent's proposal: not shown, not applied later). Pure, so the agent's text without the
// undone hunks, the counts that follow partial applies and which hunks are still open
// are unit-tested.
import type { Agent, FileChange, Hunk } from "../protocol";

export type Decision = "kept" | "undone";

/** agentId -> hunkId -> decision. Hunk ids name a hunk's content, so a follow-up that
 * changes a hunk makes a new id, decided afresh (the agent's `updatedAt` moves for other
 * reasons too: overlaps, a partial apply). */
export interface DecisionTable {
  [agentId: string]: { updatedAt: string; hunks: Record<string, Decision> };
}

export function decisionOf(table: DecisionTable, agent: Agent, hunkId: string): Decision | undefined {
  const entry = table[agent.id];
  return entry?.hunks[hunkId];
}

export function decide(table: DecisionTable, agent: Agent, hunkId: string, decision: Decision): DecisionTable {
  const entry = table[agent.id];
  const hunks = { ...(entry?.hunks ?? {}) };
  hunks[hunkId] = decision;
  return { ...table, [agent.id]: { updatedAt: agent.updatedAt, hunks } };
}

/** The hunks nobody decided yet: those the diff and the file offer Keep / Undo on. */
export function openHunks(table: DecisionTable, agent: Agent, change: FileChange): Hunk[] {
  return (change.hunks ?? []).filter((h) => decisionOf(table, agent, h.id) === undefined);
}

/** The agent's file with its undone hunks put back to the base lines: what the diff's
 * agent side shows, so that an undone hunk is no longer a difference there. `newStart`
 * counts lines of the agent's text from 1 (0 for an insertion at the top). */
export function withoutUndone(agentText: string, change: FileChange, undone: (hunkId: string) => boolean): string {
  const hunks = (change.hunks ?? []).filter((h) => undone(h.id));
  if (hunks.length === 0) return agentText;
  const lines = agentText.split("\n");
  // From the bottom up, so that earlier hunks' positions stay right.
  for (const hunk of [...hunks].sort((a, b) => b.newStart - a.newStart)) {
    const removed = hunk.text
      .split("\n")
      .filter((line) => line.startsWith("-"))
      .map((line) => line.slice(1));
    const start = hunk.newLines === 0 ? hunk.newStart : hunk.newStart - 1;
    lines.splice(start, hunk.newLines, ...removed);
  }
  return lines.join("\n");
}

export interface Counts {
  additions: number;
  deletions: number;
}

export function hunkCounts(hunk: Hunk): Counts {
  let additions = 0;
  let deletions = 0;
  for (const line of hunk.text.split("\n")) {
    if (line.startsWith("+")) additions += 1;
    else if (line.startsWith("-")) deletions += 1;
  }
  return { additions, deletions };
}

/** What is left to review of one file: its counts less the hunks kept or undone. */
export function remainingCounts(table: DecisionTable, agent: Agent, change: FileChange): Counts {
  if (!change.hunks?.length) return { additions: change.additions ?? 0, deletions: change.deletions ?? 0 };
  return openHunks(table, agent, change).reduce(
    (sum, hunk) => {
      const c = hunkCounts(hunk);
      return { additions: sum.additions + c.additions, deletions: sum.deletions + c.deletions };
    },
    { additions: 0, deletions: 0 },
  );
}

/** The hunks an "Apply" of the whole agent (or of some files) sends: all but the undone
 * ones; undefined when none was undone (the server then applies everything, and marks
 * the agent applied). */
export function hunksToApply(
  table: DecisionTable,
  agent: Agent,
  files: FileChange[],
  paths?: string[],
): string[] | undefined {
  const entry = table[agent.id];
  if (!entry) return undefined;
  const chosen = files.filter((f) => !paths || paths.includes(f.path));
  const all = chosen.flatMap((f) => (f.hunks ?? []).map((h) => h.id));
  const left = all.filter((id) => entry.hunks[id] !== "undone");
  return left.length === all.length ? undefined : left;
}
