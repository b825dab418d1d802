#!/bin/bash
# Installs what building and testing slapos-rs needs on a Debian machine:
# system packages (apt) and a Rust toolchain when none is there (the lint
# tools are installed by scripts/lint.sh, which alone needs them).
# Idempotent. The packages are installed as root: directly when run as root,
# through sudo otherwise (a clear message when there is no sudo); the Rust
# toolchain is the invoking user's (rustup in ~/.cargo).
#
# Usage: bash scripts/install-deps.sh            packages, then Rust
#        bash scripts/install-deps.sh --system   the packages only
set -euo pipefail
log() { printf '[install-deps] %s\n' "$*" >&2; }
SUDO=
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null 2>&1 && SUDO=sudo || SUDO=none
fi

PACKAGES=(
  build-essential pkg-config ca-certificates curl  # Rust crates with C parts (bundled SQLite)
  python3 python3-venv python3-dev                 # the venv: zc.buildout, supervisor, slapos.core
  iproute2 passwd login util-linux procps          # ip netns/useradd/runuser for node tests
  bc                                               # arithmetic in the bench scripts
  postgresql                                       # the master on PostgreSQL: its tests start their own server (initdb, pg_ctl)
  haproxy                                          # the fleet test: HAProxy in front of two masters
  chromium chromium-driver                         # the panel's browser tests (needs_browser, needs_root_e2e_panel_*)
  socat                                            # the portredir manager runs it (node tests)
)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$SUDO" = none ]; then
    log "error: missing system packages: ${missing[*]}"
    log "install them as root (apt-get install ${missing[*]}), or install sudo, then run this again"
    exit 1
  fi
  log "apt-get install ${missing[*]}${SUDO:+ (through sudo)}"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  log "system packages present"
fi
[ "${1:-}" != --system ] || exit 0

if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    log "cargo found in ~/.cargo/bin (add it to PATH)"
  else
    log "installing the Rust toolchain with rustup (https://rustup.rs)"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
  fi
fi
