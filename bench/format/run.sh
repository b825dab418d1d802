#!/bin/bash
# `slapos node format`: ours and the Python one (slapos.core 1.26.1) side by
# side, each in a fresh network namespace (a bridge with a ULA prefix) with
# users of its own prefix, removed afterwards: first run and no-op re-run,
# for 3 and 100 partitions. The Python 100-partition run sleeps 2 s per
# address (about 7 minutes): it runs only with BENCH_FORMAT_PYTHON_100=1.
# Needs root. Usage: sudo bash bench/format/run.sh
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
[ "$(id -u)" = 0 ] || { echo "needs root" >&2; exit 1; }
VENV=$(bash "$ROOT/scripts/python-venv.sh")
(cd "$ROOT" && cargo build --release --quiet -p slapos)
OURS="$ROOT/target/release/slapos"
WORK=$(mktemp -d)
NS=""
USERS=()
cleanup() {
  [ -n "$NS" ] && ip netns del "$NS" 2>/dev/null || true
  for u in "${USERS[@]}"; do userdel "$u" 2>/dev/null || true; groupdel "$u" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

# measure NAME PROGRAM PARTITIONS PREFIX -> "first_s rerun_s"
measure() {
  local name=$1 prog=$2 n=$3 prefix=$4 dir="$WORK/$1-$3"
  mkdir -p "$dir"
  NS="bfmt$$"
  ip netns add "$NS"
  ip netns exec "$NS" ip link set lo up
  ip netns exec "$NS" ip link add br0 type bridge
  ip netns exec "$NS" ip link add br0p0 type veth peer name br0p1
  ip netns exec "$NS" ip link set br0p0 master br0
  ip netns exec "$NS" ip link set br0p0 up
  ip netns exec "$NS" ip link set br0p1 up
  ip netns exec "$NS" ip link set br0 up
  ip netns exec "$NS" ip -6 addr add fd00:bf::1/64 dev br0 nodad
  USERS+=("${prefix}soft")
  for i in $(seq 0 $((n - 1))); do USERS+=("${prefix}user$i"); done
  cat >"$dir/slapos.cfg" <<CFG
[slapos]
computer_id = COMP-BENCH
master_url = http://127.0.0.1:9
software_root = $dir/opt
instance_root = $dir/srv
[slapformat]
interface_name = br0
partition_amount = $n
computer_xml = $dir/slapos.xml
computer_json = $dir/slapos.json
partition_base_name = slappart
user_base_name = ${prefix}user
software_user = ${prefix}soft
tap_base_name = ${prefix}tap
create_tap = false
ipv4_local_network = 10.0.0.0/16
CFG
  # no master listens: both exit 2 (formatted, not reported) after the local work
  local t0 t1 t2
  t0=$(date +%s.%N)
  ip netns exec "$NS" "$prog" node format --cfg "$dir/slapos.cfg" --now >"$dir/first.log" 2>&1 || true
  t1=$(date +%s.%N)
  ip netns exec "$NS" "$prog" node format --cfg "$dir/slapos.cfg" --now >"$dir/again.log" 2>&1 || true
  t2=$(date +%s.%N)
  grep -q "fd00:bf::$(printf '%x' $((n + 1)))" <(ip netns exec "$NS" ip -6 addr show dev br0) ||
    { echo "$name: the last partition address is missing" >&2; tail -5 "$dir/first.log" >&2; }
  ip netns del "$NS"; NS=""
  for u in "${USERS[@]}"; do userdel "$u" 2>/dev/null || true; groupdel "$u" 2>/dev/null || true; done
  USERS=()
  echo "$(echo "$t1 - $t0" | bc -l) $(echo "$t2 - $t1" | bc -l)"
}

printf '%-28s %10s %10s %10s\n' case rust python ratio
row() { printf '%-28s %9.3fs %9.3fs %9.1fx\n' "$1" "$2" "$3" "$(echo "$3 / $2" | bc -l)"; }
read -r r3a r3b < <(measure rust "$OURS" 3 bfr)
read -r p3a p3b < <(measure python "$VENV/bin/slapos" 3 bfp)
row "3 partitions, first run" "$r3a" "$p3a"
row "3 partitions, re-run" "$r3b" "$p3b"
read -r r100a r100b < <(measure rust "$OURS" 100 bfr)
if [ "${BENCH_FORMAT_PYTHON_100:-0}" = 1 ]; then
  read -r p100a p100b < <(measure python "$VENV/bin/slapos" 100 bfp)
  row "100 partitions, first run" "$r100a" "$p100a"
  row "100 partitions, re-run" "$r100b" "$p100b"
else
  printf '%-28s %9.3fs %10s\n' "100 partitions, first run" "$r100a" "(skipped)"
  printf '%-28s %9.3fs %10s\n' "100 partitions, re-run" "$r100b" "(skipped)"
fi
