#!/bin/bash
# The binary cache: a release whose build does real work (bench/cache/sr:
# a C program of 2,000 functions compiled with -O2, pip and setuptools
# installed from local wheels) on one node (network namespace with a
# bridge, our master with its /shacache, our `node format`):
#   1. our node builds it (and uploads it to the master's cache);
#   2. our node, with an empty software root, installs it from the cache;
#   3. the Python node (slapos.core 1.26.1), with an empty software root,
#      installs it from the same cache;
#   4. 100 concurrent downloads of the tarball from the master's cache
#      (each checked against its SHA-512): wall time, errors.
# A marker file proves which runs built (the build step appends to it).
# Needs root. Usage: sudo bash bench/cache/run.sh
# SLAPOS=path/to/slapos (default: the debug build, built here); BENCH_CACHE_CLIENTS=100.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CLIENTS=${BENCH_CACHE_CLIENTS:-100}
[ "$(id -u)" = 0 ] || { echo "needs root" >&2; exit 1; }
VENV=${SLAPOS_VENV:-$(bash "$ROOT/scripts/python-venv.sh")}
if [ -z "${SLAPOS:-}" ]; then
  (cd "$ROOT" && cargo build --quiet -p slapos)
  SLAPOS="$ROOT/target/debug/slapos"
fi
WHEELS_FROM=${BENCH_CACHE_WHEELS:-/usr/share/python-wheels}
ls "$WHEELS_FROM"/pip-*.whl "$WHEELS_FROM"/setuptools-*.whl >/dev/null || { echo "needs pip and setuptools wheels in $WHEELS_FROM (Debian: python3-pip-whl, python3-setuptools-whl)" >&2; exit 1; }
export PATH="$VENV/bin:$PATH"
WORK=$(mktemp -d /tmp/bench-cache.XXXXXX)
chmod 755 "$WORK"
NS="bc$$"
PREFIX="bcc"
MASTER_PID=""
log() { printf '[bench-cache %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
cleanup() {
  if [ -n "$MASTER_PID" ]; then kill -TERM "$MASTER_PID" 2>/dev/null || true; wait "$MASTER_PID" 2>/dev/null || true; fi
  local left; left=$(ip netns pids "$NS" 2>/dev/null || true)
  [ -n "$left" ] && kill -KILL $left 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
  for u in "${PREFIX}soft" "${PREFIX}user0"; do userdel "$u" 2>/dev/null || true; groupdel "$u" 2>/dev/null || true; done
  if [ "${BENCH_CACHE_KEEP:-0}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
nsx() { ip netns exec "$NS" "$@"; }

ip netns add "$NS"
nsx ip link set lo up
nsx ip link add br0 type bridge
nsx ip link add br0p0 type veth peer name br0p1
nsx ip link set br0p0 master br0
nsx ip link set br0p0 up
nsx ip link set br0p1 up
nsx ip link set br0 up
nsx ip -6 addr add fd00:bc::1/64 dev br0 nodad

mkdir -p "$WORK"/{etc,log,var,sr,opt,srv,wheels}
cp -r "$ROOT/bench/cache/sr" "$WORK/"
cp "$WHEELS_FROM"/pip-*.whl "$WHEELS_FROM"/setuptools-*.whl "$WORK/wheels/"
MARKER="$WORK/var/built"
touch "$MARKER"; chmod 666 "$MARKER"
sed -e "s|@SR_DIR@|$WORK/sr|g" -e "s|@WHEELS@|$WORK/wheels|g" -e "s|@MARKER@|$MARKER|g" "$WORK/sr/software.cfg.in" >"$WORK/sr/software.cfg"
chmod -R a+rX "$WORK/sr" "$WORK/wheels"
SR="$WORK/sr/software.cfg"
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=bench-cache -keyout "$WORK/etc/sign.key" -out "$WORK/etc/sign.crt" 2>/dev/null
PORT=8766
BASE="http://127.0.0.1:$PORT/shacache"
cat >"$WORK/etc/slapos.cfg" <<CFG
[slapos]
computer_id = COMP-BENCH-CACHE
master_url = http://127.0.0.1:$PORT
software_root = $WORK/opt/slapgrid
instance_root = $WORK/srv/slapgrid
pidfile_software = $WORK/var/sr.pid
pidfile_instance = $WORK/var/cp.pid
pidfile_report = $WORK/var/ur.pid
[slapformat]
interface_name = br0
partition_amount = 1
computer_xml = $WORK/var/slapos.xml
computer_json = $WORK/var/slapos.json
user_base_name = ${PREFIX}user
software_user = ${PREFIX}soft
create_tap = false
ipv4_local_network = 10.0.0.0/16
[slapproxy]
host = 127.0.0.1
port = $PORT
database_uri = $WORK/var/proxy.db
shacache_content_directory = $WORK/srv/shacache
shacache_metadata_directory = $WORK/srv/shadir
[networkcache]
download-binary-cache-url = $BASE/cache
download-binary-dir-url = $BASE/dir
upload-binary-cache-url = $BASE/cache
upload-binary-dir-url = $BASE/dir
signature-private-key-file = $WORK/etc/sign.key
signature-certificate-list =
$(sed 's/^/  /' "$WORK/etc/sign.crt")
CFG
printf '[slapos]\nmaster_url = http://127.0.0.1:%s\n' "$PORT" >"$WORK/etc/client.cfg"
nsx "$SLAPOS" proxy start --cfg "$WORK/etc/slapos.cfg" >"$WORK/log/proxy.out" 2>&1 &
MASTER_PID=$!
for _ in $(seq 1 100); do nsx python3 -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 1)" 2>/dev/null && break; sleep 0.1; done
nsx "$SLAPOS" node format --cfg "$WORK/etc/slapos.cfg" --now >"$WORK/log/format.log" 2>&1
nsx "$SLAPOS" supply --cfg "$WORK/etc/client.cfg" "$SR" COMP-BENCH-CACHE >/dev/null 2>&1

builds() { wc -l <"$MARKER"; }
fresh_root() {  # moves the software root aside, makes an empty one like it
  local root="$WORK/opt/slapgrid" owner mode
  owner=$(stat -c %u:%g "$root"); mode=$(stat -c %a "$root")
  mv "$root" "$WORK/opt/slapgrid-$1"
  mkdir "$root"; chown "$owner" "$root"; chmod "$mode" "$root"
}
software() {  # software NAME PROGRAM: prints seconds
  local name=$1 program=$2 t0 t1
  t0=$(now)
  nsx "$program" node software --cfg "$WORK/etc/slapos.cfg" --now >"$WORK/log/$name.log" 2>&1 || { tail -30 "$WORK/log/$name.log" >&2; log "$name failed"; exit 1; }
  t1=$(now)
  elapsed "$t0" "$t1"
}

log "1. our node builds the release (and uploads it)"
build=$(software build "$SLAPOS")
[ "$(builds)" = 1 ] || { log "the build step did not run"; exit 1; }
grep -q "uploaded .* to the binary cache" "$WORK/log/build.log" || { grep -i cache "$WORK/log/build.log" >&2; log "no upload"; exit 1; }
TARBALL=$(ls "$WORK/srv/shacache" | grep -v '^\.' | head -1)
SIZE=$(stat -c %s "$WORK/srv/shacache/$TARBALL")

log "2. our node installs it from the cache (empty software root)"
fresh_root built
ours=$(software ours-from-cache "$SLAPOS")
[ "$(builds)" = 1 ] || { log "our node built instead of installing from the cache"; grep -i cache "$WORK/log/ours-from-cache.log" >&2; exit 1; }
"$WORK/opt/slapgrid/$(ls "$WORK/opt/slapgrid" | head -1)/parts/program/big" >/dev/null || { log "the installed program does not run"; exit 1; }

log "3. the Python node installs it from the same cache (empty software root)"
fresh_root ours
py=$(software python-from-cache "$VENV/bin/slapos")
if [ "$(builds)" = 1 ]; then py_note="from the cache"; else py_note="BUILT (did not use the cache; see its log)"; grep -i "cache" "$WORK/log/python-from-cache.log" | head -5 >&2; fi

log "4. $CLIENTS concurrent downloads of the tarball ($SIZE bytes)"
nsx python3 - "$BASE/cache/$TARBALL" "$CLIENTS" "$TARBALL" >"$WORK/log/downloads.txt" <<'PY'
import concurrent.futures, hashlib, sys, time, urllib.request
url, n, want = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def one(_):
    t = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=120) as r:
            h = hashlib.sha512()
            while True:
                b = r.read(1 << 16)
                if not b:
                    break
                h.update(b)
        return (h.hexdigest() == want, time.monotonic() - t, None)
    except Exception as e:
        return (False, time.monotonic() - t, repr(e))
t0 = time.monotonic()
with concurrent.futures.ThreadPoolExecutor(n) as pool:
    results = list(pool.map(one, range(n)))
wall = time.monotonic() - t0
lat = sorted(r[1] for r in results)
errors = [r[2] or "bad sha512" for r in results if not r[0]]
print("%.2f %d %.2f %.2f" % (wall, len(errors), lat[len(lat) // 2], lat[-1]))
for e in errors[:5]:
    print(e, file=sys.stderr)
PY
read -r wall errors p50 pmax <"$WORK/log/downloads.txt"

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1fx", a / b }'; }
printf '\n== binary cache (slapos: %s; tarball %s bytes)\n' "$SLAPOS" "$SIZE"
printf '%-52s %8s s\n' "our node: build + upload" "$build"
printf '%-52s %8s s  (%s faster)\n' "our node: install from the cache" "$ours" "$(ratio "$build" "$ours")"
printf '%-52s %8s s  (%s)\n' "Python node: install from the same cache" "$py" "$py_note"
printf '%-52s %8s s  errors %s, per download p50 %s s, max %s s\n' "$CLIENTS concurrent downloads from the master" "$wall" "$errors" "$p50" "$pmax"
