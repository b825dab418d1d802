#!/bin/bash
# End-to-end acceptance: the whole node life cycle of
# ../shared/reference/python-e2e/run.sh (format, supply, request, software,
# instance, promises, failures, destruction) in a private network namespace,
# with our `slapos` for every command:
#   1. our master and our node (SLAPOS_E2E_SLAPOS=target/release/slapos);
#   2. the Python master (slapos.core 1.26.1) and our node;
#   3. our master and the Python node.
# Needs root (run.sh creates users and a network namespace, and removes them).
# Usage: bash scripts/e2e.sh [ours|python-master|python-node|all]   (default all)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUN_SH=${SLAPOS_E2E_RUN_SH:-$ROOT/../shared/reference/python-e2e/run.sh}
log() { printf '[e2e] %s\n' "$*" >&2; }
[ "$(id -u)" = 0 ] || { log "skipped: needs root"; exit 0; }
[ -f "$RUN_SH" ] || { log "error: $RUN_SH not found (shared/ must sit beside the repository)"; exit 1; }
export PATH="$HOME/.cargo/bin:$PATH"
VENV=$(bash "$ROOT/scripts/python-venv.sh")
export SLAPOS_E2E_VENV="$VENV"
(cd "$ROOT" && cargo build --release --quiet -p slapos)
OURS="$ROOT/target/release/slapos"
what=${1:-all}
rc=0
run() {  # run NAME SLAPOS MASTER
  log "== $1: node $2, master $3"
  if SLAPOS_E2E_SLAPOS="$2" SLAPOS_E2E_MASTER="$3" SLAPOS_E2E_PREFIX="e2r$((RANDOM % 1000))" bash "$RUN_SH"; then
    log "== $1: passed"
  else
    log "== $1: FAILED"; rc=1
  fi
}
case "$what" in
  ours|all) run ours "$OURS" "$OURS" ;;&
  python-master|all) run python-master "$OURS" "$VENV/bin/slapos" ;;&
  python-node|all) run python-node "$VENV/bin/slapos" "$OURS" ;;
  ours|python-master) ;;
  *) log "usage: $0 [ours|python-master|python-node|all]"; exit 2 ;;
esac
exit $rc
