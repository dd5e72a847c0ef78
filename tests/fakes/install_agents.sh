#!/usr/bin/env bash
# Install the external coding-agent programs that Forkyard's codex, claude, aider and acp
# backends drive, into a project-local folder, from the package registries:
#   DIR/node_modules/.bin/codex    @openai/codex            (npm)
#   DIR/node_modules/.bin/claude   @anthropic-ai/claude-code (npm)
#   DIR/aider-venv/bin/aider       aider-chat                (PyPI, in its own venv:
#                                  its dependencies must not mix with Forkyard's)
# and the Agent Client Protocol (ACP) agents that the acp backend speaks to over stdio:
#   DIR/node_modules/.bin/claude-agent-acp  @zed-industries/claude-agent-acp (npm; runs the
#                                  Claude Code that its Claude Agent SDK bundles, cli.js)
#   DIR/node_modules/.bin/codex-acp         @zed-industries/codex-acp (npm; a node wrapper
#                                  that runs the native binary of
#                                  @zed-industries/codex-acp-linux-x64, also linked as
#                                  DIR/node_modules/.bin/codex-acp-linux-x64)
#   DIR/node_modules/.bin/gemini            @google/gemini-cli (npm; `gemini --acp`)
#
#   bash tests/fakes/install_agents.sh [DIR]     DIR: $FORKYARD_AGENTS_DIR, else .agents/
#
# Idempotent: a program already at the pinned version is left alone, so a second run
# takes a second or two. Versions are pinned so that tests see the event formats they
# were written against; override with CODEX_VERSION, CLAUDE_CODE_VERSION, AIDER_VERSION,
# CLAUDE_AGENT_ACP_VERSION, CODEX_ACP_VERSION, GEMINI_CLI_VERSION.
# A program that cannot be installed leaves DIR/NAME.install-error with the reason (NAME:
# codex, claude, aider, claude-agent-acp, codex-acp, gemini); the tests then skip it
# saying so (and fail, telling you to run this, when it was never run).
# Sizes when installed: node_modules ~1.1 GB, aider-venv ~690 MB.
set -uo pipefail
cd "$(dirname "$0")/../.."

DIR="${1:-${FORKYARD_AGENTS_DIR:-$PWD/.agents}}"
CODEX_VERSION="${CODEX_VERSION:-0.169.0}"
CLAUDE_CODE_VERSION="${CLAUDE_CODE_VERSION:-2.1.197}"
AIDER_VERSION="${AIDER_VERSION:-0.86.2}"
CLAUDE_AGENT_ACP_VERSION="${CLAUDE_AGENT_ACP_VERSION:-0.23.1}"
CODEX_ACP_VERSION="${CODEX_ACP_VERSION:-0.16.0}"
GEMINI_CLI_VERSION="${GEMINI_CLI_VERSION:-0.61.0}"
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

# package_is PACKAGE EXPECTED: whether DIR/node_modules/PACKAGE is at version EXPECTED
# (for programs without a --version: claude-agent-acp speaks ACP on stdin whatever its
# arguments, codex-acp refuses --version).
package_is() {
  local manifest="$DIR/node_modules/$1/package.json"
  [ -f "$manifest" ] && grep -qE "^  \"version\": \"$2\"" "$manifest"
}

# starts PROGRAM ARG: whether PROGRAM ARG exits 0 within 60 s, stdin closed.
starts() {
  timeout 60 "$1" "$2" </dev/null >/dev/null 2>&1
}

# install_acp_agent NAME PACKAGE VERSION BIN START-ARG [EXTRA-PACKAGE]: one npm install
# per ACP agent, so that one failing leaves the others (and codex and claude) as they are.
# EXTRA-PACKAGE (a platform binary package) is installed alongside, at the same version:
# npm skips a failed optional dependency silently, so naming it makes a failure show.
install_acp_agent() {
  local name="$1" package="$2" version="$3" bin="$DIR/node_modules/.bin/$4" arg="$5"
  local extra="${6:-}"
  ok() {
    package_is "$package" "$version" && { [ -z "$extra" ] || package_is "$extra" "$version"; } &&
      [ -x "$bin" ] && starts "$bin" "$arg"
  }
  if ok; then
    echo "$name $version already installed in $DIR"
    record "$name" OK
    return
  fi
  if ! command -v npm >/dev/null; then
    record "$name" "npm not found (install Node.js >= 20 and npm)"
    return
  fi
  local packages=("$package@$version")
  [ -n "$extra" ] && packages+=("$extra@$version")
  echo "installing ${packages[*]} into $DIR"
  local log="$DIR/$name-install.log"
  if ! npm install --prefix "$DIR" --no-fund --no-audit --no-update-notifier --save-exact \
    "${packages[@]}" >"$log" 2>&1; then
    log_tail "$log" >&2
  fi
  if ok; then record "$name" OK; else
    record "$name" "npm install ${packages[*]} failed or $4 $arg did not start: $(log_tail "$log")"
  fi
}

install_acp_agents() {
  # claude-agent-acp answers ACP on stdin whatever its arguments; with stdin closed it exits 0.
  install_acp_agent claude-agent-acp @zed-industries/claude-agent-acp "$CLAUDE_AGENT_ACP_VERSION" \
    claude-agent-acp --help
  local platform=""
  case "$(uname -s)-$(uname -m)" in
    Linux-x86_64) platform=@zed-industries/codex-acp-linux-x64 ;;
    Linux-aarch64 | Linux-arm64) platform=@zed-industries/codex-acp-linux-arm64 ;;
    Darwin-arm64) platform=@zed-industries/codex-acp-darwin-arm64 ;;
    Darwin-x86_64) platform=@zed-industries/codex-acp-darwin-x64 ;;
  esac
  install_acp_agent codex-acp @zed-industries/codex-acp "$CODEX_ACP_VERSION" codex-acp --help $platform
  install_acp_agent gemini @google/gemini-cli "$GEMINI_CLI_VERSION" gemini --version
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
install_acp_agents
install_aider
echo "install_agents: done in $((SECONDS - started)) s ($(du -sh "$DIR" 2>/dev/null | cut -f1) in $DIR)"
exit $status
