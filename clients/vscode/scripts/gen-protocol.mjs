// Generates src/protocol.generated.ts from the protocol's JSON Schema, which is itself
// generated from the Python models (`uv run forkyard schema`): the types are never
// written by hand, so the extension cannot drift from the server silently.
//   node scripts/gen-protocol.mjs           write the file
//   node scripts/gen-protocol.mjs --check   exit 1 when the committed file is stale
//   --schema FILE                           another schema file (default: the repository's)
import { readFileSync, writeFileSync, existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { compile } from "json-schema-to-typescript";

const here = dirname(fileURLToPath(import.meta.url));
const schemaFlag = process.argv.indexOf("--schema");
const schemaPath =
  schemaFlag > 0
    ? process.argv[schemaFlag + 1]
    : join(here, "..", "..", "..", "protocol", "schema", "forkyard.schema.json");
const outputPath = join(here, "..", "src", "protocol.generated.ts");

/** Pydantic titles every property ("Baseref"); json-schema-to-typescript would turn each
 * into a named alias, so only the definitions keep their titles. */
function dropPropertyTitles(node, isDefinition) {
  if (Array.isArray(node)) return node.map((item) => dropPropertyTitles(item, false));
  if (node === null || typeof node !== "object") return node;
  const out = {};
  for (const [key, value] of Object.entries(node)) {
    if (key === "title" && !isDefinition) continue;
    if (key === "$defs" || key === "properties") {
      // Maps of names (a property may well be called "title"), not schemas.
      out[key] = Object.fromEntries(
        Object.entries(value).map(([name, def]) => [name, dropPropertyTitles(def, key === "$defs")]),
      );
    } else {
      out[key] = dropPropertyTitles(value, false);
    }
  }
  return out;
}

function refName(ref) {
  return ref.replace("#/$defs/", "");
}

export async function generate() {
  const schema = JSON.parse(readFileSync(schemaPath, "utf8"));
  const defs = dropPropertyTitles({ $defs: schema.$defs }, false).$defs;
  const root = {
    title: "ForkyardProtocolObjects",
    type: "object",
    additionalProperties: false,
    properties: Object.fromEntries(Object.keys(defs).map((name) => [name, { $ref: `#/$defs/${name}` }])),
    $defs: defs,
  };
  const types = await compile(root, "ForkyardProtocolObjects", {
    bannerComment: "",
    additionalProperties: false,
    strictIndexSignatures: true,
    format: true,
    style: { printWidth: 100, singleQuote: false },
  });
  const requests = Object.entries(schema.requests)
    .map(
      ([method, { params, result }]) =>
        `  "${method}": { params: ${refName(params.$ref)}; result: ${refName(result.$ref)} };`,
    )
    .join("\n");
  const notifications = Object.entries(schema.notifications)
    .map(([method, { params }]) => `  "${method}": ${refName(params.$ref)};`)
    .join("\n");
  return [
    "// GENERATED from protocol/schema/forkyard.schema.json by scripts/gen-protocol.mjs.",
    "// Do not edit: change the Python models, run `uv run forkyard schema`, then",
    "// `npm run gen:protocol` in clients/vscode.",
    "/* eslint-disable */",
    "",
    `export const PROTOCOL_VERSION = ${schema.version};`,
    "",
    types.trim(),
    "",
    "/** Every request of the protocol: method -> params and result. */",
    "export interface ForkyardRequests {",
    requests,
    "}",
    "",
    "/** Every server-to-client notification of the protocol: method -> params. */",
    "export interface ForkyardNotifications {",
    notifications,
    "}",
    "",
  ].join("\n");
}

const check = process.argv.includes("--check");
const text = await generate();
if (check) {
  const current = existsSync(outputPath) ? readFileSync(outputPath, "utf8") : "";
  if (current !== text) {
    console.error(
      "src/protocol.generated.ts is stale: the protocol's JSON Schema changed.\n" +
        "Run `npm run gen:protocol` in clients/vscode and commit the result.",
    );
    process.exit(1);
  }
  console.log("protocol types are current");
} else {
  writeFileSync(outputPath, text);
  console.log(`wrote ${outputPath}`);
}
