#!/usr/bin/env bash
# `make bench`: runs every tests/bench/*.sh benchmark script in turn; each prints its own figures.
set -eu
cd "$(dirname "$0")/../.."
for s in tests/bench/*.sh; do
  [ "$(basename "$s")" = run.sh ] && continue
  echo "=== $s"
  bash "$s"
done
