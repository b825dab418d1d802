#!/bin/bash
# `slapos node software|instance`: ours and the Python node (slapos.core
# 1.26.1) side by side, each on a node of its own (fresh network namespace
# with a bridge, N partitions formatted by our `node format`, users of its
# own prefix, our master), deploying N instances of examples/hello-http
# (a real buildout per partition, an HTTP server under supervisord, a legacy
# promise). Measured: `node software` first build and no-op, `node instance`
# first instantiation of N partitions and no-op (best of 3), and the
# node's peak RSS in a no-op instance run (no buildout). Prints ratios.
# Needs root. Usage: sudo bash bench/node/run.sh [N]     (default N=50)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
N=${1:-50}
[ "$(id -u)" = 0 ] || { echo "needs root" >&2; exit 1; }
VENV=$(bash "$ROOT/scripts/python-venv.sh")
(cd "$ROOT" && cargo build --release --quiet -p slapos)
OURS="$ROOT/target/release/slapos"
PY_SLAPOS="$VENV/bin/slapos"
export PATH="$VENV/bin:$PATH"
WORK=$(mktemp -d /tmp/bench-node.XXXXXX)
chmod 755 "$WORK"
NS=""
MASTER_PID=""
USERS=()
log() { printf '[bench-node %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

stop_node() {  # stop_node DIR: supervisord (by its pid file), the master, the namespace
  local dir=$1 spid
  if [ -f "$dir/srv/var/run/supervisord.pid" ]; then
    spid=$(cat "$dir/srv/var/run/supervisord.pid")
    if kill -0 "$spid" 2>/dev/null && grep -q supervisord "/proc/$spid/cmdline" 2>/dev/null; then
      kill -TERM "$spid"
      for _ in $(seq 1 100); do kill -0 "$spid" 2>/dev/null || break; sleep 0.1; done
    fi
  fi
  if [ -n "$MASTER_PID" ]; then kill -TERM "$MASTER_PID" 2>/dev/null || true; wait "$MASTER_PID" 2>/dev/null || true; MASTER_PID=""; fi
  if [ -n "$NS" ]; then
    local left; left=$(ip netns pids "$NS" 2>/dev/null || true)
    [ -n "$left" ] && kill -KILL $left 2>/dev/null || true
    ip netns del "$NS" 2>/dev/null || true
    NS=""
  fi
}
cleanup() {
  for d in "$WORK"/*/; do [ -d "$d" ] && stop_node "${d%/}"; done
  for u in "${USERS[@]}"; do userdel "$u" 2>/dev/null || true; groupdel "$u" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

# bench NAME NODE_PROGRAM PREFIX: prints "software noop_software instance noop_instance rss_kb"
bench() {
  local name=$1 node=$2 prefix=$3 dir="$WORK/$1"
  mkdir -p "$dir"/{etc,log,var,sr,opt,srv}
  NS="bn$$$name"
  ip netns add "$NS"
  local nsx="ip netns exec $NS"
  $nsx ip link set lo up
  $nsx ip link add br0 type bridge
  $nsx ip link add br0p0 type veth peer name br0p1
  $nsx ip link set br0p0 master br0
  $nsx ip link set br0p0 up
  $nsx ip link set br0p1 up
  $nsx ip link set br0 up
  $nsx ip -6 addr add fd00:b0::1/64 dev br0 nodad
  USERS+=("${prefix}soft")
  for i in $(seq 0 $((N - 1))); do USERS+=("${prefix}user$i"); done
  cp -r "$ROOT/examples/hello-http" "$dir/sr/"
  sed "s|@SR_DIR@|$dir/sr/hello-http|g" "$dir/sr/hello-http/software.cfg.in" >"$dir/sr/hello-http/software.cfg"
  chmod -R a+rX "$dir/sr"
  local sr="$dir/sr/hello-http/software.cfg" port
  port=$($nsx python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  cat >"$dir/etc/slapos.cfg" <<CFG
[slapos]
computer_id = COMP-BENCH
master_url = http://127.0.0.1:$port
software_root = $dir/opt
instance_root = $dir/srv
pidfile_software = $dir/var/sr.pid
pidfile_instance = $dir/var/cp.pid
pidfile_report = $dir/var/ur.pid
[slapformat]
interface_name = br0
partition_amount = $N
computer_xml = $dir/var/slapos.xml
computer_json = $dir/var/slapos.json
user_base_name = ${prefix}user
software_user = ${prefix}soft
create_tap = false
ipv4_local_network = 10.0.0.0/16
[slapproxy]
host = 127.0.0.1
port = $port
database_uri = $dir/var/proxy.db
CFG
  printf '[slapos]\nmaster_url = http://127.0.0.1:%s\n' "$port" >"$dir/etc/client.cfg"
  ip netns exec "$NS" "$OURS" proxy start --cfg "$dir/etc/slapos.cfg" >"$dir/log/proxy.out" 2>&1 &
  MASTER_PID=$!
  for _ in $(seq 1 100); do $nsx python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 1)" 2>/dev/null && break; sleep 0.1; done
  $nsx "$OURS" node format --cfg "$dir/etc/slapos.cfg" --now >"$dir/log/format.log" 2>&1
  $nsx "$OURS" supply --cfg "$dir/etc/client.cfg" "$sr" COMP-BENCH >/dev/null 2>&1
  for i in $(seq 1 "$N"); do
    $nsx "$OURS" request --cfg "$dir/etc/client.cfg" "inst$i" "$sr" --parameters "greeting=hello $i" >/dev/null 2>&1 || true
  done
  local t0 t1 t2 t3 t4 best rss
  t0=$(now); $nsx $node node software --cfg "$dir/etc/slapos.cfg" --now >"$dir/log/software.log" 2>&1 || { tail -20 "$dir/log/software.log" >&2; exit 1; }
  t1=$(now); $nsx $node node software --cfg "$dir/etc/slapos.cfg" --now >"$dir/log/software-noop.log" 2>&1
  # first instantiation: exit 2 (a promise checked before its server was
  # up) still deployed the partition; it is reprocessed by the settle runs
  local rc=0
  t2=$(now); /usr/bin/time -f '%U user %S sys %P cpu' -o "$dir/log/instance.time" $nsx $node node instance --cfg "$dir/etc/slapos.cfg" --now >"$dir/log/instance.log" 2>&1 || rc=$?
  t3=$(now)
  case $rc in 0|2) ;; *) tail -20 "$dir/log/instance.log" >&2; log "$name: node instance exited with $rc"; exit 1 ;; esac
  log "$name: first instance run exited with $rc ($(tail -1 "$dir/log/instance.time"))"
  for _ in 1 2 3; do
    $nsx $node node instance --cfg "$dir/etc/slapos.cfg" --now >"$dir/log/instance-settle.log" 2>&1 && break
  done
  local deployed
  deployed=$(ls "$dir"/srv/etc/supervisord.conf.d/*.conf 2>/dev/null | wc -l)
  [ "$deployed" = "$N" ] || { log "$name: only $deployed of $N partitions deployed"; exit 1; }
  best=999
  for _ in 1 2 3; do
    local a b
    a=$(now); $nsx $node node instance --cfg "$dir/etc/slapos.cfg" --now >"$dir/log/instance-noop.log" 2>&1; b=$(now)
    best=$(awk -v x="$(elapsed "$a" "$b")" -v y="$best" 'BEGIN { print (x < y) ? x : y }')
  done
  rss=$( { /usr/bin/time -f '%M' $nsx $node node instance --cfg "$dir/etc/slapos.cfg" --now >/dev/null 2>"$dir/log/rss.txt"; } ; tail -1 "$dir/log/rss.txt")
  echo "$(elapsed "$t0" "$t1") $(elapsed "$t1" "$t2") $(elapsed "$t2" "$t3") $best $rss"
  stop_node "$dir"
}

if [ "${BENCH_NODE_PYTHON:-1}" = 1 ]; then
  log "$N partitions: Python node (slapos.core 1.26.1)"
  bench py "$PY_SLAPOS" "bnp" >"$WORK/py.result"
  read -r py_sw py_swn py_in py_inn py_rss <"$WORK/py.result"
else
  py_sw=0 py_swn=0 py_in=0 py_inn=0 py_rss=0
fi
log "$N partitions: our node"
bench ours "$OURS" "bno" >"$WORK/ours.result"
read -r us_sw us_swn us_in us_inn us_rss <"$WORK/ours.result"
ratio() { awk -v p="$1" -v o="$2" 'BEGIN { printf "%.1fx", p / o }'; }
printf '\n== node software / instance, %s partitions (seconds; ratio = Python / ours)\n' "$N"
printf '%-36s %10s %10s %8s\n' "" python ours ratio
printf '%-36s %10s %10s %8s\n' "node software (first build)" "$py_sw" "$us_sw" "$(ratio "$py_sw" "$us_sw")"
printf '%-36s %10s %10s %8s\n' "node software (no-op)" "$py_swn" "$us_swn" "$(ratio "$py_swn" "$us_swn")"
printf '%-36s %10s %10s %8s\n' "node instance (first, $N partitions)" "$py_in" "$us_in" "$(ratio "$py_in" "$us_in")"
printf '%-36s %10s %10s %8s\n' "node instance (no-op, best of 3)" "$py_inn" "$us_inn" "$(ratio "$py_inn" "$us_inn")"
printf '%-36s %10s %10s %8s\n' "peak RSS, no-op instance (MB)" "$((py_rss / 1024))" "$((us_rss / 1024))" "$(ratio "$py_rss" "$us_rss")"
