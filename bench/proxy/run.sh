#!/bin/bash
# The master under load: ours (`slapos proxy start`) and the Python one
# (slapos.core 1.26.1), side by side on the same scenario (see
# crates/proxy/examples/proxy_load.rs): 100 partitions on one computer, then
# 10,000 partitions over 100 computers. Prints each and the ratios.
# Usage: bash bench/proxy/run.sh [SECONDS_PER_MEASURE]   (default 5)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SECS=${1:-5}
VENV=$(bash "$ROOT/scripts/python-venv.sh")
cd "$ROOT"
cargo build --release --quiet -p slapos -p slapos-proxy --example proxy_load
LOAD="$ROOT/target/release/examples/proxy_load"
OURS="$ROOT/target/release/slapos"
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

free_port() { "$VENV/bin/python3" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# run NAME PROGRAM COMPUTERS PARTITIONS INSTANCES -> prints the JSON line
run() {
  local name=$1 prog=$2 port dir
  port=$(free_port)
  dir="$WORK/$name-$3"
  mkdir -p "$dir"
  printf '[slapos]\ncomputer_id = COMP-0\n[slapproxy]\nhost = 127.0.0.1\nport = %s\ndatabase_uri = %s/proxy.db\n' "$port" "$dir" >"$dir/slapos.cfg"
  "$prog" proxy start --cfg "$dir/slapos.cfg" >"$dir/log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  sleep 1  # idle
  "$LOAD" "http://127.0.0.1:$port" "$pid" "$3" "$4" "$5" "$SECS"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

report() {  # report TITLE RUST_JSON PYTHON_JSON
  "$VENV/bin/python3" - "$1" "$2" "$3" <<'PY'
import json, sys
title, r, p = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
print('== ' + title)
print('%-22s %12s %12s %8s' % ('measure', 'rust', 'python', 'ratio'))
rows = [('allocations/s', 'allocations_per_s', 1), ('requests/s', 'requests_per_s', 1),
        ('full info/s', 'info_per_s', 1), ('full info p50 ms', 'info_p50_ms', -1),
        ('full info p99 ms', 'info_p99_ms', -1), ('idle RSS MB', 'idle_rss_kb', -1),
        ('loaded RSS MB', 'loaded_rss_kb', -1), ('format s', 'format_s', -1)]
for label, key, better in rows:
    a, b = r[key], p[key]
    if key.endswith('_kb'):
        a, b = a / 1024, b / 1024
    ratio = (a / b if better > 0 else b / a) if a and b else float('nan')
    print('%-22s %12.2f %12.2f %7.1fx' % (label, a, b, ratio))
PY
}

R1=$(run rust "$OURS" 1 100 100)
P1=$(run python "$VENV/bin/slapos" 1 100 100)
report "100 partitions on 1 computer (ratio: how many times better ours is)" "$R1" "$P1"
R2=$(run rust "$OURS" 100 100 10)
P2=$(run python "$VENV/bin/slapos" 100 100 10)
report "10,000 partitions over 100 computers (1,000 instances; full info per computer)" "$R2" "$P2"
