#!/bin/bash
# The test command of the README and of CI: every test of the workspace,
# with the real Python parts (zc.buildout, supervisor, slapos.core 1.26.1)
# in the project venv; then, as root, the end-to-end acceptance run of
# ../shared/reference/python-e2e/run.sh with our master and the Python node.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
log() { printf '[test] %s\n' "$*" >&2; }

VENV=$(bash scripts/python-venv.sh)
export SLAPOS_VENV="$VENV"
log "python venv: $VENV"

log "cargo test --workspace"
cargo test --workspace --no-fail-fast 2>&1

if [ "$(id -u)" = 0 ] && [ -f ../shared/reference/python-e2e/run.sh ]; then
  log "end-to-end: the Python node (format, software, instance, promises, destruction) against our master"
  bash scripts/e2e.sh python-node 2>&1 | tail -n 60
  [ "${PIPESTATUS[0]}" = 0 ] || { log "end-to-end run failed"; exit 1; }
else
  log "end-to-end run skipped (needs root and ../shared)"
fi
