import { test } from "node:test";
import assert from "node:assert/strict";
import { trustStateOf, trustStatusText } from "../../src/trustText";

test("an untrusted repository whose settings were ignored shows in the status bar", () => {
  const shown = trustStatusText({ trusted: false, ignoredKeys: ["models.default.base_url", "worktree.setup"] });
  assert.ok(shown);
  assert.equal(shown.text, "$(shield) untrusted");
  assert.match(shown.tooltip, /2 setting\(s\) ignored \(models\.default\.base_url, worktree\.setup\)/);
  assert.match(shown.tooltip, /Forkyard: Trust This Repository/);
});

test("nothing shows when trusted, when nothing was ignored, or before the server answered", () => {
  assert.equal(trustStatusText({ trusted: true, ignoredKeys: [] }), undefined);
  assert.equal(trustStatusText({ trusted: false, ignoredKeys: [] }), undefined);
  assert.equal(trustStatusText(undefined), undefined);
});

test("an older server's status, without trust fields, reads as untrusted with nothing ignored", () => {
  assert.deepEqual(trustStateOf({}), { trusted: false, ignoredKeys: [] });
  assert.deepEqual(trustStateOf({ trusted: true, ignoredKeys: [] }), { trusted: true, ignoredKeys: [] });
});
