#!/bin/bash
# End-to-end acceptance: runs the Rust test crates/slapos/tests/e2e.rs (the
# whole node life cycle — format, supply, request, software, instance,
# promises, failures, destruction — in a private network namespace, with
# test users that it removes), one pairing or all five:
#   ours           our master, our node, our client;
#   python-master  the Python master, our node and our client;
#   python-node    our master, the Python node and the Python client;
#   https          ours over HTTPS with certificates: the node joins with a
#                  token (node register), the user gets a certificate
#                  (configure client), the instance requests a child with
#                  its partition certificate;
#   https-python-node  the same with the Python node and client (their own
#                  node register and configure client) against our master;
#   fleet          crates/slapos/tests/fleet.rs: 10 of our nodes, two of our
#                  masters on PostgreSQL behind HAProxy, one killed -9.
# Needs root (the test fails and says so otherwise) and the project venv
# (made or reused here by scripts/python-venv.sh). Each run prints its timings.
# Usage: bash scripts/e2e.sh [ours|python-master|python-node|https|https-python-node|fleet|all]   (default all)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
case "${1:-all}" in
  ours) filter=needs_root_e2e_all_ours ;;
  python-master) filter=needs_root_e2e_our_node_against_python_master ;;
  python-node) filter=needs_root_e2e_python_node_against_our_master ;;
  https) filter=needs_root_e2e_https_all_ours ;;
  https-python-node) filter=needs_root_e2e_https_python_node_against_our_master ;;
  fleet) filter=needs_root_e2e_fleet_ ;;
  all) filter=needs_root_e2e_ ;;
  *) echo "usage: $0 [ours|python-master|python-node|https|https-python-node|fleet|all]" >&2; exit 2 ;;
esac
export PATH="$HOME/.cargo/bin:$PATH"
SLAPOS_VENV=$(bash "$ROOT/scripts/python-venv.sh")
export SLAPOS_VENV
cd "$ROOT"
exec cargo test -p slapos --test e2e --test fleet -- --ignored --nocapture --test-threads=1 "$filter"
