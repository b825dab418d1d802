#!/bin/bash
# Creates (or reuses) the Python venv that holds the real parts we drive or
# compare against: zc.buildout and supervisor (used by our node), and
# slapos.core 1.26.1 (the reference peer in interoperability tests and
# benchmarks). Same pinned set and same default location as
# ../shared/reference/python-e2e/run.sh, so both share one venv.
#
# Usage: scripts/python-venv.sh            prints the venv path on stdout
# Env:   SLAPOS_VENV   venv path (default /var/cache/slapos-e2e/venv-1.26.1)
#        SLAPOS_PYTHON base interpreter (default /usr/bin/python3); it must be
#                      executable by every node user (not under /root)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${SLAPOS_VENV:-/var/cache/slapos-e2e/venv-1.26.1}
BASE_PYTHON=${SLAPOS_PYTHON:-/usr/bin/python3}
REQ="$HERE/scripts/python-requirements.txt"
log() { printf '[python-venv] %s\n' "$*" >&2; }

stamp="$VENV/.slapos-rs-requirements"
if [ -x "$VENV/bin/python3" ] && [ -f "$stamp" ] && cmp -s "$stamp" "$REQ"; then
  log "reusing $VENV"
else
  log "creating $VENV from $BASE_PYTHON (pip install -r $REQ)"
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  "$BASE_PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REQ" >&2
  cp "$REQ" "$stamp"
fi
site=$("$VENV/bin/python3" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# Each step below writes only what is not in place yet, so that a user can
# reuse a venv made by root (read-only for them).
put() {  # put FILE CONTENT: write FILE unless it holds CONTENT already
  [ "$(cat "$1" 2>/dev/null)" = "$2" ] && return 0
  printf '%s\n' "$2" >"$1" 2>/dev/null || { log "error: cannot write $1 (a venv of another user? set SLAPOS_VENV)"; exit 1; }
}
# slapos.core 1.26.1's node commands need Python >= 3.12's importlib.resources;
# the reference shim restores them on 3.11 (only the Python reference uses it)
if "$VENV/bin/python3" -c 'import sys; sys.exit(sys.version_info >= (3, 12))'; then
  put "$site/py311_resources_compat.py" "$(cat "$HERE/scripts/py311_resources_compat.py")"
  put "$site/py311_resources_compat.pth" "import py311_resources_compat"
fi
# zc.buildout >= 3 installs develop eggs with `pip install -e`: no build
# isolation, so that offline builds use the venv's setuptools
put "$VENV/pip.conf" "$(printf '[install]\nno-build-isolation = false')"
[ ! -O "$VENV" ] || chmod -R a+rX "$VENV"
echo "$VENV"
