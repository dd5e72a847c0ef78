// Finding the `forkyard serve` command to start. Pure apart from the injected file test,
// so that the error a user sees when Forkyard is missing is unit-tested.
import * as path from "node:path";

export type ResolvedCommand =
  | { ok: true; command: string; args: string[] }
  | { ok: false; message: string };

export const DEFAULT_SERVER_COMMAND = ["forkyard", "serve"];

/** `uv tool install` and `pip install --user` put programs here; VS Code started from a
 * desktop menu often has a PATH without it. */
function extraDirectories(home: string | undefined): string[] {
  return home ? [path.join(home, ".local", "bin")] : [];
}

export function resolveServerCommand(
  setting: unknown,
  env: { PATH?: string; HOME?: string },
  isExecutable: (file: string) => boolean,
): ResolvedCommand {
  const argv =
    Array.isArray(setting) && setting.length > 0 ? setting : setting === undefined ? DEFAULT_SERVER_COMMAND : null;
  if (!argv || !argv.every((part) => typeof part === "string") || argv[0] === "") {
    return {
      ok: false,
      message:
        'The setting forkyard.server.command must be a list of strings, like ["forkyard", "serve"].',
    };
  }
  const [program, ...args] = argv as string[];
  const expanded = program.startsWith("~/") && env.HOME ? path.join(env.HOME, program.slice(2)) : program;
  if (expanded.includes("/") || expanded.includes("\\")) {
    if (isExecutable(expanded)) return { ok: true, command: expanded, args };
    return {
      ok: false,
      message: `Forkyard's language server ${expanded} does not exist or is not executable (setting forkyard.server.command).`,
    };
  }
  const directories = [...(env.PATH ?? "").split(path.delimiter), ...extraDirectories(env.HOME)];
  for (const directory of directories) {
    if (!directory) continue;
    const candidate = path.join(directory, expanded);
    if (isExecutable(candidate)) return { ok: true, command: candidate, args };
  }
  return {
    ok: false,
    message:
      `Forkyard's language server \`${expanded}\` was not found on PATH. Install it ` +
      "(`uv tool install /path/to/forkyard`), or set forkyard.server.command to its full " +
      'command, e.g. ["uv", "run", "--project", "/path/to/forkyard", "forkyard", "serve"].',
  };
}
