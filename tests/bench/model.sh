#!/usr/bin/env bash
# CPU model benchmarks: D0 at 512x512, batch 1: the network forward alone, then the whole infer
# path (JPEG decode + letterbox resize + normalize + forward + top-k/NMS), one JSON line each.
set -eu
BIN=${EFFDET_BIN:-build/bin}
echo "# D0 forward, CPU, batch 1, 512x512"
"$BIN/effdet" bench --mode forward --model tf_efficientdet_d0 --device cpu --batch-size 1 --image-size 512x512 --iters 20 --warmup 3 --json
echo "# D0 infer path (640x480 JPEG -> decode, resize, forward, NMS), CPU, batch 1"
"$BIN/effdet" bench --mode infer-jpeg --model tf_efficientdet_d0 --device cpu --batch-size 1 --image-size 512x512 --iters 20 --warmup 3 --json
echo "# D0 train step, CPU, batch 4 (targets, forward, loss, backward, SGD, EMA)"
"$BIN/effdet" bench --mode train --model tf_efficientdet_d0 --device cpu --batch-size 4 --image-size 256x256 --iters 5 --warmup 1 --json
"$BIN/effdet" bench --mode train --model tf_efficientdet_d0 --device cpu --batch-size 4 --image-size 512x512 --iters 3 --warmup 1 --json
