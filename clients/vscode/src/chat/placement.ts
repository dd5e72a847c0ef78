// The chat in the secondary side bar by default, next to the code rather than on top of
// the Agents view. code-server 4.100 (VS Code 1.100) has no contribution point for it:
// `viewsContainers` takes only `activitybar` and `panel`. So on the first run the chat view
// is moved once into the secondary side bar's own Chat container (`vscode.moveViews`, the
// command behind dragging a view), which then opens there; the extension remembers it did, so a person who moves
// it back keeps it where they put it. No `vscode` import: unit-tested.

/** The globalState key that says the chat was placed once already. */
export const CHAT_PLACED_KEY = "forkyard.chatPlacedInSecondarySideBar";
export const CHAT_VIEW_ID = "forkyard.chat";
/** The secondary side bar's built-in view container (VS Code's chat container). */
export const SECONDARY_SIDE_BAR_CONTAINER = "workbench.panel.chat";

export interface Memento {
  get<T>(key: string): T | undefined;
  update(key: string, value: unknown): Thenable<void>;
}

/** Moves the chat once; true when it did so now. */
export async function placeChatOnce(
  state: Memento,
  execute: (command: string, ...args: unknown[]) => Thenable<unknown>,
): Promise<boolean> {
  if (state.get<boolean>(CHAT_PLACED_KEY)) return false;
  try {
    await execute("vscode.moveViews", { viewIds: [CHAT_VIEW_ID], destinationId: SECONDARY_SIDE_BAR_CONTAINER });
  } catch {
    return false; // an editor without the command: the chat stays in the Forkyard container
  }
  // Moving opens the secondary side bar with the chat focused: close it again, so that
  // starting changes nothing on screen nor takes the keyboard from the person; the chat
  // opens there when they show it.
  await Promise.resolve(execute("workbench.action.closeAuxiliaryBar")).catch(() => undefined);
  await state.update(CHAT_PLACED_KEY, true);
  return true;
}
