// What the extension says about repository trust. Pure: no `vscode` import, so it is
// unit-tested.
import type { StatusResult, TrustResult } from "./protocol";

export interface TrustState {
  trusted: boolean;
  ignoredKeys: string[];
}

export interface TrustText {
  text: string;
  tooltip: string;
}

/** What the status bar adds: nothing while nothing is ignored (trusted, or a repository
 * whose file needs no trust). */
export function trustStatusText(state: TrustState | undefined): TrustText | undefined {
  if (!state || state.trusted || state.ignoredKeys.length === 0) return undefined;
  const count = state.ignoredKeys.length;
  return {
    text: "$(shield) untrusted",
    tooltip:
      `This repository's .forkyard.toml is not trusted: ${count} setting(s) ignored ` +
      `(${state.ignoredKeys.join(", ")}). Run "Forkyard: Trust This Repository" to apply them.`,
  };
}

export function trustStateOf(result: Pick<StatusResult, "trusted" | "ignoredKeys"> | TrustResult): TrustState {
  return { trusted: result.trusted ?? false, ignoredKeys: result.ignoredKeys ?? [] };
}
