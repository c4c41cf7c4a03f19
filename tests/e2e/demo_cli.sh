#!/usr/bin/env bash
# `effdet demo` (the README's main job), shortened to 2 epochs: synthetic set, the training
# pipeline, evaluation, curves, TensorBoard events, results and drawn detections; nothing left
# running. (The full demo's mAP is what the README reports; the overfit check is train_cli.sh.)
set -u
BIN=${EFFDET_BIN:?EFFDET_BIN must point at build/bin}
T=$(mktemp -d)
source "$(dirname "$0")/lib/common.bash"
source "$(dirname "$0")/lib/cases.bash" # TMPDIR, cleanup at exit, leftovers

"$BIN/effdet" demo --out "$T/demo" --epochs 2 --device cpu >"$T/demo.log" 2>&1 || bad "demo: $(tail -3 "$T/demo.log")"
check "demo: an evaluation line" "grep -q '^eval epoch 2 step 2: mAP' '$T/demo.log'"
check "demo: curves.png" "[ -s '$T/demo/run/curves.png' ]"
check "demo: TensorBoard events" "ls '$T/demo/run/tensorboard/'events.out.tfevents.* >/dev/null"
check "demo: results.json" "[ -s '$T/demo/results.json' ]"
check "demo: 16 drawn images" "[ \$(ls '$T/demo/drawn' | wc -l) -eq 16 ]"
check "demo: the closing line" "grep -q '^effdet demo: done' '$T/demo.log'"
leftovers "demo" "" "effdet.*$T/"
echo "demo_cli: $fails failed"
[ "$fails" -eq 0 ]
