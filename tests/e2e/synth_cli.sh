#!/usr/bin/env bash
# End-to-end checks of `effdet synth` as a user runs it: the dataset layout (12-digit JPEG names,
# annotations.json with every image, the non-contiguous category ids, no temporary file left),
# byte-identical output for the same seed, --size fixing every image's size, and bad flags or an
# unwritable directory giving exactly one stderr line. Plain bash, grep and cmp.
set -u
BIN=${EFFDET_BIN:?EFFDET_BIN must point at build/bin}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fails=0
ok() { echo "ok   $1"; }
bad() { echo "FAIL $1"; fails=$((fails + 1)); }
# Lines of file $2 matching $1; 0 when the file is missing.
count() { local n; n=$(grep -c -- "$1" "$2" 2>/dev/null); echo "${n:-0}"; }

# A command that must fail with status $2 and exactly one stderr line containing $3.
expect_error() {
  local name=$1 want_rc=$2 needle=$3; shift 3
  "$@" >"$T/out" 2>"$T/err"; local rc=$?
  local lines; lines=$(wc -l <"$T/err")
  if [ "$rc" -eq "$want_rc" ] && [ "$lines" -eq 1 ] && grep -qF -- "$needle" "$T/err"; then
    ok "$name: $(cat "$T/err")"
  else
    bad "$name (exit $rc, $lines stderr lines, wanted $want_rc and '$needle'): $(head -3 "$T/err")"
  fi
}

if "$BIN/effdet" synth --out "$T/a" --images 12 --seed 3 >"$T/out" 2>"$T/err"; then
  ok "synth: $(cat "$T/out")"
else
  bad "synth failed: $(cat "$T/err")"
  exit 1
fi
ann="$T/a/annotations.json"
n_jpeg=0
for i in $(seq 1 12); do
  f=$(printf '%s/a/images/%012d.jpg' "$T" "$i")
  [ "$(head -c 2 "$f" 2>/dev/null | od -An -tx1 | tr -d ' \n')" = "ffd8" ] && n_jpeg=$((n_jpeg + 1))
done
[ "$n_jpeg" -eq 12 ] && [ "$(ls "$T/a/images" | wc -l)" -eq 12 ] && ok "12 JPEGs named 000000000001.jpg .. 000000000012.jpg" ||
  bad "layout: $n_jpeg of 12 JPEGs found: $(ls "$T/a/images" | head -3)"
[ "$(count '"file_name": "0000000000[01][0-9].jpg"' "$ann")" -eq 12 ] && ok "annotations.json lists 12 images" ||
  bad "annotations.json image entries: $(count file_name "$ann")"
cats=$(grep -o '{"id": [0-9]*, "name"' "$ann" 2>/dev/null | grep -o '[0-9]*' | tr '\n' ' ')
[ "$cats" = "1 3 7 " ] && ok "category ids $cats" || bad "category ids '$cats', want '1 3 7 '"
[ "$(count '"iscrowd"' "$ann")" -ge 12 ] && ok "annotations present" || bad "too few annotations"
[ -z "$(ls "$T/a" | grep tmp)" ] && ok "no temporary file left" || bad "left: $(ls "$T/a")"

"$BIN/effdet" synth --out "$T/b" --images 12 --seed 3 >/dev/null 2>&1
if cmp -s "$ann" "$T/b/annotations.json" && diff -r -q "$T/a/images" "$T/b/images" >/dev/null; then
  ok "same seed: byte-identical dataset"
else
  bad "same seed gave different files"
fi
"$BIN/effdet" synth --out "$T/c" --images 12 --seed 4 >/dev/null 2>&1
if [ -s "$T/c/annotations.json" ] && ! cmp -s "$ann" "$T/c/annotations.json"; then
  ok "another seed: another dataset"
else
  bad "seed 4: no dataset, or the same annotations as seed 3"
fi

"$BIN/effdet" synth --out "$T/d" --images 5 --seed 1 --size 64x48 --classes 18 >/dev/null 2>&1
[ "$(count '"width": 64, "height": 48' "$T/d/annotations.json")" -eq 5 ] && ok "--size 64x48 fixes every image" ||
  bad "--size 64x48: $(grep -o '"width": [0-9]*, "height": [0-9]*' "$T/d/annotations.json" 2>/dev/null | head -2)"

expect_error "bad --images" 1 "--images 0" "$BIN/effdet" synth --out "$T/e" --images 0 --seed 1
expect_error "bad --seed" 1 "--seed abc" "$BIN/effdet" synth --out "$T/e" --images 2 --seed abc
expect_error "bad --size" 1 "--size 10x5" "$BIN/effdet" synth --out "$T/e" --images 2 --seed 1 --size 10x5
expect_error "bad --classes" 1 "--classes 19" "$BIN/effdet" synth --out "$T/e" --images 2 --seed 1 --classes 19
expect_error "unwritable --out" 1 "$T/no/such/dir" "$BIN/effdet" synth --out "$T/no/such/dir" --images 2 --seed 1
expect_error "missing --out" 2 "usage: effdet synth" "$BIN/effdet" synth --images 2 --seed 1

[ "$fails" -eq 0 ]
