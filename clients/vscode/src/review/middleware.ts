// What the extension does to the server's review data on its way to VS Code (the server
// draws hunk diagnostics at `forkyard.hunkDiagnostics`, sent as its diagnosticSeverity):
// undone hunks' diagnostics and lenses dropped, an Undo lens beside each "Apply hunk" lens; and which hunks each file still has, for the tree's
// counts and for "Apply agent #N to this file" in the editor's menus.
import * as vscode from "vscode";
import type { Middleware } from "vscode-languageclient/node";
import type { AgentStore } from "../agents/store";
import type { Agent, FileChange } from "../protocol";
import { hunkData, type HunkDecisions } from "./controls";
import { type Counts, hunkCounts, openHunks } from "./decisions";

export class LiveHunks implements vscode.Disposable {
  /** uri -> agentId -> the hunk ids the server still draws there (they apply). */
  private readonly byUri = new Map<string, Map<string, Set<string>>>();
  private readonly emitter = new vscode.EventEmitter<string>();
  readonly onDidChange = this.emitter.event;

  constructor(
    private readonly store: AgentStore,
    private readonly decisions: HunkDecisions,
  ) {}

  agentsIn(uri: string): string[] {
    return [...(this.byUri.get(uri)?.keys() ?? [])];
  }

  /** What is left to review of one file: undecided hunks the server still draws (all
   * undecided ones before its diagnostics arrived). */
  remaining(agent: Agent, change: FileChange): Counts {
    const live = this.byUri.get(change.uri);
    const known = live !== undefined;
    const hunks = openHunks(this.decisions.current, agent, change).filter(
      (h) => !known || live.get(agent.id)?.has(h.id),
    );
    if (!change.hunks?.length) return { additions: change.additions ?? 0, deletions: change.deletions ?? 0 };
    return hunks.reduce(
      (sum, h) => {
        const c = hunkCounts(h);
        return { additions: sum.additions + c.additions, deletions: sum.deletions + c.deletions };
      },
      { additions: 0, deletions: 0 },
    );
  }

  middleware(): Middleware {
    return {
      handleDiagnostics: (uri, diagnostics, next) => {
        const live = new Map<string, Set<string>>();
        const shown = diagnostics.filter((d) => {
          if (d.source !== "forkyard") return true;
          const data = hunkData((d as { data?: unknown }).data);
          if (!data) return true;
          const agent = this.store.get(data.agentId);
          if (agent && this.decisions.of(agent, data.hunkId) === "undone") return false;
          let set = live.get(data.agentId);
          if (!set) live.set(data.agentId, (set = new Set()));
          set.add(data.hunkId);
          return true;
        });
        // Kept even when empty: the server draws nothing there any more (every hunk
        // applied), which is not the same as not knowing.
        this.byUri.set(uri.toString(), live);
        this.emitter.fire(uri.toString());
        next(uri, shown);
      },
      provideCodeLenses: async (document, token, next) => {
        const lenses = (await next(document, token)) ?? [];
        const out: vscode.CodeLens[] = [];
        for (const lens of lenses) {
          const data = hunkData((lens as { data?: unknown }).data);
          const agent = data ? this.store.get(data.agentId) : undefined;
          if (data && agent && this.decisions.of(agent, data.hunkId) !== undefined) continue;
          out.push(lens);
          if (data && data.kind === "apply") {
            out.push(
              new vscode.CodeLens(lens.range, {
                title: "$(discard) Undo",
                tooltip: "Drop this hunk of the agent's change: it will not be applied",
                command: "forkyard.hunk.undo",
                arguments: [data.agentId, data.path, data.hunkId],
              }),
            );
          }
        }
        return out;
      },
    };
  }

  dispose(): void {
    this.emitter.dispose();
  }
}
