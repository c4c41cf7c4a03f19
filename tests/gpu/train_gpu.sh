#!/usr/bin/env bash
# End-to-end checks of the CUDA backend, run by `make test-gpu` after the op tests:
#  - the overfit run of tests/e2e/train_cli.sh (D0 learns 16 synthetic images, 300 steps of batch 16
#    at 128x128) on the GPU and on the CPU: both must reach train-set mAP@0.5 >= 0.9 (the band the
#    CPU test requires), and the two are printed side by side;
#  - determinism on the GPU: 4 epochs straight == the same run killed with -9 after its step-4
#    checkpoint and resumed (final checkpoints byte-identical), which holds only if every GPU op
#    is deterministic;
#  - `effdet infer` on the GPU (top-k + NMS on the GPU) against the CPU on the same images and
#    weights: every detection matched.
set -u
BIN=${EFFDET_BIN:?EFFDET_BIN must point at build/bin}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
source "$(dirname "$0")/../e2e/lib/common.bash"

# ---- determinism: straight == resumed, on the GPU ------------------------------------------------
"$BIN/effdet" synth --out "$T/small" --images 8 --seed 5 --size 64x64 --classes 3 >/dev/null || bad "synth small"
SMALL=(--data "$T/small" --model tf_efficientdet_d0 --image-size 64x64 --batch-size 4 --lr 0.2
       --warmup-epochs 1 --log-interval 100 --eval-interval 1000 --device cuda)
"$BIN/effdet" train "${SMALL[@]}" --epochs 4 --output "$T/straight" >"$T/straight.log" 2>&1 ||
  bad "straight GPU run: $(tail -2 "$T/straight.log")"
# The same run (same --epochs, so the same schedule) killed after its step-4 checkpoint, resumed.
"$BIN/effdet" train "${SMALL[@]}" --epochs 4 --output "$T/half" >"$T/half.log" 2>&1 &
pid=$!
for _ in $(seq 1 1200); do [ -e "$T/half/checkpoint-4.safetensors" ] && break; sleep 0.05; done
kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null
# A GPU may finish the 8 steps before the kill lands: drop what came after step 4, so the resume
# really continues from step 4 (checked in its log).
rm -f "$T/half/checkpoint-6.safetensors" "$T/half/checkpoint-8.safetensors"
"$BIN/effdet" train "${SMALL[@]}" --epochs 4 --output "$T/half" --resume "$T/half" >"$T/resumed.log" 2>&1 ||
  bad "resumed GPU run: $(tail -2 "$T/resumed.log")"
check "the resumed GPU run continued from step 4" "grep -q 'resumed from .*checkpoint-4.safetensors at step 4' '$T/resumed.log'"
last=$(ls "$T/straight" | grep -E '^checkpoint-[0-9]+\.safetensors$' | sort -t- -k2 -n | tail -1)
check "GPU determinism: $last straight == killed at step 4 + --resume" "[ -n '$last' ] && cmp -s '$T/straight/$last' '$T/half/$last'"

# ---- overfit on both backends ---------------------------------------------------------------------
"$BIN/effdet" synth --out "$T/s16" --images 16 --seed 1 --size 128x128 --classes 3 >/dev/null
for dev in cuda cpu; do
  t0=$SECONDS
  "$BIN/effdet" train --data "$T/s16" --model tf_efficientdet_d0 --image-size 128x128 --batch-size 16 \
    --epochs ${OVERFIT_EPOCHS:-300} --lr 0.64 --warmup-epochs 5 --bn-momentum 0.1 \
    --checkpoint-interval 1000 --log-interval 100 --eval-interval 100 --device $dev \
    --output "$T/overfit-$dev" >"$T/overfit-$dev.log" 2>&1 || bad "overfit on $dev: $(tail -2 "$T/overfit-$dev.log")"
  grep '^eval ' "$T/overfit-$dev.log" | sed "s/^/  $dev: /"
  map50=$(grep '^eval ' "$T/overfit-$dev.log" | tail -1 | sed 's/.*mAP@0.5 \([0-9.]*\).*/\1/')
  check "overfit on $dev ($((SECONDS - t0)) s): train-set mAP@0.5 ${map50:-none} >= 0.9" \
    "awk 'BEGIN { exit !(\"${map50:-0}\" + 0 >= 0.9) }'"
done

# ---- infer: GPU detections == CPU detections ------------------------------------------------------
w=$(ls "$T/overfit-cuda" | grep -E '^checkpoint-[0-9]+\.safetensors$' | sort -t- -k2 -n | tail -1)
imgs=$(ls "$T/s16/images/"*.jpg 2>/dev/null | head -8)
for dev in cuda cpu; do
  "$BIN/effdet" infer --model tf_efficientdet_d0 --num-classes 3 --image-size 128x128 --batch-size 4 \
    --weights "$T/overfit-cuda/$w" --device $dev --score-thresh 0.05 $imgs --out "$T/infer-$dev.json" \
    >"$T/infer-$dev.log" 2>&1 || bad "infer on $dev: $(tail -2 "$T/infer-$dev.log")"
done
check "infer: GPU detections match the CPU's ($(python3 -c "import json;print(len(json.load(open('$T/infer-cpu.json'))))" 2>/dev/null) detections)" \
  "python3 - '$T/infer-cpu.json' '$T/infer-cuda.json' <<'PY'
import json, sys
a, b = (json.load(open(f)) for f in sys.argv[1:3])
def key(d): return (d['image_id'], d['category_id'])
used = [False] * len(b)
miss = 0
for d in a:
    for j, e in enumerate(b):
        if not used[j] and key(e) == key(d) and abs(e['score'] - d['score']) <= 1e-4 and \
           all(abs(x - y) <= 1e-2 + 1e-4 * abs(x) for x, y in zip(d['bbox'], e['bbox'])):
            used[j] = True
            break
    else:
        miss += 1
print('  cpu %d, gpu %d detections, %d cpu rows unmatched' % (len(a), len(b), miss))
sys.exit(0 if miss == 0 and len(a) == len(b) and len(a) > 0 else 1)
PY"

echo "train_gpu: $fails failed"
[ "$fails" -eq 0 ]
