#!/usr/bin/env bash
# `make test-gpu`: runs every GPU test given on the command line. Programs (tests/gpu/test_*,
# cmocka suites that compare the CUDA backend with the CPU reference) run twice: once as the model
# runs (asynchronous), once with EFFDET_SYNC_CHECK=1 (a synchronization after every op, so a kernel
# fault is reported at the op that caused it). Scripts (tests/gpu/*.sh, end-to-end runs) run once.
# Prints one closing line "N passed, N failed"; exits non-zero on any failure, and on a machine
# without a GPU, where the programs say why and fail.
set -u
cd "$(dirname "$0")/../.."
pass=0; fail=0; failed=()
for t in "$@"; do
  # Scripts (end-to-end runs) once; op test programs in both modes.
  modes="0 1"; case "$t" in *.sh) modes=0 ;; esac
  for sync in $modes; do
    name="$t (EFFDET_SYNC_CHECK=$sync)"
    t0=$SECONDS
    if EFFDET_SYNC_CHECK=$sync "$t"; then pass=$((pass + 1)); else fail=$((fail + 1)); failed+=("$name"); fi
    echo "--- $name ($((SECONDS - t0)) s)"
  done
done
[ ${#failed[@]} -gt 0 ] && printf 'FAILED: %s\n' "${failed[@]}"
echo "gpu tests: $pass passed, $fail failed"
[ "$fail" -eq 0 ] && [ "$pass" -gt 0 ]
