#!/usr/bin/env bash
# End-to-end checks of `effdet bench --mode train|infer|forward --profile --json` and --amp on the
# CPU backend (what `make bench-gpu` runs on a GPU), at a tiny size (D0, 64x64, batch 2, 1 iter):
#   1. every mode prints exactly one line on stdout: one JSON object (balanced, jq-valid where jq
#      is installed) with numeric img_per_s and latency_ms;
#   2. --profile adds profile_step_ms and a "profile" array: per-kind rows whose times sum to no
#      more than the profiled step, the "other" row last and equal to what the rows leave of the
#      step; in train mode as many backward ops as forward ops;
#   3. the text form prints the table, with the mode's "other" row;
#   4. --amp / --amp-dtype bf16 report their precision, and 2-byte activations cut the traffic
#      the profile counts (by less than half: the fp32 weights weigh much at 64x64);
#   5. bad flags give exactly one error line naming the flag.
# Plain bash and awk (CI has neither jq nor python). About 15 s.
set -u
BIN=${EFFDET_BIN:?EFFDET_BIN must point at build/bin}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
source "$(dirname "$0")/lib/common.bash"
export EFFDET_LOG=warn
SMALL=(--model tf_efficientdet_d0 --device cpu --image-size 64x64 --batch-size 2 --iters 1 --warmup 0)

# jnum FILE KEY: the top-level number KEY ("" when absent); the profile rows are cut first.
jnum() { sed -E 's/"profile": \[.*\]//' "$1" | sed -nE "s/.*\"$2\": (-?[0-9.e+]+).*/\1/p"; }
# rows FILE: one profile row a line, "kind|pass|ops|ms|mb_per_img".
rows() {
  grep -o '{"kind": [^}]*}' "$1" |
    sed -E 's/.*"kind": "([^"]*)", "pass": "([a-z]*)", "ops": ([0-9]+), "ms": (-?[0-9.]+), .*"mb_per_img": ([0-9.]+).*/\1|\2|\3|\4|\5/'
}
# One line, one object, braces and brackets balanced, numeric img_per_s and latency_ms.
one_object() {
  [ "$(wc -l <"$1")" -eq 1 ] || return 1
  awk '{ o = gsub(/{/, "{"); c = gsub(/}/, "}"); so = gsub(/\[/, "["); sc = gsub(/\]/, "]");
         exit !(o == c && so == sc && substr($0, 1, 1) == "{" && substr($0, length($0)) == "}") }' "$1" || return 1
  if command -v jq >/dev/null; then jq -e 'type == "object"' "$1" >/dev/null || return 1; fi
  awk -v v="$(jnum "$1" img_per_s)" -v l="$(jnum "$1" latency_ms)" 'BEGIN { exit !(v > 0 && l > 0) }'
}
bench() { # name, out file, flags...: runs effdet bench, checks exit 0 and the one JSON object
  local name=$1 out=$2; shift 2
  "$BIN/effdet" bench "$@" >"$out" 2>"$T/err"
  local rc=$?
  if [ $rc -ne 0 ]; then bad "$name: exit $rc: $(head -2 "$T/err")"; return 1; fi
  check "$name: one JSON object with img_per_s and latency_ms" "one_object '$out'"
}
# The profile of JSON file $1: rows sum within the step and the other row ($2) is the remainder.
check_profile() {
  local f=$1 other=$2 step
  step=$(jnum "$f" profile_step_ms)
  rows "$f" >"$T/rows"
  check "$f: profile rows ($(grep -c . "$T/rows")) and profile_step_ms ($step)" \
    "[ -n '$step' ] && [ \$(grep -c '|forward|' '$T/rows') -ge 5 ]"
  check "$f: per-kind times sum within the step, '$other' is the rest" \
    "awk -F'|' -v step='$step' -v other='$other' '
       \$2 != \"step\" { s += \$4; if (\$4 < 0) bad = 1 }
       \$2 == \"step\" { n++; last = NR; o = \$4; if (\$1 != other) bad = 1 }
       END { d = step - s - o; exit !(!bad && n == 1 && last == NR && s > 0 && s <= step + 1e-3 &&
                                     d < 1e-3 && d > -1e-3) }' '$T/rows'"
}

# ---- train ----------------------------------------------------------------------------------------
if bench "train --profile --json" "$T/train.json" --mode train "${SMALL[@]}" --profile --json; then
  check_profile "$T/train.json" "other (loss, optimizer, targets)"
  check "train: precision fp32, as many backward ops as forward ops" \
    "grep -q '\"precision\": \"fp32\"' '$T/train.json' && awk -F'|' '\$2 == \"forward\" { f += \$3 } \$2 == \"backward\" { b += \$3 } END { exit !(f > 0 && f == b) }' '$T/rows'"
fi
"$BIN/effdet" bench --mode train "${SMALL[@]}" --profile >"$T/train.txt" 2>"$T/err"
check "train --profile (text): the table with the other row and the step" \
  "grep -q '^train tf_efficientdet_d0 cpu batch 2 64x64 fp32' '$T/train.txt' && grep -q 'other (loss, optimizer, targets)' '$T/train.txt' && grep -qE '^  step +step' '$T/train.txt'"
if bench "train --amp --json" "$T/amp.json" --mode train "${SMALL[@]}" --amp --json; then
  check "train --amp: precision fp16, no profile unless asked" \
    "grep -q '\"precision\": \"fp16\"' '$T/amp.json' && ! grep -q '\"profile\"' '$T/amp.json'"
fi

# ---- infer and forward ----------------------------------------------------------------------------
if bench "infer --json" "$T/infer.json" --mode infer "${SMALL[@]}" --json; then
  check "infer: batch 2, image_size [64, 64], no profile" \
    "grep -q '\"batch_size\": 2,' '$T/infer.json' && grep -q '\"image_size\": \[64, 64\]' '$T/infer.json' && ! grep -q '\"profile\"' '$T/infer.json'"
fi
bench "infer --profile --json" "$T/infer_p.json" --mode infer "${SMALL[@]}" --profile --json &&
  check_profile "$T/infer_p.json" "other (detect, download)"
bench "forward --profile --json" "$T/fwd.json" --mode forward "${SMALL[@]}" --profile --json &&
  check_profile "$T/fwd.json" "other (between ops)"
if bench "infer --amp-dtype bf16 --profile" "$T/bf16.json" --mode infer "${SMALL[@]}" --amp-dtype bf16 --profile --json; then
  check "infer bf16: precision bf16, 2-byte activations move less than fp32's" \
    "grep -q '\"precision\": \"bf16\"' '$T/bf16.json' && awk -v a='$(jnum "$T/bf16.json" profile_mb_per_img)' -v b='$(jnum "$T/infer_p.json" profile_mb_per_img)' 'BEGIN { exit !(a > 0 && a < 0.9 * b) }'"
fi
bench "infer-jpeg --json" "$T/jpeg.json" --mode infer-jpeg "${SMALL[@]}" --json

# ---- bad flags --------------------------------------------------------------------------------------
expect_error "bench --amp-dtype fp8" "--amp-dtype fp8" "$BIN/effdet" bench --mode train "${SMALL[@]}" --amp-dtype fp8
expect_error "bench --mode nope" "--mode nope" "$BIN/effdet" bench --mode nope
expect_error "bench unknown flag" "--profiel" "$BIN/effdet" bench --mode train --profiel
expect_error "bench --iters 0" "--iters" "$BIN/effdet" bench --mode infer --iters 0
expect_error "bench --profile on cuda without a GPU" "cuda" \
  "$BIN/effdet" bench --mode infer --device cuda --image-size 64x64 --iters 1 --profile --json

echo "bench_profile_cli: $fails failed"
[ "$fails" -eq 0 ]
