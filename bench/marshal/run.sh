#!/bin/bash
# xml_marshaller codec: our decode+encode vs the Python xml_marshaller 1.0.3,
# side by side on the same documents: the largest captured computer
# information, and generated 100- and 1,000-partition documents.
# Usage: bash bench/marshal/run.sh [SECONDS_PER_DOCUMENT]   (default 3)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SECONDS_PER_DOC=${1:-3}
VENV=$(bash "$ROOT/scripts/python-venv.sh")
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
cd "$ROOT"
cargo build --release --quiet -p slap --example marshal_bench
BIN="$ROOT/target/release/examples/marshal_bench"
# the largest captured answer
"$VENV/bin/python3" - "$ROOT/testdata/slap-vectors" "$OUT/captured-computer.xml" <<'PY'
import glob, json, sys
best = max((json.load(open(f))['response']['body'] for f in glob.glob(sys.argv[1] + '/0*getFullComputerInformation*.json')), key=len)
open(sys.argv[2], 'w').write(best)
PY
"$BIN" generate 100 >"$OUT/computer-100.xml"
"$BIN" generate 1000 >"$OUT/computer-1000.xml"
files=("$OUT/captured-computer.xml" "$OUT/computer-100.xml" "$OUT/computer-1000.xml")
"$BIN" run "$SECONDS_PER_DOC" "${files[@]}" >"$OUT/rust.txt"
"$VENV/bin/python3" "$ROOT/bench/marshal/bench.py" "$SECONDS_PER_DOC" "${files[@]}" >"$OUT/python.txt"
printf '%-24s %10s %14s %14s %9s\n' document size rust/s python/s ratio
paste "$OUT/rust.txt" "$OUT/python.txt" | while read -r f r rmb _ p pmb; do
  printf '%-24s %9sK %14s %14s %8.1fx\n' "$(basename "$f")" "$(( $(stat -c %s "$f") / 1024 ))" "$r" "$p" \
    "$(echo "$r / $p" | bc -l)"
done
