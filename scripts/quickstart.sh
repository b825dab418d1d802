#!/bin/bash
# The README's main job, on a fresh Debian machine: installs what is needed
# (apt packages, Rust, the project's Python venv with the real zc.buildout,
# supervisor and slapos.core from PyPI), builds target/release/slapos, then
# brings up a whole local cloud **without root** (scripts/local-cloud.sh,
# run as the user who called it through sudo, or as the system user
# `slapos-demo` when logged in as root): our master, a node formatted in
# local mode, the example software release examples/hello-http supplied,
# requested, built and instantiated under supervisord. Prints the instance's
# connection parameters; its URL answers. A second run is a no-op.
#
# The system packages and the venv need root: run as root it goes on; run
# as a user it runs itself again through sudo (and says so). Rust and the
# build belong to that user (their ~/.cargo, this checkout's target/), so
# that `bash scripts/test.sh` works for them afterwards.
#
# Usage:  bash scripts/quickstart.sh          bring it up (again)
#         bash scripts/quickstart.sh stop     stop the services and the master
#         bash scripts/quickstart.sh status   what runs
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
what=${1:-up}
log() { printf '[quickstart] %s\n' "$*" >&2; }
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    log "not root: running again through sudo (system packages and the venv need root; the cloud runs as $(id -un))"
    exec sudo -- bash "$ROOT/scripts/quickstart.sh" "$@"
  fi
  log "error: this needs root (system packages, the venv) and there is no sudo: run it as root (bash $ROOT/scripts/quickstart.sh)"
  exit 1
fi

# the user the cloud runs as: whoever called sudo, else a system user
USER_NAME=${SUDO_USER:-}
if [ -z "$USER_NAME" ] || [ "$USER_NAME" = root ]; then
  USER_NAME=slapos-demo
  if ! getent passwd "$USER_NAME" >/dev/null; then
    useradd --system --create-home --home-dir /var/lib/slapos-demo --shell /bin/bash "$USER_NAME"
    log "created system user $USER_NAME (home /var/lib/slapos-demo)"
  fi
fi
USER_HOME=$(getent passwd "$USER_NAME" | cut -d: -f6)
# what the user runs, readable by them even when the checkout is not
DIST=/var/lib/slapos-quickstart-dist
as_user() { runuser -u "$USER_NAME" -- env HOME="$USER_HOME" SLAPOS_VENV="${VENV:-}" "$@"; }

case "$what" in
  stop|down) as_user bash "$DIST/scripts/local-cloud.sh" down; exit 0 ;;
  status) as_user bash "$DIST/scripts/local-cloud.sh" status; exit 0 ;;
  up) ;;
  *) log "usage: $0 [up|stop|status]"; exit 2 ;;
esac

bash "$ROOT/scripts/install-deps.sh" --system
VENV=$(bash "$ROOT/scripts/python-venv.sh")
# Rust and the build: the calling user's when they can write the checkout
# (a root-owned target/ would stop their `cargo test`), else root's
builder=root
if [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ]; then
  if runuser -u "$SUDO_USER" -- test -w "$ROOT" && { [ ! -e "$ROOT/target" ] || runuser -u "$SUDO_USER" -- test -w "$ROOT/target"; }; then
    builder=$SUDO_USER
  else
    log "$SUDO_USER cannot write $ROOT (or its target/): building as root"
  fi
fi
as_builder() {
  if [ "$builder" = root ]; then
    PATH="$HOME/.cargo/bin:$PATH" "$@"
  else
    local home
    home=$(getent passwd "$builder" | cut -d: -f6)
    runuser -u "$builder" -- env HOME="$home" PATH="$home/.cargo/bin:$PATH" "$@"
  fi
}
as_builder bash "$ROOT/scripts/install-deps.sh"
log "building target/release/slapos (as $builder)"
as_builder bash -c 'cd "$1" && cargo build --release --quiet -p slapos' _ "$ROOT"
rm -rf "$DIST.new"
mkdir -p "$DIST.new/target/release" "$DIST.new/scripts"
cp "$ROOT/target/release/slapos" "$DIST.new/target/release/"
cp "$ROOT/scripts/local-cloud.sh" "$ROOT/scripts/python-venv.sh" "$ROOT/scripts/python-requirements.txt" "$DIST.new/scripts/"
cp -r "$ROOT/examples" "$DIST.new/"
chmod -R a+rX "$DIST.new"
rm -rf "$DIST" && mv "$DIST.new" "$DIST"
log "bringing up the local cloud as $USER_NAME (state in $USER_HOME/.slapos-local)"
as_user bash "$DIST/scripts/local-cloud.sh" up
log "stop it with: bash scripts/quickstart.sh stop"
PANEL_PORT=$(sed -n 's/^port = //p' "$USER_HOME/.slapos-local/etc/slapos.cfg" 2>/dev/null | head -n1)
log "the web panel: http://127.0.0.1:${PANEL_PORT:-8080}/panel/"
