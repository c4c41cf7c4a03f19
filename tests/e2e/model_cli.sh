#!/usr/bin/env bash
# End-to-end checks of `effdet info`, `effdet parity`, `effdet infer` and `effdet bench` as a user
# runs them: parameter counts of every variant against ../shared/fixtures/paramcounts.md, the
# parity report on the reference fixture, inference on every JPEG colour form, and every kind of
# bad input giving exactly one error line naming the thing (or a counted warning), never a crash.
set -u
BIN=${EFFDET_BIN:?EFFDET_BIN must point at build/bin}
FIX=${EFFDET_FIXTURES:?EFFDET_FIXTURES must point at the fixtures}
MKJPEG="$BIN/../tests/tools/mkjpeg"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
source "$(dirname "$0")/lib/common.bash"

# ---- info: every variant of paramcounts.md --------------------------------------------------------
rows=$(grep -E '^\| tf_efficientdet_d[0-9x]+ \| [0-9]+x[0-9]+ ' "$FIX/paramcounts.md")
[ -n "$rows" ] || bad "paramcounts.md has no variant rows"
while IFS='|' read -r _ model size _ _ _ _ _ anchors params bnbuf bnlayers _; do
  model=$(echo $model); anchors=$(echo $anchors | sed 's/ (.*//; s/,//g'); params=$(echo $params | tr -d ,)
  bnbuf=$(echo $bnbuf | tr -d ,); bnlayers=$(echo $bnlayers)
  j=$("$BIN/effdet" info --model "$model" --json)
  check "info $model params $params anchors $anchors bn $bnbuf/$bnlayers" \
    "echo '$j' | grep -q '\"params\": $params,' && echo '$j' | grep -q '\"anchors\": $anchors,' && echo '$j' | grep -q '\"bn_buffers\": $bnbuf,' && echo '$j' | grep -q '\"bn_layers\": $bnlayers,'"
done <<<"$rows"
# The breakdown table: (model, num_classes) -> total, which covers the custom-classes case.
while IFS='|' read -r _ model nc _ _ _ _ _ total _; do
  model=$(echo $model); nc=$(echo $nc); total=$(echo $total | tr -d ,)
  j=$("$BIN/effdet" info --model "$model" --num-classes "$nc" --json)
  check "info $model num_classes $nc params $total" "echo '$j' | grep -q '\"params\": $total,'"
done < <(grep -E '^\| tf_efficientdet_d[0-9x]+ \| [0-9]+ \| [0-9,]+ ' "$FIX/paramcounts.md")
expect_error "info unknown model" "unknown model 'd9'" "$BIN/effdet" info --model d9

# ---- parity on the reference fixture --------------------------------------------------------------
"$BIN/effdet" parity "$FIX/effdet_d0_128" --out "$T/parity.safetensors" >"$T/parity.txt" 2>&1
check "parity writes its output" "[ -s '$T/parity.safetensors' ]"
check "parity detections match" "grep -q 'detections     match' '$T/parity.txt'"
check "parity head outputs within 1e-4" \
  "awk '/^  (class|box)_out\\.[0-9] +max/ { n++; if (\$NF + 0 > 1e-4) bad = 1 } END { exit !(n == 10 && !bad) }' '$T/parity.txt'"

# ---- infer: every JPEG form, and bad input --------------------------------------------------------
W="$FIX/effdet_d0_128/weights.safetensors"
for k in rgb gray cmyk progressive; do "$MKJPEG" "$T/$k.jpg" "$k" 150 110 || bad "mkjpeg $k"; done
infer() { "$BIN/effdet" infer --model tf_efficientdet_d0 --weights "$W" --image-size 128x128 "$@"; }
infer "$T/rgb.jpg" "$T/gray.jpg" "$T/cmyk.jpg" "$T/progressive.jpg" --out "$T/res.json" --draw "$T/drawn" 2>"$T/err"
check "infer on rgb, gray, cmyk and progressive JPEGs" \
  "[ \$(grep -c '\"image_id\"' '$T/res.json') -eq 400 ] && [ \$(ls '$T/drawn' | wc -l) -eq 4 ]"
check "infer boxes lie inside the original image" \
  "! grep -o '\"bbox\": \\[[^]]*\\]' '$T/res.json' | tr -d '\"bbox:[],' | awk '\$1 < 0 || \$2 < 0 || \$1 + \$3 > 150.01 || \$2 + \$4 > 110.01 { bad = 1 } END { exit !bad }'"
cp "$T/rgb.jpg" "$T/000000397133.jpg"
infer "$T/000000397133.jpg" --out "$T/id.json" 2>/dev/null
check "infer takes COCO image ids from file names" "grep -q '\"image_id\": 397133,' '$T/id.json'"
printf 'not a jpeg at all\n' >"$T/text.jpg"
head -c 900 "$T/rgb.jpg" >"$T/truncated.jpg"
expect_error "infer missing image" "$T/missing.jpg" infer "$T/missing.jpg" --out "$T/x.json"
expect_error "infer not a JPEG" "$T/text.jpg" infer "$T/text.jpg" --out "$T/x.json"
expect_error "infer truncated JPEG" "$T/truncated.jpg" infer "$T/truncated.jpg" --out "$T/x.json"
check "a failed infer leaves no output file" "[ ! -e '$T/x.json' ]"
infer "$T/rgb.jpg" "$T/truncated.jpg" "$T/gray.jpg" --out "$T/some.json" 2>"$T/err"
check "infer skips a bad image among good ones, counted" \
  "[ \$? -eq 0 ] && grep -q '1 of 3 images skipped' '$T/err' && grep -q 'truncated.jpg' '$T/err' && [ \$(grep -c '\"image_id\"' '$T/some.json') -eq 200 ]"
expect_error "infer weights of another variant" "tf_efficientdet_d0" \
  "$BIN/effdet" infer --model tf_efficientdet_d1 --weights "$W" --image-size 128x128 "$T/rgb.jpg" --out "$T/x.json"
expect_error "infer weights with other num_classes" "class_net.predict.conv_pw" \
  "$BIN/effdet" infer --model tf_efficientdet_d0 --num-classes 3 --weights "$W" --image-size 128x128 "$T/rgb.jpg" --out "$T/x.json"
head -c 1000000 "$W" >"$T/trunc.safetensors"
expect_error "infer truncated safetensors" "trunc.safetensors" \
  "$BIN/effdet" infer --model tf_efficientdet_d0 --weights "$T/trunc.safetensors" --image-size 128x128 "$T/rgb.jpg" --out "$T/x.json"
{ printf '\x10\x00\x00\x00\x00\x00\x00\x00{"a": [1, 2,   '; head -c 5000 /dev/zero; } >"$T/corrupt.safetensors"
expect_error "infer corrupted safetensors" "corrupt.safetensors" \
  "$BIN/effdet" infer --model tf_efficientdet_d0 --weights "$T/corrupt.safetensors" --image-size 128x128 "$T/rgb.jpg" --out "$T/x.json"
expect_error "infer missing weights" "nope.safetensors" \
  "$BIN/effdet" infer --model tf_efficientdet_d0 --weights "$T/nope.safetensors" "$T/rgb.jpg" --out "$T/x.json"
expect_error "infer --image-size not HxW" "--image-size 12by12" infer "$T/rgb.jpg" --out "$T/x.json" --image-size 12by12
expect_error "infer --image-size zero" "--image-size 0x64" infer "$T/rgb.jpg" --out "$T/x.json" --image-size 0x64
expect_error "infer --image-size too thin for the pyramid" "too small or too thin" infer "$T/rgb.jpg" --out "$T/x.json" --image-size 8x512

# ---- bench ----------------------------------------------------------------------------------------
j=$("$BIN/effdet" bench --mode forward --model tf_efficientdet_d0 --device cpu --batch-size 1 --image-size 128x128 --iters 2 --warmup 1 --json)
check "bench --json prints img_per_s and latency_ms" "echo '$j' | grep -q '\"img_per_s\": [0-9]' && echo '$j' | grep -q '\"latency_ms\": [0-9]'"
expect_error "bench --device cuda without a CUDA build or GPU" "cuda" \
  "$BIN/effdet" bench --mode forward --device cuda --image-size 128x128 --iters 1

# ---- valgrind: no leak in effdet infer ------------------------------------------------------------
if command -v valgrind >/dev/null && [ "${SAN:-}" != 1 ]; then
  OPENBLAS_CORETYPE=Haswell GOMP_SPINCOUNT=2000 OMP_NUM_THREADS=1 valgrind -q --leak-check=full --errors-for-leak-kinds=definite,indirect \
    --error-exitcode=3 "$BIN/effdet" infer --model tf_efficientdet_d0 --weights "$W" --image-size 64x64 \
    "$T/rgb.jpg" "$T/truncated.jpg" --out "$T/vg.json" --draw "$T/vgdraw" >"$T/vg.txt" 2>&1
  check "valgrind: effdet infer runs clean, no leak" "[ \$? -eq 0 ]" || cat "$T/vg.txt" | head -30
else
  echo "skip valgrind (not installed, or a sanitizer build)"
fi

echo "model_cli: $fails failed"
[ "$fails" -eq 0 ]
