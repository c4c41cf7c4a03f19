#!/usr/bin/env bash
# End-to-end mixed precision on the CPU backend, which emulates fp16/bf16 activations (values
# rounded as 2-byte storage rounds them; kernels/cpu/amp.c), as the reference for the GPU's:
#  - the fixture's forward with fp16 activations is within 1e-2 of the fp32 reference (parity);
#  - fp16 and bf16 training steps track fp32's (loss and gradient norm, within the type's precision);
#  - fp16 training: the log shows the loss scale, the checkpoint carries it, and a run killed and
#    resumed equals a straight one bit for bit (the scale is restored exactly);
#  - bad --amp-dtype / --loss-scale values are one error line;
#  - the overfit test under fp16: the same train-set mAP band as fp32 (train_cli.sh).
set -u
BIN=${EFFDET_BIN:?EFFDET_BIN must point at build/bin}
FIX=${EFFDET_FIXTURES:?EFFDET_FIXTURES must point at the fixtures}
T=$(mktemp -d)
trap 'pkill -9 -f "$T/" 2>/dev/null; rm -rf "$T"' EXIT
source "$(dirname "$0")/lib/common.bash"

# ---- forward: fp16 within 1e-2 of the fp32 reference ----------------------------------------------
"$BIN/effdet" parity "$FIX/effdet_d0_128" --out "$T/p16.safetensors" --amp >"$T/p16.log" 2>&1; rc=$?
grep 'max|ours' "$T/p16.log" | sed 's/^/     /'
check "parity --amp: every head output of the fixture within 1e-2 (fp16 activations)" \
  "[ $rc -eq 0 ] && grep -q 'fp16 activations' '$T/p16.log' && [ \$(grep -c 'ok (bound 1e-02)' '$T/p16.log') -eq 10 ]"

# ---- fp16 training: loss scale logged, checkpointed, resumed exactly ----------------------------------
"$BIN/effdet" synth --out "$T/small" --images 8 --seed 5 --size 64x64 --classes 3 >/dev/null || bad "synth small"
SMALL=(--data "$T/small" --model tf_efficientdet_d0 --image-size 64x64 --batch-size 4 --lr 0.2
       --warmup-epochs 1 --log-interval 1 --eval-interval 1000 --amp)
"$BIN/effdet" train "${SMALL[@]}" --epochs 4 --output "$T/straight" >"$T/straight.log" 2>&1 ||
  bad "fp16 straight run: $(tail -2 "$T/straight.log")"
grep 'loss scale' "$T/straight.log" | tail -2 | sed 's/^/     /'
check "fp16: every logged step shows the loss scale" "[ \$(grep -c 'loss scale' '$T/straight.log') -eq 8 ]"
check "fp16: the checkpoint records the loss scale" \
  "head -c 4096 '$T/straight/checkpoint-8.safetensors' | grep -aq '\"loss_scale\"'"
"$BIN/effdet" train "${SMALL[@]}" --epochs 2 --output "$T/resumed" >/dev/null 2>&1 || bad "fp16 first half"
"$BIN/effdet" train "${SMALL[@]}" --epochs 4 --output "$T/resumed" --resume "$T/resumed" >"$T/resumed.log" 2>&1 ||
  bad "fp16 resumed half: $(tail -2 "$T/resumed.log")"
check "fp16: 2 epochs + resume equal 4 straight epochs bit for bit (step 8 checkpoint)" \
  "cmp -s '$T/straight/checkpoint-8.safetensors' '$T/resumed/checkpoint-8.safetensors'"

# ---- the first steps track fp32's: same data, same init, loss scale 1 ---------------------------
"$BIN/effdet" synth --out "$T/s8" --images 8 --seed 1 --size 128x128 --classes 3 >/dev/null
for p in fp32 fp16 bf16; do
  "$BIN/effdet" train --data "$T/s8" --model tf_efficientdet_d0 --image-size 128x128 --batch-size 8 \
    --epochs 2 --log-interval 1 --eval-interval 1000 --amp-dtype $p --loss-scale 1 \
    --output "$T/track_$p" 2>/dev/null | grep '^epoch' | sed 's/.*: loss \([0-9.]*\) .*grad norm \([0-9.]*\) .*/\1 \2/' >"$T/track_$p.txt"
done
# Bounds by the type's precision: fp16 keeps 11 bits, bf16 8 (its forward alone moves the fixture's
# head outputs by 2.4e-2, README); a missed or doubled scale would be off by 2x or more.
for pb in "fp16 1e-2 5e-2" "bf16 5e-2 1e-1"; do
  set -- $pb
  worst=$(paste "$T/track_fp32.txt" "$T/track_$1.txt" | awk -v bl="$2" -v bn="$3" '{
    l = ($3 - $1) / $1; n = ($4 - $2) / $2; l = l < 0 ? -l : l; n = n < 0 ? -n : n;
    if (l > wl) wl = l; if (n > wn) wn = n }
    END { printf "%d steps, loss %.1e, grad norm %.1e", NR, wl, wn; exit !(NR == 2 && wl < bl && wn < bn) }')
  rc=$?
  check "$1: the first steps track fp32 (worst relative difference: $worst; bounds $2, $3)" "[ $rc -eq 0 ]"
done

# ---- bad values --------------------------------------------------------------------------------
expect_error "--amp-dtype fp8" "--amp-dtype fp8" "$BIN/effdet" train "${SMALL[@]}" --amp-dtype fp8 --output "$T/x"
expect_error "--loss-scale 1000" "power of two" "$BIN/effdet" train "${SMALL[@]}" --loss-scale 1000 --output "$T/x"
expect_error "infer --amp-dtype int8" "--amp-dtype int8" "$BIN/effdet" infer --model tf_efficientdet_d0 \
  --weights random --amp-dtype int8 --out "$T/r.json" "$T/small/images"

# ---- overfit under fp16 (train_cli.sh's fp32 check, same data, same band) -------------------------
if [ "${SAN:-}" = 1 ]; then
  echo "skip the fp16 overfit under the sanitizers (a convergence check)"
else
  "$BIN/effdet" synth --out "$T/s16" --images 16 --seed 1 --size 128x128 --classes 3 >/dev/null
  "$BIN/effdet" train --data "$T/s16" --model tf_efficientdet_d0 --image-size 128x128 --batch-size 16 \
    --epochs ${OVERFIT_EPOCHS:-300} --lr 0.64 --warmup-epochs 5 --bn-momentum 0.1 --amp \
    --checkpoint-interval 1000 --log-interval 50 --eval-interval 100 \
    --output "$T/overfit" >"$T/overfit.log" 2>&1
  map50=$(grep '^eval ' "$T/overfit.log" | tail -1 | sed 's/.*mAP@0.5 \([0-9.]*\).*/\1/')
  echo "fp16 overfit: final train-set $(grep '^eval ' "$T/overfit.log" | tail -1)"
  grep 'loss scale' "$T/overfit.log" | tail -1 | sed 's/^/     /'
  check "fp16 overfit: train-set mAP@0.5 ${map50:-none} >= 0.9" "awk 'BEGIN { exit !(\"${map50:-0}\" + 0 >= 0.9) }'"
fi

echo "amp_cli: $fails failed"
[ "$fails" -eq 0 ]
