// Bundles the extension (Node, CommonJS, `vscode` external) and the chat webview's
// script (browser, IIFE) with esbuild.   node scripts/build.mjs [--production] [--watch]
import * as esbuild from "esbuild";
import { rmSync } from "node:fs";

const production = process.argv.includes("--production");
const watch = process.argv.includes("--watch");
const common = { bundle: true, sourcemap: !production, minify: production, logLevel: "info", legalComments: "none" };

const targets = [
  {
    ...common,
    entryPoints: ["src/extension.ts"],
    outfile: "dist/extension.js",
    platform: "node",
    format: "cjs",
    target: "node18",
    external: ["vscode"],
  },
  {
    ...common,
    entryPoints: ["src/webview/main.ts"],
    outfile: "dist/webview.js",
    platform: "browser",
    format: "iife",
    target: "es2020",
  },
];

// A production build replaces dist/ whole: no stale source maps end up in the .vsix.
if (production) rmSync("dist", { recursive: true, force: true });

if (watch) {
  for (const options of targets) await (await esbuild.context(options)).watch();
} else {
  await Promise.all(targets.map((options) => esbuild.build(options)));
}
