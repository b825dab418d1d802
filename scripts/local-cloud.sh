#!/bin/bash
# A local SlapOS cloud on this machine: a master (`slapos proxy start`) and a
# node formatted in local mode (no root needed, no network changes), with the
# example software release examples/hello-http supplied and requested.
#
#   bash scripts/local-cloud.sh up       install + build, start, deploy, print the connection parameters
#   bash scripts/local-cloud.sh status   master, supervisord and services
#   bash scripts/local-cloud.sh down     stop the node's supervisord and the master
#
# State lives in $SLAPOS_LOCAL_DIR (default ~/.slapos-local). `up` is
# idempotent: a second run finds everything in place and changes nothing.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=${SLAPOS_LOCAL_DIR:-$HOME/.slapos-local}
PORT=${SLAPOS_LOCAL_PORT:-4080}
PARTITIONS=${SLAPOS_LOCAL_PARTITIONS:-3}
COMPUTER=local-computer
INSTANCE=hello-http
SLAPOS="$ROOT/target/release/slapos"
log() { printf '[local-cloud] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

master_pid() {
  local pid
  pid=$(cat "$DIR/var/run/proxy.pid" 2>/dev/null) || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && grep -q slapos "/proc/$pid/cmdline" 2>/dev/null && echo "$pid"
}

write_config() {
  mkdir -p "$DIR/etc" "$DIR/var/run" "$DIR/log" "$DIR/sr"
  # the example software release, with its absolute path substituted
  cp -r "$ROOT/examples/hello-http/." "$DIR/sr/"
  sed "s|@SR_DIR@|$DIR/sr|g" "$ROOT/examples/hello-http/software.cfg.in" >"$DIR/sr/software.cfg.new"
  cmp -s "$DIR/sr/software.cfg.new" "$DIR/sr/software.cfg" 2>/dev/null && rm "$DIR/sr/software.cfg.new" ||
    mv "$DIR/sr/software.cfg.new" "$DIR/sr/software.cfg"
  rm -f "$DIR/sr/software.cfg.in"
  cat >"$DIR/etc/slapos.cfg.new" <<CFG
[slapos]
computer_id = $COMPUTER
master_url = http://127.0.0.1:$PORT
software_root = $DIR/opt/slapgrid
instance_root = $DIR/srv/slapgrid
root_check = false
pidfile_software = $DIR/var/run/slapos-node-software.pid
pidfile_instance = $DIR/var/run/slapos-node-instance.pid
pidfile_report = $DIR/var/run/slapos-node-report.pid
buildout = $VENV/bin/buildout

[slapformat]
# local mode: partitions owned by the invoking user, loopback addresses,
# no users or network changes
alter_user = false
alter_network = false
partition_amount = $PARTITIONS
partition_base_name = slappart
user_base_name = slapuser
tap_base_name = slaptap
create_tap = false
interface_name = lo
ipv4_local_network = 127.0.0.0/8
computer_xml = $DIR/var/slapos.xml
computer_json = $DIR/var/slapos.json

[slapproxy]
host = 127.0.0.1
port = $PORT
database_uri = $DIR/var/proxy.db
CFG
  cmp -s "$DIR/etc/slapos.cfg.new" "$DIR/etc/slapos.cfg" 2>/dev/null && rm "$DIR/etc/slapos.cfg.new" ||
    mv "$DIR/etc/slapos.cfg.new" "$DIR/etc/slapos.cfg"
  cat >"$DIR/etc/slapos-client.cfg" <<CFG
[slapos]
master_url = http://127.0.0.1:$PORT
master_rest_url = http://127.0.0.1:$PORT/hateoas/

[slapconsole]
CFG
}

up() {
  bash "$ROOT/scripts/install-deps.sh"
  export PATH="$HOME/.cargo/bin:$PATH"
  VENV=$(bash "$ROOT/scripts/python-venv.sh")
  export PATH="$VENV/bin:$PATH"
  log "building target/release/slapos"
  (cd "$ROOT" && cargo build --release --quiet -p slapos)
  write_config
  local cfg="$DIR/etc/slapos.cfg" ccfg="$DIR/etc/slapos-client.cfg"
  if pid=$(master_pid); then
    log "master already running (pid $pid) on http://127.0.0.1:$PORT"
  else
    log "starting the master on http://127.0.0.1:$PORT"
    nohup "$SLAPOS" proxy start --cfg "$cfg" --log-file "$DIR/log/slapos-proxy.log" \
      >>"$DIR/log/slapos-proxy.out" 2>&1 &
    echo $! >"$DIR/var/run/proxy.pid"
    for _ in $(seq 1 50); do
      (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
      sleep 0.2
    done
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null || die "the master did not start: see $DIR/log/slapos-proxy.out"
  fi
  log "slapos node format (local mode)"
  "$SLAPOS" node format --cfg "$cfg" --now --local
  local sr="$DIR/sr/software.cfg"
  "$SLAPOS" supply --cfg "$ccfg" "$sr" "$COMPUTER"
  "$SLAPOS" request --cfg "$ccfg" "$INSTANCE" "$sr" >/dev/null
  log "slapos node software"
  "$SLAPOS" node software --cfg "$cfg" --now
  log "slapos node instance"
  "$SLAPOS" node instance --cfg "$cfg" --now
  log "connection parameters of $INSTANCE:"
  "$SLAPOS" request --cfg "$ccfg" "$INSTANCE" "$sr"
  local url
  url=$("$SLAPOS" request --cfg "$ccfg" "$INSTANCE" "$sr" --json |
        "$VENV/bin/python3" -c 'import json,sys; print(json.load(sys.stdin).get("url", ""))')
  [ -n "$url" ] || die "the instance published no url yet; run this command again"
  log "$url answers: $("$VENV/bin/python3" -c 'import sys,urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode().strip())' "$url")"
}

status() {
  VENV=$(bash "$ROOT/scripts/python-venv.sh" 2>/dev/null)
  export PATH="$VENV/bin:$PATH"
  if pid=$(master_pid); then log "master running (pid $pid) on http://127.0.0.1:$PORT"; else log "master not running"; fi
  [ -f "$DIR/etc/slapos.cfg" ] && "$SLAPOS" node status --cfg "$DIR/etc/slapos.cfg" || true
}

down() {
  VENV=$(bash "$ROOT/scripts/python-venv.sh" 2>/dev/null)
  export PATH="$VENV/bin:$PATH"
  local spid
  spid=$(cat "$DIR/srv/slapgrid/var/run/supervisord.pid" 2>/dev/null || true)
  if [ -n "$spid" ] && kill -0 "$spid" 2>/dev/null && grep -q supervisord "/proc/$spid/cmdline"; then
    log "stopping supervisord (pid $spid) and the services"
    kill -TERM "$spid"
    for _ in $(seq 1 60); do kill -0 "$spid" 2>/dev/null || break; sleep 0.5; done
  fi
  if pid=$(master_pid); then
    log "stopping the master (pid $pid)"
    kill -TERM "$pid"
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  fi
  rm -f "$DIR/var/run/proxy.pid"
  log "stopped (state kept in $DIR; remove it to start afresh)"
}

case "${1:-}" in
  up) up ;;
  status) status ;;
  down) down ;;
  *) echo "usage: $0 up|status|down" >&2; exit 2 ;;
esac
