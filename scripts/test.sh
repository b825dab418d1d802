#!/bin/bash
# The test command of the README and of CI: every test of the workspace,
# with the real Python parts (zc.buildout, supervisor, slapos.core 1.26.1)
# in the project venv; then, as root, the end-to-end acceptance runs of
# ../shared/reference/python-e2e/run.sh with our master (and our client
# commands), the node being the Python reference until ours lands.
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
  for mode in python-node ours-format; do
    log "end-to-end ($mode): format, software, instance, promises, destruction against our master"
    bash scripts/e2e.sh "$mode" 2>&1 | tail -n 45
    [ "${PIPESTATUS[0]}" = 0 ] || { log "end-to-end run ($mode) failed"; exit 1; }
  done
else
  log "end-to-end run skipped (needs root and ../shared)"
fi
