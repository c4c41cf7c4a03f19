#!/usr/bin/env bash
# Builds and runs the libFuzzer targets of tests/fuzz (clang -fsanitize=fuzzer,address,undefined),
# each for SECONDS seconds (default 60):
#   fuzz_coco_json  the COCO JSON readers and the evaluator; seeds: the COCO fixture files read in
#                   place from the fixtures folder (EFFDET_FIXTURES, default ../shared/fixtures)
#   fuzz_wire       the msgpack message decoder and the evaluator process's message handling;
#                   seeds: messages written by tests/fuzz/wire_seeds.c
#   fuzz_jpeg       the JPEG decoder (loader/jpeg.c: header read, full and scaled decode);
#                   seeds: small JPEGs of every colour form written by tests/fuzz/jpeg_seeds.c
# Not part of `make test`.
#   bash tests/fuzz/run.sh [SECONDS] [extra libFuzzer flags...]
#   FUZZ_TARGETS="fuzz_wire" bash tests/fuzz/run.sh 120     # one target only
# Needs clang and its fuzzer runtime (Debian: clang, libclang-rt-14-dev). Corpora and crash files
# go to build/fuzz/<target>/ (build/ is not tracked).
set -eu
cd "$(dirname "$0")/../.."
SECS=${1:-60}
shift || true
CLANG=${CLANG:-$(command -v clang || command -v clang-14 || true)}
[ -n "$CLANG" ] || { echo "fuzz: clang not found (apt-get install clang libclang-rt-14-dev)"; exit 1; }
FIX=${EFFDET_FIXTURES:-../shared/fixtures}
CFLAGS="-std=gnu11 -g -O1 -I. -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined"
PKG_CFLAGS=$(pkg-config --cflags libcjson msgpack libzmq libturbojpeg)
PKG_LIBS=$(pkg-config --libs libcjson msgpack libzmq libturbojpeg)
EVAL_SRCS="evaluator/coco_eval.c evaluator/coco_eval_match.c evaluator/coco_eval_accum.c"
WIRE_SRCS="shared/wire.c shared/shm.c shared/safetensors.c shared/err.c"
# Each target: the library sources it needs, its dictionary, and its seed folders.
declare -A SRCS=(
  [fuzz_coco_json]="shared/coco.c shared/json_reader.c shared/err.c $EVAL_SRCS"
  [fuzz_wire]="$WIRE_SRCS shared/coco.c shared/json_reader.c shared/log.c shared/zmq_util.c
               evaluator/evaluator_proc.c $EVAL_SRCS"
  [fuzz_jpeg]="loader/jpeg.c shared/err.c"
)
declare -A DICT=([fuzz_coco_json]=tests/fuzz/json.dict [fuzz_wire]=tests/fuzz/wire.dict
                 [fuzz_jpeg]=tests/fuzz/jpeg.dict)
declare -A MAXLEN=([fuzz_coco_json]=100000 [fuzz_wire]=16384 [fuzz_jpeg]=32768)
seeds_of() {
  case $1 in
    fuzz_coco_json) ls -d "$FIX"/coco_eval/case_* 2>/dev/null || true ;;
    fuzz_wire)
      mkdir -p build/fuzz/fuzz_wire/seeds
      # shellcheck disable=SC2086
      "$CLANG" -std=gnu11 -g -O1 -I. $PKG_CFLAGS -o build/fuzz/fuzz_wire/wire_seeds \
        tests/fuzz/wire_seeds.c $WIRE_SRCS $PKG_LIBS -lm &&
        build/fuzz/fuzz_wire/wire_seeds build/fuzz/fuzz_wire/seeds &&
        echo build/fuzz/fuzz_wire/seeds ;;
    fuzz_jpeg)
      mkdir -p build/fuzz/fuzz_jpeg/seeds
      # shellcheck disable=SC2086
      "$CLANG" -std=gnu11 -g -O1 -I. $PKG_CFLAGS -o build/fuzz/fuzz_jpeg/jpeg_seeds \
        tests/fuzz/jpeg_seeds.c $PKG_LIBS &&
        build/fuzz/fuzz_jpeg/jpeg_seeds build/fuzz/fuzz_jpeg/seeds &&
        echo build/fuzz/fuzz_jpeg/seeds ;;
  esac
}
status=0
for target in ${FUZZ_TARGETS:-${!SRCS[@]}}; do
  out=build/fuzz/$target
  mkdir -p "$out/corpus" "$out/artifacts"
  echo "fuzz: building $target"
  # shellcheck disable=SC2086
  "$CLANG" $CFLAGS $PKG_CFLAGS -o "$out/$target" "tests/fuzz/$target.c" ${SRCS[$target]} \
    $PKG_LIBS -lm
  # libFuzzer reads seed folders and writes new inputs to the first one only (ours)
  seeds=$(seeds_of "$target")
  echo "fuzz: running $target for $SECS s (seeds: $(echo $seeds))"
  # shellcheck disable=SC2086
  if ! "$out/$target" -max_total_time="$SECS" -dict="${DICT[$target]}" -max_len="${MAXLEN[$target]}" \
       -timeout=10 -rss_limit_mb=2048 -artifact_prefix="$out/artifacts/" -print_final_stats=1 \
       "$@" "$out/corpus" $seeds 2>"$out/log"; then
    echo "fuzz: $target FAILED (see $out/log and $out/artifacts/)"
    tail -30 "$out/log"
    status=1
  else
    grep -E "stat::number_of_executed_units|stat::peak_rss_mb|Done" "$out/log" | sed "s/^/fuzz: $target: /"
  fi
done
exit $status
