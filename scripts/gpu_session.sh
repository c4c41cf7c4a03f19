#!/usr/bin/env bash
# One GPU session in one call (device time is scarce). Built here by `make`, then on the GPU machine:
# unpack the runtime libraries, find the machine's cuDNN/cuBLAS/NCCL, and run `make test-gpu`'s
# tests (op tests against the CPU, end-to-end GPU training and inference), the fixture parity on
# CUDA and on the CPU, and the benchmarks. Everything it prints goes to $OUT/gpu_session.log too.
#   here:   make && bash scripts/runtime-debs.sh && cp -r ../shared/fixtures/effdet_d0_128 .fixtures/
#   device: command "bash scripts/gpu_session.sh [tests|parity|bench|profile|pipeline|diag]..."
#           (default: tests parity bench),
#           carry [".debs", "build/bin", "build/lib", "build/tests/gpu", "build/tests/tools", ".fixtures"]
#           (all of build/ is too large to travel; ../shared does not travel, hence .fixtures).
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_session.log") 2>&1
cd "$(dirname "$0")/.."
parts=${*:-tests parity bench}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv || true
rt=/tmp/rt
mkdir -p $rt
for f in .debs/*.deb; do dpkg -x "$f" $rt; done
libs="$rt/usr/lib/x86_64-linux-gnu:$rt/usr/lib/x86_64-linux-gnu/openblas-openmp:$rt/lib/x86_64-linux-gnu"
# cuDNN, cuBLAS and NCCL: wherever this machine has them (system CUDA or Python wheels).
for lib in libcudnn.so.9 libcublas.so.13 libcudart.so.13 libnccl.so.2; do
  d=$(find / -xdev -name "$lib" -not -path '*/proc/*' 2>/dev/null | head -1 | xargs -r dirname)
  [ -n "$d" ] && libs="$libs:$d" && echo "found $lib in $d"
done
export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
ldd build/lib/libeffdet_cuda.so | grep -E "not found" || true
export EFFDET_BIN=$PWD/build/bin
FIX=${EFFDET_FIXTURES:-$PWD/.fixtures}
summary=()
step() { # name, command...: runs it, records its status for the closing table
  local name=$1; shift
  local t0=$SECONDS
  echo "=== $name"
  "$@"; local rc=$?
  summary+=("$(printf '%-34s %s (%d s)' "$name" "$([ $rc -eq 0 ] && echo ok || echo "FAILED rc=$rc")" $((SECONDS - t0)))")
}
for part in $parts; do
  case $part in
  tests)
    progs=$(find build/tests/gpu -maxdepth 1 -type f -name 'test_*' -perm -u+x | sort)
    step "make test-gpu" timeout 540 bash tests/gpu/run.sh $progs tests/gpu/train_gpu.sh ;;
  parity)
    step "parity --device cuda" timeout 120 build/bin/effdet parity "$FIX/effdet_d0_128" --out "$OUT/parity_cuda.safetensors" --device cuda
    step "parity --device cpu" timeout 120 build/bin/effdet parity "$FIX/effdet_d0_128" --out "$OUT/parity_cpu.safetensors" --device cpu ;;
  bench) # issue #8's figures: D0 512x512 train b64 fp16/bf16/TF32, infer b64/b1 fp16, a profile
    step "bench-gpu (tests/bench/gpu.sh)" timeout 540 bash tests/bench/gpu.sh --require-gpu ;;
  profile) # where the time goes: per-kind tables (effdet bench --profile), then nsys's per-kernel
           # times and ncu's measured DRAM bytes where those tools are installed
    P=(--model tf_efficientdet_d0 --device cuda --image-size 512x512 --iters 5 --warmup 3 --profile)
    step "profile train b64 fp16" timeout 180 build/bin/effdet bench --mode train --batch-size 64 --amp "${P[@]}"
    step "profile train b64 fp32" timeout 180 build/bin/effdet bench --mode train --batch-size 64 "${P[@]}"
    step "profile infer b64 fp16" timeout 120 build/bin/effdet bench --mode infer --batch-size 64 --amp "${P[@]}"
    step "profile infer b1 fp16" timeout 120 build/bin/effdet bench --mode infer --batch-size 1 --amp "${P[@]}"
    if command -v nsys >/dev/null; then
      step "nsys train b64 fp16" timeout 300 nsys profile --stats=true --force-overwrite true \
        -o "$OUT/nsys_train_b64" build/bin/effdet bench --mode train --batch-size 64 --amp \
        --model tf_efficientdet_d0 --device cuda --image-size 512x512 --iters 3 --warmup 1
    fi
    if command -v ncu >/dev/null; then # one forward of batch 8: DRAM bytes and time per kernel
      step "ncu forward b8 fp16" timeout 300 ncu --metrics dram__bytes.sum,gpu__time_duration.sum \
        --print-summary per-gpu --launch-count 3000 build/bin/effdet bench --mode forward \
        --batch-size 8 --amp --model tf_efficientdet_d0 --device cuda --image-size 512x512 --iters 1 --warmup 0
    fi ;;
  pipeline) # issue #8 point 4: JPEGs through 4 loaders and 12 augmenters into the fp16 train step
    D=/tmp/pipe; rm -rf $D
    build/bin/effdet synth --out $D --images 512 --seed 3 --size 640x480 --classes 18 >/dev/null
    for amp in --amp ""; do
      step "pipeline b64 ${amp:-fp32}" timeout 180 build/bin/effdet bench --mode pipeline --data $D \
        --image-size 512x512 --batch-size 64 --loaders 4 --augmenters 12 --device cuda $amp --seconds 30 --json
    done ;;
  diag) # determinism: two identical GPU runs, a resumed one, which tensors differ, and initcheck
    D=/tmp/diag; rm -rf $D; mkdir -p $D
    build/bin/effdet synth --out $D/small --images 8 --seed 5 --size 64x64 --classes 3 >/dev/null
    A=(--data $D/small --model tf_efficientdet_d0 --image-size 64x64 --batch-size 4 --lr 0.2
       --warmup-epochs 1 --log-interval 100 --eval-interval 1000 --device cuda)
    EFFDET_CONV_LOG=1 build/bin/effdet train "${A[@]}" --epochs 2 --output $D/a 2>"$OUT/conv_log.txt" >/dev/null
    grep -c "cuDNN algorithm" "$OUT/conv_log.txt"; grep warning "$OUT/conv_log.txt" | head -5
    build/bin/effdet train "${A[@]}" --epochs 2 --output $D/b >/dev/null 2>&1
    build/bin/effdet train "${A[@]}" --epochs 1 --output $D/c >/dev/null 2>&1
    build/bin/effdet train "${A[@]}" --epochs 2 --output $D/c --resume $D/c >/dev/null 2>&1
    ls $D/a $D/c
    for x in b c; do
      echo "--- a vs $x"
      python3 - $D/a/checkpoint-4.safetensors $D/$x/checkpoint-4.safetensors <<'PY'
import sys, numpy as np
from safetensors.numpy import load_file
a, b = load_file(sys.argv[1]), load_file(sys.argv[2])
diff = [(k, float(np.max(np.abs(a[k].astype(np.float64) - b[k])))) for k in a if k in b and a[k].shape == b[k].shape and not np.array_equal(a[k], b[k])]
print(len(a), "tensors,", len(diff), "differ")
for k, d in sorted(diff, key=lambda t: -t[1])[:12]: print("  %-70s %.3e" % (k, d))
PY
    done
    step "initcheck (1 epoch)" timeout 300 compute-sanitizer --tool initcheck --error-exitcode 9 --print-limit 20 \
      build/bin/effdet train "${A[@]}" --epochs 1 --output $D/san ;;
  esac
done
echo "=== summary"
printf '%s\n' "${summary[@]}"
