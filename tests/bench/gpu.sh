#!/usr/bin/env bash
# `make bench-gpu`: issue #8's GPU figures, D0 at 512x512 on --device cuda, one JSON line each
# (`effdet bench`, synthetic data already in GPU memory):
#   train b64 with --amp (fp16), --amp-dtype bf16 and --tf32 (fp32 activations, TF32 math);
#   infer b64 and b1 with --amp (forward + top-k/NMS on the GPU, detections downloaded);
#   then train b64 --amp --profile: the same JSON line with the per-kind profile, and that
#   profile again as a table for people reading the log.
# With --require-gpu (make bench-gpu, scripts/gpu_session.sh) a build or machine without a usable
# CUDA backend is one error line and exit 1. Without it (`make bench` runs every tests/bench/*.sh,
# on CPU machines too) the script prints that it skipped and exits 0.
# ITERS and WARMUP (default 10 and 3) set each run's timed and untimed iterations.
set -u
cd "$(dirname "$0")/../.."
BIN=${EFFDET_BIN:-build/bin}
ITERS=${ITERS:-10}
WARMUP=${WARMUP:-3}
require=0
[ "${1:-}" = --require-gpu ] && require=1

# Is the CUDA backend usable at all? A tiny forward says so, or says why not in one line.
if ! probe=$("$BIN/effdet" bench --mode forward --device cuda --image-size 64x64 --iters 1 \
               --warmup 0 --json 2>&1 >/dev/null); then
  msg="bench-gpu: the CUDA backend is not usable: $(echo "$probe" | head -1)"
  if [ $require -eq 1 ]; then echo "$msg" >&2; exit 1; fi
  echo "$msg (skipped)"
  exit 0
fi

A=(--model tf_efficientdet_d0 --device cuda --image-size 512x512 --iters "$ITERS" --warmup "$WARMUP" --json)
failed=0
run() { # name, flags...: one JSON line on stdout; a failure is reported and counted
  local name=$1; shift
  echo "# $name"
  if ! timeout 300 "$BIN/effdet" bench "$@" "${A[@]}"; then
    echo "bench-gpu: $name failed" >&2
    failed=$((failed + 1))
  fi
}
run "D0 train b64 fp16 (--amp)" --mode train --batch-size 64 --amp
run "D0 train b64 bf16" --mode train --batch-size 64 --amp-dtype bf16
run "D0 train b64 tf32" --mode train --batch-size 64 --tf32
run "D0 infer b64 fp16" --mode infer --batch-size 64 --amp
run "D0 infer b1 fp16" --mode infer --batch-size 1 --amp
prof=$(mktemp)
run "D0 train b64 fp16 --profile" --mode train --batch-size 64 --amp --profile >"$prof"
cat "$prof"
# The profile rows as a table: kind, pass, ops, ms, % of the step, MB per image, GB/s.
grep -o '{"kind": [^}]*}' "$prof" |
  sed -E 's/.*"kind": "([^"]*)", "pass": "([a-z]*)", "ops": ([0-9]+), "ms": ([-0-9.]+), "pct": ([-0-9.]+), "mb_per_img": ([0-9.]+), "gb_per_s": ([0-9.]+).*/\1|\2|\3|\4|\5|\6|\7/' |
  awk -F'|' 'BEGIN { printf "  %-34s %-8s %6s %10s %7s %10s %9s\n", "kind", "pass", "ops", "ms", "step", "MB/img", "GB/s" }
             { printf "  %-34s %-8s %6d %10.3f %6.1f%% %10.2f %9.1f\n", $1, $2, $3, $4, $5, $6, $7 }'
rm -f "$prof"
[ $failed -eq 0 ] || { echo "bench-gpu: $failed runs failed" >&2; exit 1; }
