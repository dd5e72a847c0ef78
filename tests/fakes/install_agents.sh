#!/usr/bin/env bash
# Install the external coding-agent programs that Forkyard's codex, claude and aider
# backends drive, into a project-local folder, from the package registries:
#   DIR/node_modules/.bin/codex    @openai/codex            (npm)
#   DIR/node_modules/.bin/claude   @anthropic-ai/claude-code (npm)
#   DIR/aider-venv/bin/aider       aider-chat                (PyPI, in its own venv:
#                                  its dependencies must not mix with Forkyard's)
#
#   bash tests/fakes/install_agents.sh [DIR]     DIR: $FORKYARD_AGENTS_DIR, else .agents/
#
# Idempotent: a program already at the pinned version is left alone, so a second run
# takes a second or two. Versions are pinned so that tests see the event formats they
# were written against; override with CODEX_VERSION, CLAUDE_CODE_VERSION, AIDER_VERSION.
# A program that cannot be installed leaves DIR/NAME.install-error with the reason; the
# tests then skip it saying so (and fail, telling you to run this, when it was never run).
# Sizes when installed: node_modules ~640 MB, aider-venv ~690 MB.
set -uo pipefail
cd "$(dirname "$0")/../.."

DIR="${1:-${FORKYARD_AGENTS_DIR:-$PWD/.agents}}"
CODEX_VERSION="${CODEX_VERSION:-0.169.0}"
CLAUDE_CODE_VERSION="${CLAUDE_CODE_VERSION:-2.1.197}"
AIDER_VERSION="${AIDER_VERSION:-0.86.2}"
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
status=0

# version_is PROGRAM EXPECTED: whether PROGRAM --version prints EXPECTED.
version_is() {
  [ -x "$1" ] && "$1" --version 2>/dev/null | grep -qF "$2"
}

# log_tail FILE: the last meaningful lines of an installer's log, short, on one line.
log_tail() {
  grep -v "is ignored: it is neither a file nor a directory" "$1" | tail -n 2 | cut -c1-300 | tr '\n' ' '
}

record() { # record NAME OK|ERROR-TEXT
  if [ "$2" = OK ]; then
    rm -f "$DIR/$1.install-error"
  else
    printf '%s\n' "$2" >"$DIR/$1.install-error"
    echo "install_agents: $1 could not be installed: $2" >&2
    status=1
  fi
}

install_npm_programs() {
  local bin="$DIR/node_modules/.bin"
  if version_is "$bin/codex" "$CODEX_VERSION" && version_is "$bin/claude" "$CLAUDE_CODE_VERSION"; then
    echo "codex $CODEX_VERSION and claude $CLAUDE_CODE_VERSION already installed in $DIR"
    record codex OK
    record claude OK
    return
  fi
  if ! command -v npm >/dev/null; then
    record codex "npm not found (install Node.js >= 18 and npm)"
    record claude "npm not found (install Node.js >= 18 and npm)"
    return
  fi
  echo "installing @openai/codex@$CODEX_VERSION and @anthropic-ai/claude-code@$CLAUDE_CODE_VERSION into $DIR"
  local log="$DIR/npm-install.log"
  if ! npm install --prefix "$DIR" --no-fund --no-audit --no-update-notifier \
    "@openai/codex@$CODEX_VERSION" "@anthropic-ai/claude-code@$CLAUDE_CODE_VERSION" >"$log" 2>&1; then
    log_tail "$log" >&2
  fi
  if version_is "$bin/codex" "$CODEX_VERSION"; then record codex OK; else
    record codex "npm install @openai/codex@$CODEX_VERSION failed: $(log_tail "$log")"
  fi
  if version_is "$bin/claude" "$CLAUDE_CODE_VERSION"; then record claude OK; else
    record claude "npm install @anthropic-ai/claude-code@$CLAUDE_CODE_VERSION failed: $(log_tail "$log")"
  fi
}

install_aider() {
  local venv="$DIR/aider-venv"
  if version_is "$venv/bin/aider" "$AIDER_VERSION"; then
    echo "aider $AIDER_VERSION already installed in $venv"
    record aider OK
    return
  fi
  echo "installing aider-chat==$AIDER_VERSION into $venv"
  local log="$DIR/aider-install.log"
  rm -rf "$venv"
  # uv is several times faster than pip here; aider-chat supports Python 3.10 to 3.12.
  # Without uv, or where uv finds no such Python, the venv module and pip do it.
  {
    command -v uv >/dev/null &&
      uv venv --quiet --python 3.11 "$venv" &&
      uv pip install --quiet --python "$venv/bin/python" "aider-chat==$AIDER_VERSION"
  } >"$log" 2>&1 || {
    rm -rf "$venv"
    python3 -m venv "$venv" && "$venv/bin/pip" install --quiet "aider-chat==$AIDER_VERSION"
  } >>"$log" 2>&1
  if version_is "$venv/bin/aider" "$AIDER_VERSION"; then record aider OK; else
    record aider "installing aider-chat==$AIDER_VERSION failed: $(log_tail "$log")"
  fi
}

started=$SECONDS
install_npm_programs
install_aider
echo "install_agents: done in $((SECONDS - started)) s ($(du -sh "$DIR" 2>/dev/null | cut -f1) in $DIR)"
exit $status
