#!/usr/bin/env bash
# Builds the extension from a clean checkout and runs every test of it: the protocol
# types are current, TypeScript type-checks, the unit tests, the .vsix packages, and the
# end-to-end tests in a real VS Code (code-server 4.100.3, driven by Playwright over
# Debian's chromium) against this checkout's `forkyard serve`.
#   clients/vscode/scripts/e2e.sh            everything
#   clients/vscode/scripts/e2e.sh --no-e2e   all but the end-to-end tests
# Needs: node 20 and npm; the Python environment of `./setup.sh` (.venv); for the
# end-to-end tests, root or sudo for apt (chromium, ripgrep, the build tools code-server's
# native modules need), done once by ../shared/tools/install-code-server.sh.
# Environment: FORKYARD_CODE_SERVER_DIR (default ~/.cache/forkyard/code-server), and the
# test's FORKYARD_E2E_ARTIFACTS (screenshots; default clients/vscode/test-artifacts) and
# FORKYARD_E2E_KEEP=1 (keep the temporary profile and sample repository), and
# FORKYARD_E2E_RETRIES (default 1: the suite runs once more if it fails).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
repo_root="$(cd "$here/../.." && pwd)"
cd "$here"

step() { printf '\n== %s (%ss)\n' "$1" "$SECONDS"; }

step "npm ci"
npm ci --no-audit --no-fund --loglevel=error

step "protocol types, type check, unit tests"
npm run --silent check:protocol
npm run --silent typecheck
npm test --silent

step "package the .vsix"
npm run --silent package >/dev/null
ls -l forkyard.vsix

if [ "${1:-}" = "--no-e2e" ]; then
  exit 0
fi

step "code-server"
cs_dir="${FORKYARD_CODE_SERVER_DIR:-$HOME/.cache/forkyard/code-server}"
installer="$repo_root/../shared/tools/install-code-server.sh"
if [ ! -x "$cs_dir/node_modules/.bin/code-server" ] || ! command -v chromium >/dev/null; then
  if [ ! -f "$installer" ]; then
    echo "code-server is not in $cs_dir and $installer is missing" >&2
    exit 1
  fi
  sh "$installer" "$cs_dir"
fi
export FORKYARD_CODE_SERVER="$cs_dir/node_modules/.bin/code-server"

step "forkyard serve of this checkout"
export FORKYARD_SERVER="${FORKYARD_SERVER:-$repo_root/.venv/bin/forkyard}"
if [ ! -x "$FORKYARD_SERVER" ]; then
  (cd "$repo_root" && uv sync --locked)
fi
"$FORKYARD_SERVER" --help >/dev/null

step "end-to-end tests in VS Code"
# A browser driving an editor on a shared 2-core machine: one retry of the whole suite,
# said loudly, so that a rare timing failure does not fail CI while a real one still does.
retries="${FORKYARD_E2E_RETRIES:-1}"
export FORKYARD_E2E_REQUIRED=1
until node scripts/test.mjs e2e; do
  if [ "$retries" -le 0 ]; then
    echo "end-to-end tests failed; screenshots in ${FORKYARD_E2E_ARTIFACTS:-$here/test-artifacts}" >&2
    exit 1
  fi
  retries=$((retries - 1))
  echo "RETRY: the end-to-end suite failed; running it once more" >&2
done
step "done"
