#!/bin/bash
# A simulated fleet against the master (see crates/proxy/examples/fleet_load.rs):
# 1,000 computers x 100 partitions = 100,000 partitions, instances requested on
# a share of them, then node clients polling full information (with and
# without conditional GET) and reporting, with client requests mixed in, and
# an idle fleet polling every 60 s. Side by side in one run: ours on SQLite
# with one master, ours on PostgreSQL with one and with two masters (the load
# spread over both ports, no load balancer), and the Python proxy
# (slapos.core 1.26.1) on a smaller fleet (it cannot take 100,000 partitions
# in a bench's time; its idle fleet polls at the rate of the full one).
#
# PostgreSQL is Debian's (pg_config --bindir, else /usr/lib/postgresql/*/bin),
# started here as a non-root user (nobody when run as root) in a temporary
# directory, with its default durability (fsync on); stopped and removed on
# exit, even on failure.
#
# Usage: bash bench/fleet/run.sh [SECONDS] [IDLE_SECONDS]   (default 8, 20)
# Env:   FLEET_COMPUTERS (1000), FLEET_PARTITIONS (100), FLEET_INSTANCES
#        (instances per computer, 2: at 100,000 partitions an allocation
#        takes ~25 ms, see bench/README.md), FLEET_PYTHON_COMPUTERS (100),
#        BENCH_FLEET_PYTHON=0 skips the Python proxy, BENCH_FLEET_OURS=0 ours
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SECS=${1:-8}
IDLE=${2:-20}
COMPUTERS=${FLEET_COMPUTERS:-1000}
PARTITIONS=${FLEET_PARTITIONS:-100}
INSTANCES=${FLEET_INSTANCES:-2}
PY_COMPUTERS=${FLEET_PYTHON_COMPUTERS:-100}
VENV=${SLAPOS_VENV:-/var/cache/slapos-e2e/venv-1.26.1}
[ -x "$VENV/bin/slapos" ] || VENV=$(bash "$ROOT/scripts/python-venv.sh")
cd "$ROOT"
cargo build --release --quiet -p slapos -p slapos-proxy --example fleet_load
LOAD="$ROOT/target/release/examples/fleet_load"
OURS="$ROOT/target/release/slapos"
WORK=$(mktemp -d)
PGDIR=""
PGBIN=$(pg_config --bindir 2>/dev/null || true)
[ -x "$PGBIN/initdb" ] || PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)

# as_pg COMMAND…: as PostgreSQL's user (nobody when we are root)
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u nobody -- "$@"; else "$@"; fi; }

cleanup() {
  # the masters and load generators, started in $(run …) subshells, are in $WORK/pids
  for p in $(cat "$WORK/pids" 2>/dev/null); do kill "$p" 2>/dev/null || true; done
  if [ -n "$PGDIR" ]; then
    as_pg "$PGBIN/pg_ctl" -D "$PGDIR/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$PGDIR"
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { "$VENV/bin/python3" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.1; done; echo "no master on port $1" >&2; return 1; }

# pg_start: a PostgreSQL server in a temporary directory, listening on a unix socket there
pg_start() {
  PGDIR=$(mktemp -d /tmp/slapbench-pg.XXXXXX)
  [ "$(id -u)" = 0 ] && chown nobody "$PGDIR"
  chmod 700 "$PGDIR"
  as_pg "$PGBIN/initdb" -D "$PGDIR/data" -A trust -U postgres -E UTF8 --locale=C >/dev/null
  as_pg "$PGBIN/pg_ctl" -D "$PGDIR/data" -l "$PGDIR/server.log" -w -t 60 \
    -o "-k $PGDIR -c listen_addresses='' -c max_connections=200" start >/dev/null
}

# pg_database NAME -> its URI
pg_database() {
  as_pg "$PGBIN/createdb" -h "$PGDIR" -U postgres "$1"
  printf 'postgresql://postgres@%s/%s' "$("$VENV/bin/python3" -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$PGDIR")" "$1"
}

# run NAME PROGRAM MASTERS DATABASE_URI COMPUTERS DB_PID -> the JSON line
run() {
  local name=$1 prog=$2 masters=$3 uri=$4 computers=$5 dbpid=$6 i port pid urls=() pids=()
  mkdir -p "$WORK/$name"
  for i in $(seq 1 "$masters"); do
    port=$(free_port)
    printf '[slapos]\ncomputer_id = COMP-0\n[slapproxy]\nhost = 127.0.0.1\nport = %s\ndatabase_uri = %s\n' "$port" "$uri" >"$WORK/$name/slapos-$i.cfg"
    "$prog" proxy start --cfg "$WORK/$name/slapos-$i.cfg" >"$WORK/$name/log-$i" 2>&1 &
    pid=$!
    echo "$pid" >>"$WORK/pids"
    pids+=("$pid") urls+=("http://127.0.0.1:$port")
    wait_port "$port"  # one after the other: the first one migrates the database
  done
  sleep 1
  "$LOAD" "$(IFS=,; echo "${urls[*]}")" "$(IFS=,; echo "${pids[*]}")" "$dbpid" "$computers" "$PARTITIONS" "$INSTANCES" "$SECS" "$IDLE" "$COMPUTERS" &
  echo $! >>"$WORK/pids"
  wait $!
  for pid in "${pids[@]}"; do kill "$pid"; wait "$pid" 2>/dev/null || true; done
}

echo "fleet: $COMPUTERS computers x $PARTITIONS partitions, $INSTANCES instances per computer; ${SECS}s per loaded measure, ${IDLE}s idle windows" >&2
SQLITE='{}' PG1='{}' PG2='{}' PY='{}'
if [ "${BENCH_FLEET_OURS:-1}" != 0 ]; then
  SQLITE=$(run sqlite "$OURS" 1 "$WORK/sqlite.db" "$COMPUTERS" 0)
  pg_start
  PGPID=$(head -1 "$PGDIR/data/postmaster.pid")
  PG1=$(run pg1 "$OURS" 1 "$(pg_database fleet1)" "$COMPUTERS" "$PGPID")
  PG2=$(run pg2 "$OURS" 2 "$(pg_database fleet2)" "$COMPUTERS" "$PGPID")
fi
if [ "${BENCH_FLEET_PYTHON:-1}" != 0 ]; then
  # its format reports one at a time: concurrent ones fail ("database is locked")
  PY=$(FLEET_SETUP_CLIENTS=1 run python "$VENV/bin/slapos" 1 "$WORK/python.db" "$PY_COMPUTERS" 0)
fi

"$VENV/bin/python3" - "$SQLITE" "$PG1" "$PG2" "$PY" <<'PY'
import json, sys
cols = [json.loads(a) for a in sys.argv[1:]]
names = ['SQLite, 1 master', 'PostgreSQL, 1', 'PostgreSQL, 2', 'Python proxy']
cols, names = zip(*[(c, n) for c, n in zip(cols, names) if c])
rows = [
    ('computers x partitions', lambda c: '%d x %d' % (c['computers'], c['partitions'] // c['computers'])),
    ('instances allocated', lambda c: '%d' % c['instances']),
    ('setup: format s', lambda c: '%.1f' % c['format_s']),
    ('setup: allocation s', lambda c: '%.1f' % c['allocate_s']),
    ('full info/s (plain)', lambda c: '%.0f' % c['info_per_s']),
    ('  p50 / p99 ms', lambda c: '%.1f / %.1f' % (c['info_p50_ms'], c['info_p99_ms'])),
    ('full info/s (cond. GET)', lambda c: '%.0f' % c['cond_per_s']),
    ('  p50 / p99 ms', lambda c: '%.1f / %.1f' % (c['cond_p50_ms'], c['cond_p99_ms'])),
    ('  share of 304', lambda c: '%.0f%%' % (100 * c['cond_304_share'])),
    ('fleet requests/s (mixed)', lambda c: '%.0f' % c['requests_per_s']),
    ('  p50 / p99 ms', lambda c: '%.1f / %.1f' % (c['requests_p50_ms'], c['requests_p99_ms'])),
    ('master RSS MB idle/loaded', lambda c: '%.0f / %.0f' % (c['idle_rss_kb'] / 1024, c['loaded_rss_kb'] / 1024)),
    ('no polling: CPU % (db)', lambda c: '%.2f (%.2f)' % (c['base_cpu_pct'], c['base_db_cpu_pct'])),
    ('idle fleet cond.: CPU % (db)', lambda c: '%.2f (%.2f)' % (c['idle_cpu_pct'], c['idle_db_cpu_pct'])),
    ('idle fleet plain: CPU % (db)', lambda c: '%.2f (%.2f)' % (c['idle_plain_cpu_pct'], c['idle_plain_db_cpu_pct'])),
    ('errors', lambda c: '%d' % c['errors']),
]
print('| measure | ' + ' | '.join(names) + ' |')
print('|---|' + '---|' * len(names))
for label, f in rows:
    print('| %s | %s |' % (label, ' | '.join(f(c) for c in cols)))
print('(setup: format reports from 8 clients, the Python proxy\'s from 1; then instance requests from 8 clients)')
print('(idle fleet: %d computers polling every 60 s; CPU in %% of one core, all masters summed; db: PostgreSQL)' % cols[0]['idle_fleet'])
PY
