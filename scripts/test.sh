#!/bin/bash
# The test command of the README and of CI (.ci/run). Steps, in order:
#   lint  the style and dependency checks: scripts/lint.sh
#   fast  `cargo test --workspace`: no root, no network, no Python, under a
#         minute; the tests that need more are #[ignore]d and counted here
#   slow  the ignored tests: `needs_venv` ones (the project venv: the real
#         zc.buildout, supervisord, Python master and client) and, as root,
#         `needs_root` ones (users, network namespaces); as a user the
#         needs_root ones are left out, and said so
#   e2e   as root, the end-to-end life cycles of crates/slapos/tests/e2e.rs
#         and the fleet of crates/slapos/tests/fleet.rs (10 nodes, two
#         masters behind HAProxy on PostgreSQL) (left out of the slow tier;
#         alone: scripts/e2e.sh)
# A test that cannot run where it is asked to fails; nothing passes unrun.
# (Steps are called in an `||` list, where bash's -e does not apply: each
# step returns its failures itself.)
#
# Usage: bash scripts/test.sh [all|lint|fast|slow|e2e]...   (default: all)
# Env:   SLAPOS_VENV   the project venv (made by scripts/python-venv.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
log() { printf '[test] %s\n' "$*" >&2; }
is_root() { [ "$(id -u)" = 0 ]; }
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

# cargo test with its output kept; prints the totals of its "test result:"
# lines (so that the ignored count is never lost in the scroll)
cargo_test() {  # cargo_test NAME ARGS...
  local name=$1 rc=0
  shift
  log "cargo test $*"
  cargo test "$@" 2>&1 | tee "$OUT/$name.log" || rc=$?
  awk -v name="$name" '/^test result:/ { p += $4; f += $6; i += $8 }
    END { printf "[test] %s: %d passed, %d failed, %d ignored\n", name, p, f, i }' "$OUT/$name.log" >&2
  return "$rc"
}

step_lint() {
  # fmt, clippy and the unused-dependency check (scripts/lint.sh, when present)
  if [ -f scripts/lint.sh ]; then
    bash scripts/lint.sh
  else
    log "lint: no scripts/lint.sh yet"
  fi
}

step_fast() {
  local t=$SECONDS
  cargo_test "fast tier" --workspace --no-fail-fast || return 1
  log "fast tier took $((SECONDS - t)) s; the ignored tests are the slow tier (bash scripts/test.sh slow)"
}

step_slow() {
  local venv
  venv=$(bash scripts/python-venv.sh) || {
    log "cannot make the project venv at ${SLAPOS_VENV:-/var/cache/slapos-e2e/venv-1.26.1}: set SLAPOS_VENV to a writable place"
    return 1
  }
  export SLAPOS_VENV=$venv
  log "python venv: $SLAPOS_VENV"
  if is_root; then
    cargo_test "slow tier" --workspace --no-fail-fast -- --ignored --skip needs_root_e2e_
  else
    local n
    n=$(cargo test --workspace -q -- --list --ignored 2>/dev/null | grep -c 'needs_root.*: test$' || true)
    log "not root: the $n needs_root tests are skipped (run this as root to include them)"
    cargo_test "slow tier (needs_venv)" --workspace --no-fail-fast -- --ignored needs_venv
  fi
}

step_e2e() {
  # crates/slapos/tests/e2e.rs: a whole node life cycle, five ways (all
  # ours; our node and client against the Python master; the Python node
  # and client against ours; both of ours and the Python node and client
  # against our master over HTTPS with certificates), one after the other;
  # then the fleet (10 nodes, two masters behind HAProxy on PostgreSQL, one
  # killed)
  if ! is_root; then
    log "end-to-end runs skipped: they need root"
    return 0
  fi
  SLAPOS_VENV=$(bash scripts/python-venv.sh) || return 1
  export SLAPOS_VENV
  cargo_test "end-to-end" -p slapos --test e2e --test fleet --no-fail-fast -- --ignored --test-threads=1 needs_root_e2e_
}

steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(all)
[ "${steps[*]}" != all ] || steps=(lint fast slow e2e)
for s in "${steps[@]}"; do
  case "$s" in
    lint|fast|slow|e2e) "step_$s" || { log "$s: FAILED"; exit 1; } ;;
    *) log "unknown step '$s' (all, lint, fast, slow, e2e)"; exit 2 ;;
  esac
done
log "all good: ${steps[*]}"
