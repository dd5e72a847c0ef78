// Finding the `forkyard serve` command to start. Pure apart from the injected file test,
// so that where Forkyard is looked for, and the error a user sees when it is missing,
// are unit-tested.
import * as path from "node:path";

export type ResolvedCommand =
  | { ok: true; command: string; args: string[]; foundIn?: string }
  | { ok: false; message: string; missing: boolean };

export const DEFAULT_SERVER_COMMAND = ["forkyard", "serve"];

/** What a new user copies to install the server (the README says the same). */
export const INSTALL_COMMAND = "uv tool install /path/to/forkyard";

export interface SearchEnv {
  PATH?: string;
  HOME?: string;
  XDG_BIN_HOME?: string;
  UV_TOOL_BIN_DIR?: string;
  UV_TOOL_DIR?: string;
  XDG_DATA_HOME?: string;
}

export interface SearchPlaces {
  /** The open folder: its `.venv` (a clone of Forkyard, or a project that depends on it). */
  workspace?: string;
  /** PATHs of the processes that started this one (code-server, a remote server): the
   * shell that launched VS Code has the PATH the user set up, the extension host often
   * only a login shell's. */
  parentPaths?: string[];
}

/** The directories searched, in order: PATH, the launching shell's PATH, then where
 * `uv tool install`, `pipx` and `pip install --user` put programs, and the workspace's
 * virtual environment. Without duplicates. */
export function searchDirectories(env: SearchEnv, places: SearchPlaces = {}): string[] {
  const home = env.HOME;
  const dataHome = env.XDG_DATA_HOME || (home ? path.join(home, ".local", "share") : undefined);
  const toolDir = env.UV_TOOL_DIR || (dataHome ? path.join(dataHome, "uv", "tools") : undefined);
  const candidates = [
    ...(env.PATH ?? "").split(path.delimiter),
    ...(places.parentPaths ?? []).flatMap((p) => p.split(path.delimiter)),
    env.UV_TOOL_BIN_DIR,
    env.XDG_BIN_HOME,
    home ? path.join(home, ".local", "bin") : undefined,
    toolDir ? path.join(toolDir, "forkyard", "bin") : undefined,
    places.workspace ? path.join(places.workspace, ".venv", "bin") : undefined,
  ];
  const seen = new Set<string>();
  const out: string[] = [];
  for (const directory of candidates) {
    if (!directory || seen.has(directory)) continue;
    seen.add(directory);
    out.push(directory);
  }
  return out;
}

export function resolveServerCommand(
  setting: unknown,
  env: SearchEnv,
  isExecutable: (file: string) => boolean,
  places: SearchPlaces = {},
): ResolvedCommand {
  const argv =
    Array.isArray(setting) && setting.length > 0 ? setting : setting === undefined ? DEFAULT_SERVER_COMMAND : null;
  if (!argv || !argv.every((part) => typeof part === "string") || argv[0] === "") {
    return {
      ok: false,
      missing: false,
      message: 'The setting forkyard.server.command must be a list of strings, like ["forkyard", "serve"].',
    };
  }
  const [program, ...args] = argv as string[];
  const expanded = program.startsWith("~/") && env.HOME ? path.join(env.HOME, program.slice(2)) : program;
  if (expanded.includes("/") || expanded.includes("\\")) {
    if (isExecutable(expanded)) return { ok: true, command: expanded, args };
    return {
      ok: false,
      missing: true,
      message: `Forkyard's language server ${expanded} does not exist or is not executable (setting forkyard.server.command).`,
    };
  }
  const directories = searchDirectories(env, places);
  const onPath = new Set((env.PATH ?? "").split(path.delimiter));
  for (const directory of directories) {
    const candidate = path.join(directory, expanded);
    if (isExecutable(candidate)) {
      return onPath.has(directory)
        ? { ok: true, command: candidate, args }
        : { ok: true, command: candidate, args, foundIn: directory };
    }
  }
  return {
    ok: false,
    missing: true,
    message:
      `Forkyard's language server \`${expanded}\` was not found (looked on PATH, in ~/.local/bin, ` +
      "uv's tools and the workspace's .venv). Install it, or set forkyard.server.command.",
  };
}

/** `PATH=` out of a `/proc/PID/environ` (NUL-separated), or undefined. */
export function pathFromEnviron(environ: string): string | undefined {
  for (const entry of environ.split("\0")) {
    if (entry.startsWith("PATH=")) return entry.slice(5);
  }
  return undefined;
}
