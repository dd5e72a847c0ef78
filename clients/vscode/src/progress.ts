// The server's work-done progress (one token per running agent) in VS Code's progress UI.
// vscode-languageclient shows every server-created progress in the status bar, where a
// cancellable one has no Cancel button; agents are cancellable, so they get a
// notification with Cancel, which sends `window/workDoneProgress/cancel`.
import * as vscode from "vscode";
import {
  type LanguageClient,
  type ProgressToken,
  WorkDoneProgress,
  WorkDoneProgressCancelNotification,
  WorkDoneProgressCreateRequest,
} from "vscode-languageclient/node";

export type ProgressPlacement = "notification" | "statusBar";

/** Replaces the client's own `window/workDoneProgress/create` handler: call it after
 * `client.start()`, which registers that one. */
export function showServerProgress(client: LanguageClient, placement: () => ProgressPlacement): vscode.Disposable {
  return client.onRequest(WorkDoneProgressCreateRequest.type, ({ token }) => {
    track(client, token, placement());
  });
}

function track(client: LanguageClient, token: ProgressToken, placement: ProgressPlacement): void {
  let report: vscode.Progress<{ message?: string; increment?: number }> | undefined;
  let finish: (() => void) | undefined;
  let done = false;
  let percentage = 0;
  const subscription = client.onProgress(WorkDoneProgress.type, token, (value) => {
    if (value.kind === "begin") {
      const cancellable = Boolean(value.cancellable);
      const location =
        cancellable && placement === "notification" ? vscode.ProgressLocation.Notification : vscode.ProgressLocation.Window;
      void vscode.window.withProgress({ location, title: value.title, cancellable }, (progress, cancel) => {
        report = progress;
        cancel.onCancellationRequested(() => {
          void client.sendNotification(WorkDoneProgressCancelNotification.type, { token });
        });
        if (value.message) progress.report({ message: value.message });
        return new Promise<void>((resolve) => {
          finish = resolve;
          if (done) resolve();
        });
      });
    } else if (value.kind === "report") {
      const increment = value.percentage != null ? Math.max(0, value.percentage - percentage) : undefined;
      if (value.percentage != null) percentage = value.percentage;
      report?.report({ message: value.message, increment });
    } else {
      done = true;
      finish?.();
      subscription.dispose();
    }
  });
}
