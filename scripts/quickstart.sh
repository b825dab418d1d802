#!/bin/bash
# The README's main job, on a fresh Debian machine (as root, for the system
# packages): installs what is needed (apt packages, Rust, the project's
# Python venv with the real zc.buildout, supervisor and slapos.core from
# PyPI), builds target/release/slapos, then brings up a whole local cloud
# **without root** (scripts/local-cloud.sh, run as $SUDO_USER or as the
# system user `slapos-demo`): our master, a node formatted in local mode, the
# example software release examples/hello-http supplied, requested, built
# and instantiated under supervisord. Prints the instance's connection
# parameters; its URL answers. A second run is a no-op.
#
# Usage:  sudo bash scripts/quickstart.sh          bring it up (again)
#         sudo bash scripts/quickstart.sh stop     stop the services and the master
#         sudo bash scripts/quickstart.sh status   what runs
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
what=${1:-up}
log() { printf '[quickstart] %s\n' "$*" >&2; }
[ "$(id -u)" = 0 ] || { log "run me as root (sudo bash $0): it installs system packages"; exit 1; }

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

bash "$ROOT/scripts/install-deps.sh"
export PATH="$HOME/.cargo/bin:$PATH"
VENV=$(bash "$ROOT/scripts/python-venv.sh")
log "building target/release/slapos"
(cd "$ROOT" && cargo build --release --quiet -p slapos)
rm -rf "$DIST.new"
mkdir -p "$DIST.new/target/release" "$DIST.new/scripts"
cp "$ROOT/target/release/slapos" "$DIST.new/target/release/"
cp "$ROOT/scripts/local-cloud.sh" "$ROOT/scripts/python-venv.sh" "$ROOT/scripts/python-requirements.txt" "$DIST.new/scripts/"
cp -r "$ROOT/examples" "$DIST.new/"
chmod -R a+rX "$DIST.new"
rm -rf "$DIST" && mv "$DIST.new" "$DIST"
log "bringing up the local cloud as $USER_NAME (state in $USER_HOME/.slapos-local)"
as_user bash "$DIST/scripts/local-cloud.sh" up
log "stop it with: sudo bash scripts/quickstart.sh stop"
