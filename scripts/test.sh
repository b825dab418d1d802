#!/bin/bash
# The test command of the README and of CI: every test of the workspace,
# with the real Python parts (zc.buildout, supervisor, slapos.core 1.26.1)
# in the project venv. Tests that need root (users, network namespaces) run
# when this runs as root and say that they are skipped otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
log() { printf '[test] %s\n' "$*" >&2; }

VENV=$(bash scripts/python-venv.sh)
export SLAPOS_VENV="$VENV"
log "python venv: $VENV"

log "cargo test --workspace"
cargo test --workspace --no-fail-fast 2>&1
