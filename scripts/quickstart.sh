#!/bin/bash
# The README's main job, on a fresh Debian machine (as root: the node part
# creates users and a private network namespace, and removes them after):
# installs what is needed, builds target/release/slapos, then runs a whole
# cloud life cycle on this machine — our master (`slapos proxy start`), our
# client (`slapos supply`, `slapos request`), a node (the Python reference
# node of slapos.core 1.26.1 until `slapos node` lands) that formats itself,
# builds the software release with zc.buildout, runs the instance under
# supervisord, checks its promises — and prints the instance's connection
# parameters, whose URL answers.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
log() { printf '[quickstart] %s\n' "$*" >&2; }
[ "$(id -u)" = 0 ] || { log "run me as root (sudo bash $0): the node creates users and a network namespace"; exit 1; }
bash "$ROOT/scripts/install-deps.sh"
export PATH="$HOME/.cargo/bin:$PATH"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
if SLAPOS_E2E_DESTROY=${SLAPOS_E2E_DESTROY:-0} bash "$ROOT/scripts/e2e.sh" ours-format >"$out" 2>&1; then
  grep -E "step (supply|request)|connection parameters:|ok: " "$out" | sed 's/^\[run.sh [0-9:]*\] //'
  log "the instance's connection parameters (published by the instance, read back from our master):"
  sed -n 's/.*connection parameters: //p' "$out"
  log "done: every check passed (full log: rerun with SLAPOS_E2E_KEEP=1 to keep the work directory)"
else
  tail -n 40 "$out"
  log "failed: see the output above"
  exit 1
fi
