#!/usr/bin/env bash
# One GPU session in one call (device time is scarce). Built here by `make`, then on the GPU machine:
# unpack the runtime libraries, find the machine's cuDNN/cuBLAS/NCCL, and run `make test-gpu`'s
# tests (op tests against the CPU, end-to-end GPU training and inference), the fixture parity on
# CUDA and on the CPU, and the benchmarks. Everything it prints goes to $OUT/gpu_session.log too.
#   here:   make && bash scripts/runtime-debs.sh && cp -r ../shared/fixtures/effdet_d0_128 .fixtures/
#   device: command "bash scripts/gpu_session.sh [tests|parity|bench]..." (default: all three),
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
  bench)
    for mode in forward infer train; do
      for b in 1 8 64; do
        [ $mode = train ] && [ $b = 1 ] && continue
        for prec in "" --tf32; do
          step "bench $mode b$b ${prec:-fp32}" timeout 120 build/bin/effdet bench --mode $mode --device cuda \
            --batch-size $b --image-size 512x512 --iters 10 --warmup 3 $prec --json
        done
      done
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
