#!/usr/bin/env bash
# The training topology under the coordinator (effdet train --loaders N --augmenters M --devices):
#  - 2 loaders, 2 augmenters, 2 CPU workers (data parallel, sync BN) and the evaluator: mAP logged
#    for every epoch, exact per-epoch sample counts, DLLL lines, TensorBoard events, curves.png;
#  - two workers of batch 2 end with the weights of one worker of batch 4 (float rounding), and
#    without --sync-bn they do not (so the comparison can fail);
#  - SIGKILL of a loader, an augmenter, the evaluator and a worker at seeded steps: the run
#    completes with exact sample counts and the final checkpoint equals the uninterrupted run's
#    byte for byte;
#  - SIGINT: a checkpoint, exit 130; --resume continues at the same step and ends identical;
#  - after each run: no child process, socket or shared-memory segment left.
set -u
BIN=${EFFDET_BIN:?EFFDET_BIN must point at build/bin}
TOOLS=$(dirname "$BIN")/tests/tools
T=$(mktemp -d)
export OMP_NUM_THREADS=1
source "$(dirname "$0")/lib/common.bash"
source "$(dirname "$0")/lib/cases.bash" # TMPDIR, cleanup at exit, leftovers

"$BIN/effdet" synth --out "$T/d" --images 8 --seed 5 --size 160x128 --classes 3 >/dev/null || bad "synth"
ARGS=(--data "$T/d" --model tf_efficientdet_d0 --image-size 128x128 --epochs 3 --lr 0.2
      --warmup-epochs 0 --log-interval 1 --loaders 2 --augmenters 2 --keep 5)
DP=(--devices cpu,cpu --batch-size 2 --sync-bn)
CHILDREN="effdet.*$T/"
train() { local out=$1; shift; "$BIN/effdet" train "${ARGS[@]}" --output "$T/$out" "$@" >"$T/$out.log" 2>&1; }

# ---- one worker, then two workers of half the batch -------------------------------------------------
train one --devices cpu --batch-size 4 || bad "one worker: $(tail -3 "$T/one.log")"
train two "${DP[@]}" || bad "two workers: $(tail -3 "$T/two.log")"
for e in 1 2 3; do
  check "mAP logged for epoch $e" "grep -q '^eval epoch $e step .*: mAP ' '$T/two.log' && grep -q '\"type\": \"eval\", \"epoch\": $e' '$T/two.log'"
  check "epoch $e: every image trained once" "grep -q '^epoch $e: 8 images trained, each once' '$T/two.log'"
done
check "DLLL train lines" "[ \$(grep -c '^DLLL {\"type\": \"train\"' '$T/two.log') -eq 6 ]"
check "TensorBoard event file" "ls '$T/two/tensorboard/'events.out.tfevents.* >/dev/null"
check "curves.png" "[ -s '$T/two/curves.png' ]"
check "model_best from the evaluations" "[ -s '$T/two/model_best.safetensors' ] && ! ls '$T/two/'snapshot-* 2>/dev/null"
# After the first epoch (2 steps at the full learning rate): further on, training itself amplifies
# the summation-order differences (measured: 3e-5 after 2 steps, 1.5e-2 after 4).
for p in backbone fpn class_net box_net ema.; do
  d=$("$TOOLS/st_diff" "$T/one/checkpoint-2.safetensors" "$T/two/checkpoint-2.safetensors" $p | awk '{print $5}')
  check "two workers x 2 == one worker x 4 ($p: max rel diff $d)" "awk 'BEGIN{exit !($d < 2e-4)}'"
done
train nosync --devices cpu,cpu --batch-size 2 || bad "two workers without sync BN"
d=$("$TOOLS/st_diff" "$T/one/checkpoint-2.safetensors" "$T/nosync/checkpoint-2.safetensors" backbone | awk '{print $5}')
check "without --sync-bn the workers' BN statistics differ from one worker's ($d)" "awk 'BEGIN{exit !($d > 2e-3)}'"
leftovers "data parallel" child "$CHILDREN"

# ---- faults: a loader, an augmenter, the evaluator and a worker killed with -9 ----------------------------
train faults "${DP[@]}" --fault loader1@1,aug0@2,evaluator@3,worker1@5 || bad "fault run: $(tail -3 "$T/faults.log")"
check "the fault run restarted the killed processes" "grep -q '^done: 6 steps, 1 worker restart, 3 stage restarts, 3 epochs with exact sample counts' '$T/faults.log'"
for e in 1 2 3; do check "fault run: mAP of epoch $e" "grep -q '^eval epoch $e step' '$T/faults.log'"; done
check "fault run: final weights equal the uninterrupted run's" "cmp -s '$T/two/checkpoint-6.safetensors' '$T/faults/checkpoint-6.safetensors'"
leftovers "faults" child "$CHILDREN"

# ---- SIGINT, then --resume ---------------------------------------------------------------------------
"$BIN/effdet" train "${ARGS[@]}" "${DP[@]}" --output "$T/int" >"$T/int.log" 2>&1 &
pid=$!
for _ in $(seq 1 1200); do [ -e "$T/int/checkpoint-2.safetensors" ] && break; sleep 0.05; done
kill -INT $pid; wait $pid; rc=$?
check "SIGINT exits 130" "[ $rc -eq 130 ]"
stopped=$(ls "$T/int" | sed -n 's/^checkpoint-\([0-9]*\)\.safetensors$/\1/p' | sort -n | tail -1)
check "SIGINT wrote a checkpoint (step $stopped)" "[ -n '$stopped' ] && [ '$stopped' -ge 2 ] && [ '$stopped' -lt 6 ]"
leftovers "SIGINT" child "$CHILDREN"
train int "${DP[@]}" --resume "$T/int" || bad "resume: $(tail -3 "$T/int.log")"
check "--resume continues at step $stopped" "grep -q 'step $((stopped + 1))/6' '$T/int.log' && ! grep -q 'step $stopped/6' '$T/int.log'"
check "the resumed run ends identical to the uninterrupted one" "cmp -s '$T/two/checkpoint-6.safetensors' '$T/int/checkpoint-6.safetensors'"
leftovers "resume" child "$CHILDREN"

# ---- bad input ------------------------------------------------------------------------------------------
expect_error "--sync-bn with one device" "--sync-bn" "$BIN/effdet" train "${ARGS[@]}" --sync-bn --output "$T/x"
expect_error "--fault naming no process" "--fault" "$BIN/effdet" train "${ARGS[@]}" --fault nobody@1 --output "$T/x"
leftovers "bad input" child "$CHILDREN"
echo "coordinator_cli: $fails failed"
[ "$fails" -eq 0 ]
