// Where a newcomer's `forkyard` is found with no setting at all: the PATH of the shell
// that started VS Code (the extension host may have only a login shell's), uv's tool
// directories, the workspace's .venv; and what they are told when it is nowhere.
import { test } from "node:test";
import assert from "node:assert/strict";
import { pathFromEnviron, resolveServerCommand, searchDirectories } from "../../src/serverCommand";

test("the launching shell's PATH is searched after the extension host's own", () => {
  const exists = new Set(["/opt/shell-only/bin/forkyard"]);
  const found = resolveServerCommand(undefined, { PATH: "/usr/bin", HOME: "/h" }, (f) => exists.has(f), {
    parentPaths: ["/usr/bin:/opt/shell-only/bin"],
  });
  assert.deepEqual(found, {
    ok: true,
    command: "/opt/shell-only/bin/forkyard",
    args: ["serve"],
    foundIn: "/opt/shell-only/bin",
  });
});

test("uv's tool directories and the workspace's .venv are searched, without duplicates", () => {
  const dirs = searchDirectories(
    { PATH: "/usr/bin:/h/.local/bin", HOME: "/h", UV_TOOL_BIN_DIR: "/uvbin" },
    { workspace: "/work/repo", parentPaths: ["/usr/bin"] },
  );
  assert.deepEqual(dirs, [
    "/usr/bin",
    "/h/.local/bin",
    "/uvbin",
    "/h/.local/share/uv/tools/forkyard/bin",
    "/work/repo/.venv/bin",
  ]);
  const exists = new Set(["/work/repo/.venv/bin/forkyard"]);
  const found = resolveServerCommand(["forkyard", "serve"], { PATH: "/usr/bin" }, (f) => exists.has(f), {
    workspace: "/work/repo",
  });
  assert.equal(found.ok && found.command, "/work/repo/.venv/bin/forkyard");
});

test("nowhere: the message says where it looked and that it is missing (the fix is offered)", () => {
  const result = resolveServerCommand(undefined, { PATH: "/usr/bin", HOME: "/h" }, () => false);
  assert.equal(result.ok, false);
  assert.equal(!result.ok && result.missing, true);
  assert.match(!result.ok ? result.message : "", /~\/\.local\/bin, uv's tools and the workspace's \.venv/);
  const bad = resolveServerCommand([1], {}, () => true);
  assert.equal(!bad.ok && bad.missing, false, "a wrong setting is not a missing program");
});

test("PATH is read out of a process's environ", () => {
  assert.equal(pathFromEnviron("HOME=/h\0PATH=/a:/b\0X=1\0"), "/a:/b");
  assert.equal(pathFromEnviron("HOME=/h\0"), undefined);
});
