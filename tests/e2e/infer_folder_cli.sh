#!/usr/bin/env bash
# End-to-end checks of `effdet infer` over a folder of JPEGs and over a COCO-format set, and of
# `effdet eval --weights` on the same set, on a small synthetic set with random weights (fast, and
# the numbers mean nothing: the checks are on what gets written, not on its quality). Bad images
# are counted warnings naming them; no readable image, or a missing path, is one error line.
# Plain bash and awk (CI has neither jq nor python): results files are read a detection a line,
# as effdet writes them, and their JSON is checked by effdet's own strict parser (eval --dets),
# plus jq where it is installed.
set -u
BIN=${EFFDET_BIN:?EFFDET_BIN must point at build/bin}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
source "$(dirname "$0")/lib/common.bash"

# The sorted distinct values of number field $2 in results file $1, as "[a,b,c]".
field_set() { echo "[$(grep -o "\"$2\": -\?[0-9]*" "$1" | awk '{ print $2 }' | sort -un | paste -sd, -)]"; }
# The most detections any one image has in results file $1.
max_per_image() { grep -o '"image_id": [0-9]*' "$1" | sort | uniq -c | awk '$1 > m { m = $1 } END { print m + 0 }'; }
# The category ids of annotation file $1, "[a,b,c]" (effdet synth writes them last, one a line).
category_ids() { echo "[$(sed -n '/"categories"/,$p' "$1" | grep -o '"id": [0-9]*' | awk '{ print $2 }' | sort -n | paste -sd, -)]"; }
# Results file $1 is JSON effdet's parser accepts against ground truth $2 (and jq, if installed).
valid_results() {
  "$BIN/effdet" eval --gt "$2" --dets "$1" >/dev/null 2>&1 || return 1
  if command -v jq >/dev/null; then jq -e 'type == "array"' "$1" >/dev/null; fi
}
# The number of entries of the list "stats" in JSON file $1.
stats_count() { tr -d ' \n' <"$1" | sed -E 's/.*"stats":\[([^]]*)\].*/\1/' | tr ',' '\n' | grep -c .; }

"$BIN/effdet" synth --out "$T/d" --images 6 --seed 3 --size 96x80 --classes 3 >/dev/null 2>&1 ||
  bad "synth"
infer() {
  "$BIN/effdet" infer --model tf_efficientdet_d0 --weights random --image-size 128x128 "$@"
}

# ---- a folder: good images, a truncated JPEG, a text file named .JPG, things that are no images --
mkdir "$T/f" "$T/f/sub.jpg"
cp "$T"/d/images/*.jpg "$T/f/"
head -c 300 "$T/f/000000000002.jpg" >"$T/f/bad.jpg"
rm "$T/f/000000000002.jpg"
printf 'not a jpeg\n' >"$T/f/x.JPG"
printf 'notes\n' >"$T/f/notes.txt"
cp "$T/d/images/000000000001.jpg" "$T/f/sub.jpg/000000000099.jpg" # not recursive: never read
infer --num-classes 3 "$T/f" --out "$T/r.json" 2>"$T/err"
rc=$?
check "infer FOLDER exits 0 with bad images in it" "[ $rc -eq 0 ]"
check "the warnings name the bad files and count them" \
  "grep -q 'warning: .*f/bad.jpg' '$T/err' && grep -q 'warning: .*f/x.JPG' '$T/err' && grep -q '2 of 7 images skipped' '$T/err' && ! grep -q 'notes.txt\|sub.jpg' '$T/err'"
# The synthetic images are named by their ids, so the set's annotations can judge this file.
check "r.json is valid JSON, a results list" "valid_results '$T/r.json' '$T/d/annotations.json'"
check "results hold exactly the readable images' ids" "[ \$(field_set '$T/r.json' image_id) = '[1,3,4,5,6]' ]"
check "at most 100 detections per image" "[ \$(max_per_image '$T/r.json') -le 100 ]"
check "category ids are the model's labels 1..3" \
  "field_set '$T/r.json' category_id | grep -qE '^\\[[123](,[123])*\\]\$'"
# A directory given twice and a file beside it: order kept, directory contents sorted by name.
infer --num-classes 3 "$T/d/images/000000000004.jpg" "$T/allbad_missing.jpg" "$T/f" --out "$T/r2.json" 2>"$T/err"
check "files and folders mix; a missing file among them is a counted warning" \
  "[ \$? -eq 0 ] && grep -q 'allbad_missing.jpg' '$T/err' && grep -q '3 of 9 images skipped' '$T/err'"

# ---- nothing readable, missing or empty paths: one error line -------------------------------------
mkdir "$T/allbad" "$T/empty"
printf 'x' >"$T/allbad/a.jpg"
head -c 200 "$T/d/images/000000000001.jpg" >"$T/allbad/b.jpeg"
expect_error "a folder of only corrupt images" "none of the 2 images could be read" \
  infer --num-classes 3 "$T/allbad" --out "$T/x.json"
check "a failed infer leaves no results file" "[ ! -e '$T/x.json' ] && ! ls '$T' | grep -q tmp"
expect_error "a missing folder" "$T/nope" infer --num-classes 3 "$T/nope" --out "$T/x.json"
expect_error "an empty folder" "$T/empty has no .jpg or .jpeg files" \
  infer --num-classes 3 "$T/empty" --out "$T/x.json"
expect_error "paths and --data together" "two forms" \
  infer "$T/f" --data "$T/d" --out "$T/x.json"
expect_error "--metrics without annotations" "--metrics needs annotations" \
  infer --num-classes 3 "$T/f" --out "$T/x.json" --metrics "$T/m.json"
expect_error "--data of a missing set" "$T/nope/annotations.json" \
  infer --data "$T/nope" --out "$T/x.json"

# ---- a COCO set: ids from the annotations, mAP printed, metrics JSON ------------------------------
infer --data "$T/d" --out "$T/set.json" --metrics "$T/m.json" >"$T/infer.txt" 2>"$T/err"
check "infer --data exits 0" "[ \$? -eq 0 ]" || cat "$T/err"
check "infer --data prints the mAP line and the 12-line summary" \
  "head -1 '$T/infer.txt' | grep -qE '^mAP [0-9.]+ mAP@0.5 [0-9.]+ mAP@0.75 [0-9.]+ \\(6 images\\)\$' && [ \$(grep -c '^ Average \\(Precision\\|Recall\\) ' '$T/infer.txt') -eq 12 ]"
check "--metrics writes the 12 stats as JSON" "[ \$(stats_count '$T/m.json') -eq 12 ]"
check "the results are valid JSON" "valid_results '$T/set.json' '$T/d/annotations.json'"
check "every image of the set has results, under its annotation id" \
  "[ \$(field_set '$T/set.json' image_id) = '[1,2,3,4,5,6]' ]"
# The synthetic set's categories are not 1..3 (the model's labels), so results naming only the
# set's ids, one of them above 3, show that labels map back to category ids.
cats=$(category_ids "$T/d/annotations.json" | tr -d '[]' | tr ',' '\n')
got=$(field_set "$T/set.json" category_id | tr -d '[]' | tr ',' '\n')
check "category ids map back to the set's ($(echo $cats))" \
  "[ -n '$got' ] && [ -z \"\$(grep -vxF -f <(echo '$cats') <<<'$got')\" ] && [ \$(sort -n <<<'$got' | tail -1) -gt 3 ]"

# One corrupt image in the set: a warning, and it is evaluated without detections.
cp -r "$T/d" "$T/d2"
head -c 300 "$T/d/images/000000000004.jpg" >"$T/d2/images/000000000004.jpg"
infer --data "$T/d2" --out "$T/set2.json" >"$T/infer2.txt" 2>"$T/err"
check "a corrupt image in the set: exit 0, a warning naming it" \
  "[ \$? -eq 0 ] && grep -q 'warning: .*000000000004.jpg' '$T/err'"
check "the mAP line says it was evaluated without detections" \
  "head -1 '$T/infer2.txt' | grep -q '(6 images; 1 image unreadable, evaluated without detections)'"
check "its results leave the unreadable image out" "[ \$(field_set '$T/set2.json' image_id) = '[1,2,3,5,6]' ]"

# ---- effdet eval --weights: the same numbers as infer --data, no results file unless --out -------
"$BIN/effdet" eval --weights random --model tf_efficientdet_d0 --image-size 128x128 --data "$T/d" \
  --batch-size 4 >"$T/eval.txt" 2>"$T/err"
check "eval --weights --data prints what infer --data printed (batch 4 vs 1)" \
  "[ \$? -eq 0 ] && diff '$T/eval.txt' '$T/infer.txt' >/dev/null" || diff "$T/eval.txt" "$T/infer.txt" | head -5
"$BIN/effdet" eval --weights random --model tf_efficientdet_d0 --image-size 128x128 --data "$T/d" \
  --json >"$T/eval.json" 2>"$T/err"
check "eval --weights --json prints the same JSON as infer --metrics" "diff -q '$T/eval.json' '$T/m.json'"
"$BIN/effdet" eval --weights random --model tf_efficientdet_d0 --image-size 128x128 \
  --ann "$T/d/annotations.json" --images "$T/d/images" --out "$T/eval_res.json" >/dev/null 2>"$T/err"
check "eval --ann --images --out writes the same results as infer --data" \
  "cmp -s '$T/eval_res.json' '$T/set.json'"
expect_error "eval --weights without --data" "--weights, --model and --data" \
  "$BIN/effdet" eval --weights random --model tf_efficientdet_d0
expect_error "eval --gt with --weights" "two forms" \
  "$BIN/effdet" eval --gt "$T/d/annotations.json" --dets "$T/set.json" --weights random --model tf_efficientdet_d0
# The --gt/--dets form on infer's own output gives the same numbers (the results file is faithful).
"$BIN/effdet" eval --gt "$T/d/annotations.json" --dets "$T/set.json" --json >"$T/gt.json" 2>/dev/null
check "eval --gt/--dets of infer's results file matches --metrics" "diff -q '$T/gt.json' '$T/m.json'"

echo "infer_folder_cli: $fails failed"
[ "$fails" -eq 0 ]
