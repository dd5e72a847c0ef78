// How VS Code settings become the server's settings. Pure: no `vscode` import, so the
// mapping is unit-tested.
//
// Only the settings the user actually set are sent. VS Code would otherwise send every
// default, and those would override the repository's `.forkyard.toml` and the user's
// `~/.config/forkyard/config.toml`, which come earlier in the server's layering.

/** The part of `vscode.WorkspaceConfiguration.inspect()` we read. */
export interface Inspection {
  globalValue?: unknown;
  workspaceValue?: unknown;
  workspaceFolderValue?: unknown;
}

/** `forkyard.<key>` in VS Code -> the server's camelCase key (PROTOCOL.md, Configuration). */
export const SERVER_SETTINGS: readonly string[] = [
  "maxParallelAgents",
  "stateDir",
  "models",
  "agentModel",
  "roles",
  "agent",
  "commandTimeoutSeconds",
  "allowUnsandboxedCommands",
  "maxLogEntriesPerAgent",
];

/** VS Code settings whose server key has another name: `forkyard.hunkDiagnostics` is the
 * server's `diagnosticSeverity` (the server draws the hunks' diagnostics at it). */
export const RENAMED_SETTINGS: Readonly<Record<string, string>> = {
  hunkDiagnostics: "diagnosticSeverity",
};

/** Settings that reach the network, name secrets or weaken the sandbox: a workspace's
 * `.vscode/settings.json` comes with a cloned repository, so only the user's own (global)
 * value of these is sent, as the server takes them from `.forkyard.toml` only for a
 * repository the user trusted. */
export const USER_ONLY_SETTINGS: ReadonlySet<string> = new Set([
  "stateDir",
  "models",
  "agentModel",
  "roles",
  "allowUnsandboxedCommands",
]);

/** Settings only the extension reads; never sent to the server. */
export const CLIENT_ONLY_SETTINGS: readonly string[] = ["server.command", "saveAfterApply", "agentProgress"];

function userValue(inspection: Inspection | undefined, userOnly: boolean): unknown {
  if (!inspection) return undefined;
  const scopes = userOnly
    ? [inspection.globalValue]
    : [inspection.workspaceFolderValue, inspection.workspaceValue, inspection.globalValue];
  for (const value of scopes) {
    if (value !== undefined && value !== null && value !== "") return value;
  }
  return undefined;
}

/** The settings to send as `initializationOptions` and in `didChangeConfiguration`. */
export function serverSettings(inspect: (key: string) => Inspection | undefined): Record<string, unknown> {
  const settings: Record<string, unknown> = {};
  for (const key of SERVER_SETTINGS) {
    const value = userValue(inspect(key), USER_ONLY_SETTINGS.has(key));
    if (value !== undefined) settings[key] = value;
  }
  for (const [key, serverKey] of Object.entries(RENAMED_SETTINGS)) {
    const value = userValue(inspect(key), USER_ONLY_SETTINGS.has(key));
    if (value !== undefined) settings[serverKey] = value;
  }
  return settings;
}

/** Keys in a `models` table that look like a secret: the server takes keys from the
 * environment only, so such a value would be ignored and would sit in settings.json. */
export function secretLikeModelKeys(models: unknown): string[] {
  if (!models || typeof models !== "object") return [];
  const found: string[] = [];
  for (const [name, model] of Object.entries(models as Record<string, unknown>)) {
    if (!model || typeof model !== "object") continue;
    for (const key of Object.keys(model as Record<string, unknown>)) {
      if (/^(api_?key|apiKey|key|token|secret)$/i.test(key)) found.push(`${name}.${key}`);
    }
  }
  return found;
}
