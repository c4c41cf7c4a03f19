#!/usr/bin/env bash
# `make bench-data` (also part of `make bench`): the data pipeline on 640x480 synthetic JPEGs to
# 512x512 (issue 5's targets: >= 300 img/s per core, >= 1.8x with two processes):
#   1. decode + train augment in one process on one core, then two such processes at once;
#   2. the ZeroMQ + shared-memory hand-off alone;
#   3. the whole pipeline (effdet-loader x N -> effdet-augment x M -> this process) for 1x1, 2x2;
#   4. each stage's capacity from its stage reports and the stage that limits, for 2x2 without a
#      train step (--mode pipeline --no-step); with PIPELINE_DEVICE set (cpu, cuda) also feeding
#      the real D0 train step on that device.
# SECONDS_PER_CASE (default 5) sets each measurement's length.
set -eu
cd "$(dirname "$0")/../.."
BIN=${EFFDET_BIN:-build/bin}
S=${SECONDS_PER_CASE:-5}
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
"$BIN/effdet" synth --out "$DIR/ds" --images 64 --size 640x480 --seed 1 >/dev/null
one=$("$BIN/effdet" bench --mode augment --data "$DIR/ds" --image-size 512x512 --seconds "$S" --json)
two=$("$BIN/effdet" bench --mode augment --data "$DIR/ds" --image-size 512x512 --seconds "$S" --procs 2 --json)
r1=$(sed 's/.*"img_per_s": \([0-9.]*\).*/\1/' <<<"$one")
r2=$(sed 's/.*"img_per_s": \([0-9.]*\).*/\1/' <<<"$two")
echo "decode + train augment, 640x480 JPEG -> 512x512 F32:"
echo "  one process:  $r1 img/s (per core)"
echo "  two processes: $r2 img/s ($(awk -v a="$r2" -v b="$r1" 'BEGIN{printf "%.2f", a/b}')x)"
"$BIN/effdet" bench --mode handoff --seconds "$S"
for lm in "1 1" "2 2"; do
  set -- $lm
  "$BIN/effdet" bench --mode data --data "$DIR/ds" --image-size 512x512 --batch-size 8 \
    --loaders "$1" --augmenters "$2" --seconds "$S" 2>/dev/null
done
"$BIN/effdet" bench --mode pipeline --no-step --data "$DIR/ds" --image-size 512x512 --batch-size 8 \
  --loaders 2 --augmenters 2 --seconds "$S" 2>/dev/null
if [ -n "${PIPELINE_DEVICE:-}" ]; then
  "$BIN/effdet" bench --mode pipeline --device "$PIPELINE_DEVICE" --data "$DIR/ds" \
    --image-size 512x512 --batch-size 8 --loaders 2 --augmenters 2 --seconds "$S" 2>/dev/null
fi
