#!/bin/bash
# The test command of the README and of CI: every test of the workspace,
# with the real Python parts (zc.buildout, supervisor, slapos.core 1.26.1)
# in the project venv; then, as root, the end-to-end acceptance runs of
# ../shared/reference/python-e2e/run.sh: all ours, ours against the Python
# master, and the Python node against our master.
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
  # ours: every command is ours; python-master: our node and client against
  # the Python master; python-node: the Python node and client against ours
  for mode in ours python-master python-node; do
    log "end-to-end ($mode): format, software, instance, promises, destruction"
    bash scripts/e2e.sh "$mode" 2>&1 | tail -n 45
    [ "${PIPESTATUS[0]}" = 0 ] || { log "end-to-end run ($mode) failed"; exit 1; }
  done
else
  log "end-to-end run skipped (needs root and ../shared)"
fi
