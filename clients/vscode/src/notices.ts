// `window/showMessageRequest` from the server. Approvals and anything else are shown as
// vscode-languageclient would. The notice of an agent that is done ("Show diff", "Apply",
// "Discard") is answered at once and shown by the extension instead, so that its buttons
// do what the Agents view does: the diff in VS Code's diff editor rather than a patch file,
// and an apply that saves the files it changed.
import * as vscode from "vscode";
import { type LanguageClient, MessageType, ShowMessageRequest } from "vscode-languageclient/node";
import { DONE_ACTIONS, type DoneAction, doneNoticeAgent } from "./agents/model";

/** Replaces the client's own handler: call it after `client.start()`. */
export function handleMessageRequests(
  client: LanguageClient,
  onDone: (agentNumber: string, action: DoneAction) => Promise<void>,
): vscode.Disposable {
  return client.onRequest(ShowMessageRequest.type, async (params) => {
    const titles = (params.actions ?? []).map((action) => action.title);
    const agent = doneNoticeAgent(params.message, titles);
    if (agent !== undefined) {
      void vscode.window.showInformationMessage(params.message, ...DONE_ACTIONS).then((choice) => {
        if (choice) return onDone(agent, choice);
        return undefined;
      });
      return null;
    }
    const show =
      params.type === MessageType.Error
        ? vscode.window.showErrorMessage
        : params.type === MessageType.Warning
          ? vscode.window.showWarningMessage
          : vscode.window.showInformationMessage;
    const choice = await show(params.message, ...titles);
    return (params.actions ?? []).find((action) => action.title === choice) ?? null;
  });
}
