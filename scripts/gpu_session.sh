#!/usr/bin/env bash
# One GPU session in one call (device time is scarce): on the GPU machine, with build/ (built here
# by `make`) and .debs/ (scripts/runtime-debs.sh) carried, unpack the runtime libraries, find the
# machine's cuDNN/cuBLAS/NCCL, then run the GPU op tests, the fixture parity on CUDA and the
# benchmarks. Everything it prints goes to $OUT/gpu_session.log too.
#   device tool: command "bash scripts/gpu_session.sh", carry [".debs", "build"]
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_session.log") 2>&1
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
rt=/tmp/rt
mkdir -p $rt
for f in .debs/*.deb; do dpkg -x "$f" $rt; done
libs="$rt/usr/lib/x86_64-linux-gnu:$rt/usr/lib/x86_64-linux-gnu/openblas-openmp:$rt/lib/x86_64-linux-gnu"
# cuDNN, cuBLAS and NCCL: wherever this machine has them (system CUDA or Python wheels).
for lib in libcudnn.so.9 libcublas.so.13 libcublas.so.12 libcudart.so.13 libcudart.so.12 libnccl.so.2; do
  d=$(find / -xdev -name "$lib" -not -path '*/proc/*' 2>/dev/null | head -1 | xargs -r dirname)
  [ -n "$d" ] && libs="$libs:$d" && echo "found $lib in $d"
done
export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
ldd build/lib/libeffdet_cuda.so | grep -E "not found|cudnn|cublas|cudart" || true
FIX=${EFFDET_FIXTURES:-$(cd .. && pwd)/shared/fixtures}
echo "=== GPU op tests"; EFFDET_BIN=$PWD/build/bin bash tests/gpu/run.sh build/tests/gpu/test_*
echo "=== parity on CUDA"; build/bin/effdet parity "$FIX/effdet_d0_128" --out "$OUT/parity_cuda.safetensors" --device cuda
echo "=== parity on CPU (same machine)"; build/bin/effdet parity "$FIX/effdet_d0_128" --out "$OUT/parity_cpu.safetensors" --device cpu
for b in 1 8 64; do
  echo "=== bench forward batch $b"; build/bin/effdet bench --mode forward --device cuda --batch-size $b --image-size 512x512 --iters 20 --json
done
echo "=== done"
