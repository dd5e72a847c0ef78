// Runs tests with Node's own test runner: each test/<suite>/*.test.ts is bundled by
// esbuild (TypeScript to JavaScript, nothing else), then `node --test` runs them.
//   node scripts/test.mjs [unit|e2e] [name filter]
import * as esbuild from "esbuild";
import { readdirSync, rmSync } from "node:fs";
import { spawnSync } from "node:child_process";

const suite = process.argv[2] ?? "unit";
const filter = process.argv[3] ?? "";
const files = readdirSync(`test/${suite}`)
  .filter((name) => name.endsWith(".test.ts") && name.includes(filter))
  .map((name) => `test/${suite}/${name}`);
if (files.length === 0) {
  console.error(`no test/${suite}/*.test.ts file matches "${filter}"`);
  process.exit(1);
}
rmSync(`out/${suite}`, { recursive: true, force: true });
await esbuild.build({
  entryPoints: files,
  outdir: `out/${suite}`,
  outExtension: { ".js": ".cjs" },
  bundle: true,
  platform: "node",
  format: "cjs",
  target: "node20",
  sourcemap: "inline",
  external: ["vscode", "playwright-core"],
  logLevel: "warning",
});
const compiled = files.map((f) => f.replace(/^test\/[^/]+\/(.*)\.ts$/, `out/${suite}/$1.cjs`));
// One file at a time for the end-to-end suite: it drives one editor.
const concurrency = suite === "e2e" ? ["--test-concurrency=1"] : [];
const run = spawnSync(process.execPath, ["--enable-source-maps", "--test", ...concurrency, ...compiled], {
  stdio: "inherit",
});
process.exit(run.status ?? 1);
