// Runs the unit tests with Node's own test runner: each test/unit/*.test.ts is bundled by
// esbuild (TypeScript to JavaScript, nothing else), then `node --test` runs them.
//   node scripts/test.mjs [pattern]
import * as esbuild from "esbuild";
import { readdirSync, rmSync } from "node:fs";
import { spawnSync } from "node:child_process";

const pattern = process.argv[2] ?? "";
const files = readdirSync("test/unit")
  .filter((name) => name.endsWith(".test.ts") && name.includes(pattern))
  .map((name) => `test/unit/${name}`);
rmSync("out/unit", { recursive: true, force: true });
await esbuild.build({
  entryPoints: files,
  outdir: "out/unit",
  outExtension: { ".js": ".cjs" },
  bundle: true,
  platform: "node",
  format: "cjs",
  target: "node20",
  sourcemap: "inline",
  external: ["vscode"],
  logLevel: "warning",
});
const run = spawnSync(
  process.execPath,
  ["--enable-source-maps", "--test", ...files.map((f) => f.replace(/^test\/unit\/(.*)\.ts$/, "out/unit/$1.cjs"))],
  { stdio: "inherit" },
);
process.exit(run.status ?? 1);
