// Agents' notices from the server (`forkyard/notice`, which the extension opts into with
// `structuredNotices`): one VS Code notification each, at its level. A done agent's is
// known by its kind and agent id, and its buttons ("Show diff", "Apply", "Discard") do
// what the Agents view does: the diff in VS Code's diff editor rather than a patch file,
// and an apply that saves the files it changed. Approvals stay message requests, shown
// as vscode-languageclient does.
import * as vscode from "vscode";
import { type NoticeAction, doneNotice } from "./agents/model";
import type { NoticeNotification } from "./protocol";

export type DoneHandler = (agentId: string, action: NoticeAction) => Promise<void>;

/** Show `notice`; a done agent's chosen action goes to `onDone`. */
export function showNotice(notice: NoticeNotification, onDone: DoneHandler): void {
  const show =
    notice.level === "error"
      ? vscode.window.showErrorMessage
      : notice.level === "warning"
        ? vscode.window.showWarningMessage
        : vscode.window.showInformationMessage;
  const done = doneNotice(notice);
  const actions = done?.actions ?? [];
  void show(notice.message, ...actions).then((choice) => {
    const action = actions.find((a) => a === choice);
    if (done && action) return onDone(done.agentId, action);
    return undefined;
  });
}
