#!/usr/bin/env bash
# End-to-end checks of `effdet eval` as a user runs it: on every pycocotools fixture case the
# 12-line summary prints expected.json's stats to 3 decimals in pycocotools' exact layout, and
# --json gives the 12 stats and the per-category AP within 1e-12; every kind of bad input exits
# non-zero with exactly one stderr line naming the problem. Plain bash and awk (no python in CI).
set -u
BIN=${EFFDET_BIN:?EFFDET_BIN must point at build/bin}
FIX=${EFFDET_FIXTURES:?EFFDET_FIXTURES must point at the fixtures}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
source "$(dirname "$0")/lib/common.bash"

# The numbers of the list "$1" in JSON file $2, one a line.
json_list() { tr -d ' \n' <"$2" | sed -E "s/.*\"$1\":\[([^]]*)\].*/\1/" | tr ',' '\n'; }
# The "key:value" pairs of the object "$1" in JSON file $2, one a line, quotes removed.
json_object() { tr -d ' \n"' <"$2" | sed -E "s/.*$1:\{([^}]*)\}.*/\1/" | tr ',' '\n'; }

# Compares two files of numbers line by line: same count, |a - b| <= tol; prints mismatches.
compare_numbers() {
  awk -v tol="$3" 'NR == FNR { want[FNR] = $1; n = FNR; next }
    { got[FNR] = $1; m = FNR }
    END { if (n != m) { printf "count %d, want %d\n", m, n; exit 1 }
          for (i = 1; i <= n; i++) { d = got[i] - want[i]; if (d < 0) d = -d
            if (d > tol) { printf "line %d: got %s, want %s\n", i, got[i], want[i]; bad = 1 } }
          exit bad }' "$1" "$2"
}

cases=$(ls -d "$FIX"/coco_eval/case_* 2>/dev/null)
[ -n "$cases" ] || bad "no fixture cases in $FIX/coco_eval"
for c in $cases; do
  name=$(basename "$c")
  if ! "$BIN/effdet" eval --gt "$c/gt.json" --dets "$c/dets.json" >"$T/summary" 2>"$T/err"; then
    bad "$name: effdet eval failed: $(cat "$T/err")"
    continue
  fi
  # the summary: pycocotools' layout, and each number = the expected stat to 3 decimals
  json_list stats "$c/expected.json" | awk '{ printf "%.3f\n", $1 }' >"$T/want3"
  sed -E 's/.* = //' "$T/summary" >"$T/got3"
  if [ "$(wc -l <"$T/summary")" -eq 12 ] && diff -q "$T/got3" "$T/want3" >/dev/null &&
     head -1 "$T/summary" | grep -qxF " Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = $(head -1 "$T/want3")" &&
     sed -n 7p "$T/summary" | grep -qF " Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets=  1 ] = "; then
    ok "$name: summary $(tr '\n' ' ' <"$T/got3")"
  else
    bad "$name: summary differs: got $(tr '\n' ' ' <"$T/got3"), want $(tr '\n' ' ' <"$T/want3")"
  fi
  # --json: the 12 stats and every category's AP at full precision
  if ! "$BIN/effdet" eval --gt "$c/gt.json" --dets "$c/dets.json" --json >"$T/out.json" 2>"$T/err"; then
    bad "$name: effdet eval --json failed: $(cat "$T/err")"
    continue
  fi
  json_list stats "$c/expected.json" >"$T/want"
  json_list stats "$T/out.json" >"$T/got"
  if msg=$(compare_numbers "$T/want" "$T/got" 1e-12); then ok "$name: --json stats within 1e-12"
  else bad "$name: --json stats: $msg"; fi
  json_object per_category_AP "$c/expected.json" | sort >"$T/wantc"
  json_object per_category_AP "$T/out.json" | sort >"$T/gotc"
  if [ "$(cut -d: -f1 "$T/wantc")" = "$(cut -d: -f1 "$T/gotc")" ] &&
     msg=$(compare_numbers <(cut -d: -f2 "$T/wantc") <(cut -d: -f2 "$T/gotc") 1e-12); then
    ok "$name: --json per_category_AP ($(wc -l <"$T/wantc") categories) within 1e-12"
  else
    bad "$name: --json per_category_AP: got $(tr '\n' ' ' <"$T/gotc"), want $(tr '\n' ' ' <"$T/wantc") ${msg:-}"
  fi
done

# ---- bad input: one line each ---------------------------------------------------------------
c=$(echo "$cases" | head -1)
GT=$c/gt.json
img=$(tr -d ' \n' <"$GT" | sed -E 's/.*"images":\[\{"id":([0-9]+).*/\1/')
det() { printf '[{"image_id": %s, "category_id": 1, "bbox": %s, "score": %s}]\n' "$img" "$1" "$2"; }
head -c 300 "$c/dets.json" >"$T/cut.json"
head -c 200 "$GT" >"$T/cutgt.json"
printf '[{"image_id": 999999999, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}]' >"$T/unknown.json"
det '[0, 0, -3, 4]' 0.5 >"$T/negw.json"
det '[0, 0, 3, -4]' 0.5 >"$T/negh.json"
det '[0, 0, 3, 4]' NaN >"$T/nan.json"
printf '[{"image_id": %s, "category_id": 1, "bbox": [0, 0, 1, 1]}]' "$img" >"$T/noscore.json"
printf '{"image_id": 1}' >"$T/object.json"
expect_error "missing gt file" "$T/none.json: No such file or directory" \
  "$BIN/effdet" eval --gt "$T/none.json" --dets "$c/dets.json"
expect_error "malformed dets" "cut.json:1:301: " "$BIN/effdet" eval --gt "$GT" --dets "$T/cut.json"
expect_error "malformed gt" "cutgt.json:1:201: image 2: malformed JSON" \
  "$BIN/effdet" eval --gt "$T/cutgt.json" --dets "$c/dets.json"
expect_error "image not in gt" "detection 0: image_id 999999999 is not in the ground truth" \
  "$BIN/effdet" eval --gt "$GT" --dets "$T/unknown.json"
expect_error "negative width" "detection 0: \"bbox\" has a negative width (-3)" \
  "$BIN/effdet" eval --gt "$GT" --dets "$T/negw.json"
expect_error "negative height" "detection 0: \"bbox\" has a negative height (-4)" \
  "$BIN/effdet" eval --gt "$GT" --dets "$T/negh.json"
expect_error "NaN score" "detection 0: \"score\" is NaN" "$BIN/effdet" eval --gt "$GT" --dets "$T/nan.json"
expect_error "missing score" "detection 0: missing \"score\"" \
  "$BIN/effdet" eval --gt "$GT" --dets "$T/noscore.json"
expect_error "results not a list" "expected a list of detections, found an object" \
  "$BIN/effdet" eval --gt "$GT" --dets "$T/object.json"
expect_error "no arguments" "--gt and --dets are required" "$BIN/effdet" eval
expect_error "unknown option" "bad option --bogus" "$BIN/effdet" eval --bogus --gt "$GT"

echo "eval_cli: $fails failed"
[ "$fails" -eq 0 ]
