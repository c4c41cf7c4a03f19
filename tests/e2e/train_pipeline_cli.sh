#!/usr/bin/env bash
# `effdet train --loaders N --augmenters M`: training fed by the data stages as processes.
#  - exact resume: a run killed with -9 after its first checkpoint and resumed ends with the same
#    checkpoint, byte for byte, as a run never stopped (the stages are restarted with it and
#    serve the same batches from the resumed position);
#  - a parent killed with -9 leaves no stage process running (they get SIGTERM on its death);
#  - SIGINT writes a checkpoint and exits 130, stopping every stage;
#  - an unreadable image is one error line naming the file; --skip-bad-images trains on;
#  - after each: no process, shared-memory segment or run directory left.
set -u
BIN=${EFFDET_BIN:?EFFDET_BIN must point at build/bin}
T=$(mktemp -d)
source "$(dirname "$0")/lib/common.bash"
source "$(dirname "$0")/lib/cases.bash" # TMPDIR, cleanup at exit, leftovers

"$BIN/effdet" synth --out "$T/d" --images 8 --seed 5 --size 64x64 --classes 3 >/dev/null || bad "synth"
ARGS=(--data "$T/d" --model tf_efficientdet_d0 --image-size 64x64 --batch-size 4 --lr 0.2
      --warmup-epochs 1 --log-interval 100 --eval-interval 1000 --loaders 1 --augmenters 2)
train() { "$BIN/effdet" train "${ARGS[@]}" "$@"; }
STAGES="effdet-(loader|augment).*$T/"
stages() { pgrep -f "$STAGES" | wc -l; }

# ---- exact resume after SIGKILL --------------------------------------------------------------------
train --epochs 4 --output "$T/straight" >"$T/straight.log" 2>&1 || bad "straight run: $(tail -2 "$T/straight.log")"
"$BIN/effdet" train "${ARGS[@]}" --epochs 4 --output "$T/killed" >"$T/killed.log" 2>&1 &
pid=$!
for _ in $(seq 1 600); do [ -e "$T/killed/checkpoint-4.safetensors" ] && break; sleep 0.05; done
kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null
sleep 0.5
check "a parent killed with -9 leaves no stage running" "[ \$(stages) -eq 0 ]"
# The killed run could not remove its run directory nor its stages their segments; the next run
# removes both (their pids are dead).
train --epochs 4 --output "$T/killed" --resume "$T/killed" >"$T/resumed.log" 2>&1 || bad "resumed run: $(tail -2 "$T/resumed.log")"
check "resume after SIGKILL equals the straight run bit for bit (step 8 checkpoint)" \
  "cmp -s '$T/straight/checkpoint-8.safetensors' '$T/killed/checkpoint-8.safetensors'"
# The same run without the stages (single-process letterbox + flip) trains on other pixels.
"$BIN/effdet" train "${ARGS[@]:0:${#ARGS[@]}-4}" --epochs 4 --output "$T/inproc" >/dev/null 2>&1
check "the stages' batches are effdet's train transform, not the single-process letterbox" \
  "[ -e '$T/inproc/checkpoint-8.safetensors' ] && ! cmp -s '$T/straight/checkpoint-8.safetensors' '$T/inproc/checkpoint-8.safetensors'"
leftovers "resume" stage "$STAGES"

# ---- SIGINT: checkpoint and exit 130 ----------------------------------------------------------------
"$BIN/effdet" train "${ARGS[@]}" --epochs 500 --output "$T/int" >"$T/int.log" 2>&1 &
pid=$!
for _ in $(seq 1 600); do [ -e "$T/int/checkpoint-2.safetensors" ] && break; sleep 0.05; done
kill -INT $pid; wait $pid; rc=$?
check "SIGINT exits 130 after writing a checkpoint" "[ $rc -eq 130 ]"
leftovers "SIGINT" stage "$STAGES"

# ---- unreadable images ------------------------------------------------------------------------------
cp -r "$T/d" "$T/bad"
head -c 300 "$T/d/images/000000000003.jpg" >"$T/bad/images/000000000003.jpg"
expect_error "a truncated image stops training, naming it" "000000000003.jpg" \
  "$BIN/effdet" train "${ARGS[@]/$T\/d/$T/bad}" --epochs 1 --output "$T/badrun"
leftovers "unreadable image" stage "$STAGES"
"$BIN/effdet" train "${ARGS[@]/$T\/d/$T/bad}" --epochs 2 --skip-bad-images --output "$T/skiprun" \
  >"$T/skip.log" 2>&1
check "--skip-bad-images trains on: $(grep -c 'skipping' "$T/skip.log") warnings" \
  "[ $? -eq 0 ] && grep -q 'skipping unreadable image' '$T/skip.log' && [ -e '$T/skiprun/checkpoint-4.safetensors' ]"
leftovers "skip" stage "$STAGES"

expect_error "--loaders without --augmenters" "--loaders and --augmenters go together" \
  "$BIN/effdet" train --data "$T/d" --loaders 2 --output "$T/x"

echo "train_pipeline_cli: $fails failed"
[ "$fails" -eq 0 ]
