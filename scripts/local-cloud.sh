#!/bin/bash
# A whole SlapOS cloud on this machine, without root: our master
# (`slapos proxy start`), a node formatted in local mode (partitions owned by
# the invoking user, addresses in a loopback 127.X.Y.0/24 of its own), the example software
# release examples/hello-http supplied and requested, built with the real
# zc.buildout (`slapos node software`) and instantiated under the real
# supervisord (`slapos node instance`). Prints the instance's connection
# parameters and checks that its URL answers. Running it again is a no-op.
#
# Usage:  bash scripts/local-cloud.sh [up|status|down]     (default: up)
# Env:    SLAPOS_LOCAL_DIR  state directory (default: ~/.slapos-local)
#         SLAPOS_BIN        the slapos binary (default: target/release/slapos)
#         SLAPOS_VENV       the Python venv with zc.buildout and supervisor
#                           (default: made by scripts/python-venv.sh)
#         SLAPOS_LOCAL_PORT master port (default: a free port, chosen once)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=${SLAPOS_LOCAL_DIR:-$HOME/.slapos-local}
SLAPOS=${SLAPOS_BIN:-$ROOT/target/release/slapos}
what=${1:-up}
log() { printf '[local-cloud] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

CFG="$DIR/etc/slapos.cfg"
CLIENT_CFG="$DIR/etc/slapos-client.cfg"
PROXY_PID="$DIR/var/run/slapos-proxy.pid"

proxy_running() {
  [ -f "$PROXY_PID" ] && kill -0 "$(cat "$PROXY_PID")" 2>/dev/null &&
    grep -q slapos "/proc/$(cat "$PROXY_PID")/cmdline" 2>/dev/null
}

case "$what" in
  down)
    if [ -f "$CFG" ] && [ -S "$DIR/srv/slapgrid/sv.sock" ]; then
      log "stopping the node's supervisord and the instances' services"
      "$SLAPOS" node supervisorctl --cfg "$CFG" shutdown >/dev/null 2>&1 || true
    fi
    if proxy_running; then
      log "stopping the master (pid $(cat "$PROXY_PID"))"
      kill -TERM "$(cat "$PROXY_PID")"
      for _ in $(seq 1 50); do proxy_running || break; sleep 0.1; done
    fi
    rm -f "$PROXY_PID"
    log "stopped (state kept in $DIR; remove it to start from scratch)"
    exit 0 ;;
  status)
    proxy_running && log "master running (pid $(cat "$PROXY_PID"))" || log "master not running"
    [ -f "$CFG" ] && "$SLAPOS" node status --cfg "$CFG" || true
    exit 0 ;;
  up) ;;
  *) die "usage: $0 [up|status|down]" ;;
esac

[ -x "$SLAPOS" ] || die "$SLAPOS not found: build it with cargo build --release"
VENV=${SLAPOS_VENV:-$(bash "$ROOT/scripts/python-venv.sh")}
[ -x "$VENV/bin/buildout" ] && [ -x "$VENV/bin/supervisord" ] || die "$VENV has no buildout/supervisord"
export PATH="$VENV/bin:$PATH"

mkdir -p "$DIR"/{etc,log,var/run,opt/slapgrid,srv/slapgrid,sr}
# the example software release, with its absolute path
SR_DIR="$DIR/sr/hello-http"
if [ ! -f "$SR_DIR/software.cfg" ]; then
  mkdir -p "$SR_DIR"
  cp -r "$ROOT/examples/hello-http/." "$SR_DIR/"
  sed "s|@SR_DIR@|$SR_DIR|g" "$SR_DIR/software.cfg.in" >"$SR_DIR/software.cfg"
fi
SR_URL="$SR_DIR/software.cfg"

if [ ! -f "$CFG" ]; then
  PORT=${SLAPOS_LOCAL_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
  log "new local cloud in $DIR (master on 127.0.0.1:$PORT)"
  cat >"$CFG" <<EOF
[slapos]
computer_id = local
master_url = http://127.0.0.1:$PORT
software_root = $DIR/opt/slapgrid
instance_root = $DIR/srv/slapgrid
buildout = $VENV/bin/buildout
pidfile_software = $DIR/var/run/slapos-node-software.pid
pidfile_instance = $DIR/var/run/slapos-node-instance.pid
pidfile_report = $DIR/var/run/slapos-node-report.pid

[slapformat]
partition_amount = 3
computer_xml = $DIR/var/slapos.xml
computer_json = $DIR/var/slapos.json
interface_name = lo
create_tap = false

[slapproxy]
host = 127.0.0.1
port = $PORT
database_uri = $DIR/var/proxy.db
EOF
  printf '[slapos]\nmaster_url = http://127.0.0.1:%s\n' "$PORT" >"$CLIENT_CFG"
fi
PORT=$(sed -n 's/^port = //p' "$CFG")

if proxy_running; then
  log "master already running (pid $(cat "$PROXY_PID"))"
else
  log "starting the master: slapos proxy start (log: $DIR/log/slapos-proxy.log)"
  nohup "$SLAPOS" proxy start --cfg "$CFG" --log-file "$DIR/log/slapos-proxy.log" >"$DIR/log/slapos-proxy.out" 2>&1 &
  echo $! >"$PROXY_PID"
  for _ in $(seq 1 100); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 1)" 2>/dev/null && break
    proxy_running || { cat "$DIR/log/slapos-proxy.out" >&2; die "the master did not start"; }
    sleep 0.1
  done
fi

step() { log "\$ slapos $*"; "$SLAPOS" "$@"; }
step node format --cfg "$CFG" --local --now
step supply --cfg "$CLIENT_CFG" "$SR_URL" local
step request --cfg "$CLIENT_CFG" hello "$SR_URL" --parameters "greeting=Hello from a local SlapOS cloud" >/dev/null || true
step node software --cfg "$CFG" --now
step node instance --cfg "$CFG" --now
CONN=$("$SLAPOS" request --cfg "$CLIENT_CFG" hello "$SR_URL" --parameters "greeting=Hello from a local SlapOS cloud" --json)
log "connection parameters of the instance 'hello':"
echo "$CONN"
URL=$(printf '%s' "$CONN" | python3 -c 'import json, sys; d = json.load(sys.stdin); print(d.get("connection_parameters", d).get("url", ""))')
[ -n "$URL" ] || die "the instance published no url yet"
for _ in $(seq 1 50); do
  if ANSWER=$(python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=2).read().decode().strip())' "$URL" 2>/dev/null); then
    log "$URL answers: $ANSWER"
    log "stop it with: bash scripts/local-cloud.sh down   (or sudo bash scripts/quickstart.sh stop)"
    log "the web panel (the site, the instance, its actions):"
    echo "http://127.0.0.1:$PORT/panel/"
    exit 0
  fi
  sleep 0.2
done
die "$URL does not answer"
