#!/bin/bash
# The lints CI holds the code to (the first step of scripts/test.sh):
# formatting (rustfmt.toml), clippy with warnings as errors on every target,
# and no unused dependency (cargo-machete). Installs what it needs when it is
# missing (rustup's minimal profile has neither rustfmt nor clippy).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
log() { printf '[lint] %s\n' "$*" >&2; }

if command -v rustup >/dev/null 2>&1; then
  rustup component add rustfmt clippy 2>&1 | grep -v "is up to date" >&2 || true
fi
if ! command -v cargo-machete >/dev/null 2>&1; then
  # cargo-machete rather than cargo-udeps: udeps needs nightly and a full build
  log "cargo install --locked cargo-machete (once)"
  cargo install --locked --quiet cargo-machete
fi

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
# --with-metadata: through `cargo metadata` machete knows a package's library
# name (md-5 is `md5` in the code) and also checks dev-dependencies.
log "cargo machete"
cargo machete --with-metadata
log "clean"
