#!/bin/bash
# End-to-end acceptance: the whole node life cycle of
# ../shared/reference/python-e2e/run.sh (format, supply, request, software,
# instance, promises, failures, destruction) in a private network namespace:
#   python-node    our master (`slapos proxy start`), the Python node and client;
#   ours-client    our master and our client commands (supply, request,
#                  remove), the Python node (`slapos node …` dispatched to
#                  the reference);
#   ours-format    as ours-client, with our `slapos node format` too;
#   ours           our master and our `slapos` for every command (format,
#                  client, software, instance, report, promise, status…);
#   python-master  the Python master and our `slapos` for everything else
#                  (our node and client against the reference master).
# Needs root (run.sh creates users and a network namespace, and removes them).
# Usage: bash scripts/e2e.sh [python-node|ours-client|ours-format|ours|python-master|all]   (default python-node)
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
what=${1:-python-node}
rc=0
run() {  # run NAME SLAPOS MASTER
  log "== $1: node $2, master $3"
  if SLAPOS_E2E_SLAPOS="$2" SLAPOS_E2E_MASTER="$3" SLAPOS_E2E_PREFIX="e2r$((RANDOM % 1000))" bash "$RUN_SH"; then
    log "== $1: passed"
  else
    log "== $1: FAILED"; rc=1
  fi
}
# a `slapos` that is ours except for `slapos node …`
WRAP_DIR=$(mktemp -d)
trap 'rm -rf "$WRAP_DIR"' EXIT
cat >"$WRAP_DIR/slapos" <<EOF2
#!/bin/sh
if [ "\$1" = node ]; then exec "$VENV/bin/slapos" "\$@"; fi
exec "$OURS" "\$@"
EOF2
chmod 755 "$WRAP_DIR"
chmod 755 "$WRAP_DIR/slapos"
# …and ours for `slapos node format` too
mkdir -p "$WRAP_DIR/with-format"
cat >"$WRAP_DIR/with-format/slapos" <<EOF2
#!/bin/sh
if [ "\$1" = node ] && [ "\$2" != format ]; then exec "$VENV/bin/slapos" "\$@"; fi
exec "$OURS" "\$@"
EOF2
chmod 755 "$WRAP_DIR/with-format" "$WRAP_DIR/with-format/slapos"
case "$what" in
  ours-client) run ours-client "$WRAP_DIR/slapos" "$OURS" ;;
  ours-format) run ours-format "$WRAP_DIR/with-format/slapos" "$OURS" ;;
  ours|all) run ours "$OURS" "$OURS" ;;&
  python-master|all) run python-master "$OURS" "$VENV/bin/slapos" ;;&
  python-node|all) run python-node "$VENV/bin/slapos" "$OURS" ;;
  ours|python-master|ours-client|ours-format) ;;
  *) log "usage: $0 [python-node|ours-client|ours-format|ours|python-master|all]"; exit 2 ;;
esac
exit $rc
