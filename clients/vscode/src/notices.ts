// Agents' notices from the server (`forkyard/notice`, which the extension opts into with
// `structuredNotices`), calm: one toast when an agent finishes, one for several that
// finish together; none for what the person just did (a cancel: the tree shows it); a
// failed agent's toast says its error and last log lines, with Retry and Show log. A done
// agent's buttons ("Show diff", "Apply", "Discard") do what the Agents view does.
import * as vscode from "vscode";
import { type NoticeAction, doneNotice } from "./agents/model";
import type { NoticeNotification } from "./protocol";
import { failedText, groupedDoneText } from "./noticeText";

export type DoneHandler = (agentId: string, action: NoticeAction) => Promise<void>;

/** How long done notices wait for others to group with. */
export const GROUP_MS = 1500;

export interface NoticeHooks {
  onDone: DoneHandler;
  /** "Retry" or "Show log" on a failed agent's toast. */
  onFailed: (agentId: string, action: "Retry" | "Show log") => Promise<void>;
  /** The agent's last log lines, for a failed agent's toast. */
  lastLines: (agentId: string) => Promise<string[]>;
  /** "Show agents" on a grouped toast. */
  showAgents: () => Promise<void>;
}

export class NoticeCenter implements vscode.Disposable {
  private pending: NoticeNotification[] = [];
  private timer: ReturnType<typeof setTimeout> | undefined;
  /** Toasts shown, by kind: what the notification figures of the issue count. */
  readonly shown: string[] = [];

  constructor(private readonly hooks: NoticeHooks) {}

  show(notice: NoticeNotification): void {
    if (notice.kind === "agentCancelled") {
      // The person cancelled it (here or in another window): the tree says so.
      vscode.window.setStatusBarMessage(`$(circle-slash) ${notice.message}`, 4000);
      return;
    }
    if (notice.kind === "agentDone") {
      this.pending.push(notice);
      clearTimeout(this.timer);
      this.timer = setTimeout(() => this.flushDone(), GROUP_MS);
      return;
    }
    if (notice.kind === "agentFailed" && notice.agentId) {
      void this.showFailed(notice, notice.agentId);
      return;
    }
    this.shown.push(notice.kind ?? "other");
    showAt(notice.level, notice.message);
  }

  private flushDone(): void {
    const done = this.pending;
    this.pending = [];
    if (done.length === 1) {
      const notice = done[0];
      const parsed = doneNotice(notice);
      const actions = parsed?.actions ?? [];
      this.shown.push("agentDone");
      void vscode.window.showInformationMessage(notice.message, ...actions).then((choice) => {
        const action = actions.find((a) => a === choice);
        if (parsed && action) return this.hooks.onDone(parsed.agentId, action);
        return undefined;
      });
    } else if (done.length > 1) {
      const numbers = done.map((n) => n.agent?.number).filter((n): n is number => typeof n === "number");
      this.shown.push("agentsDone");
      void vscode.window.showInformationMessage(groupedDoneText(numbers), "Show agents").then((choice) => {
        if (choice === "Show agents") return this.hooks.showAgents();
        return undefined;
      });
    }
  }

  private async showFailed(notice: NoticeNotification, agentId: string): Promise<void> {
    const lines = await this.hooks.lastLines(agentId).catch(() => []);
    this.shown.push("agentFailed");
    const choice = await vscode.window.showErrorMessage(failedText(notice, lines), "Retry", "Show log");
    if (choice === "Retry" || choice === "Show log") await this.hooks.onFailed(agentId, choice);
  }

  dispose(): void {
    clearTimeout(this.timer);
  }
}

function showAt(level: NoticeNotification["level"], message: string): void {
  const show =
    level === "error"
      ? vscode.window.showErrorMessage
      : level === "warning"
        ? vscode.window.showWarningMessage
        : vscode.window.showInformationMessage;
  void show(message);
}
