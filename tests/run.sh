#!/usr/bin/env bash
# Runs every test program given on the command line, then every tests/e2e/*.sh script, and prints
# one closing line "N passed, N failed". Each test program is a cmocka suite (or any program whose
# exit status says pass or fail); e2e scripts get EFFDET_BIN (the programs) and EFFDET_FIXTURES.
set -u
cd "$(dirname "$0")/.."
pass=0; fail=0; failed=()
run() {
  local name=$1; shift
  local t0=$SECONDS
  if "$@"; then pass=$((pass + 1)); else fail=$((fail + 1)); failed+=("$name"); fi
  echo "--- $name ($((SECONDS - t0)) s)"
}
for t in "$@"; do
  run "$t" "$t"
done
for s in tests/e2e/*.sh; do
  [ -e "$s" ] || continue
  run "$s" bash "$s"
done
[ ${#failed[@]} -gt 0 ] && printf 'FAILED: %s\n' "${failed[@]}"
echo "tests: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
