#!/usr/bin/env bash
# End-to-end checks of the data pipeline (effdet-loader and effdet-augment processes over ZeroMQ
# and shared memory) through `effdet batches`, on small synthetic datasets:
#   1. determinism: any number of loaders x augmenters gives byte-identical batches; another seed
#      other batches; --eval one pass in index order;
#   2. exactly once: every epoch delivers each image once as valid, over 1 or 2 ranks, with the
#      padding (valid 0) of a dataset the global batch does not divide;
#   3. a consumer killed with -9 and restarted with --resume logs what an uninterrupted run logs;
#   4. the same when an augmenter (one of one, one of two) or a loader is killed -9 and restarted;
#   5. unreadable images (garbage, truncated, empty, larger than annotated) fail with one line
#      naming the file, or are replaced with --skip-bad-images; gray, CMYK and progressive JPEGs load;
#   6. bad flags give one line;
#   7. after every case: no process of the test left, no shared-memory segment of the test left,
#      no run directory left in $TMPDIR.
# Plain bash, awk, grep and cmp.
set -u
BIN=${EFFDET_BIN:-$(cd "$(dirname "$0")/../.." && pwd)/build/bin}
MKJPEG="$BIN/../tests/tools/mkjpeg"
T=$(mktemp -d)
source "$(dirname "$0")/lib/common.bash"
source "$(dirname "$0")/lib/cases.bash" # TMPDIR, cleanup at exit, run_case

# Lines of a file, 0 when it is missing.
nlines() { if [ -f "$1" ]; then wc -l <"$1"; else echo 0; fi; }

# Waits (up to 10 s) until file $1 has at least $2 lines while process $3 lives. 0 when it has.
wait_lines() {
  local i
  for i in $(seq 1 500); do
    [ "$(nlines "$1")" -ge "$2" ] && return 0
    kill -0 "$3" 2>/dev/null || return 1
    sleep 0.02
  done
  return 1
}

# spawn VAR ERRFILE CMD...: CMD in the background (stderr appended to ERRFILE), its pid in VAR.
spawn() {
  local var=$1 errf=$2; shift 2
  "$@" 2>>"$errf" &
  printf -v "$var" %s $!
}

# Stops process $2 (named $1) with SIGTERM and checks it exits 0 within 5 s.
stop_ok() {
  local name=$1 pid=$2 i rc
  kill -TERM "$pid" 2>/dev/null
  for i in $(seq 1 250); do kill -0 "$pid" 2>/dev/null || break; sleep 0.02; done
  if kill -0 "$pid" 2>/dev/null; then
    kill -KILL "$pid"; { wait "$pid"; } 2>/dev/null
    bad "$name: still running 5 s after SIGTERM"
    return
  fi
  { wait "$pid"; rc=$?; } 2>/dev/null
  [ "$rc" -eq 0 ] && ok "$name: exits 0 on SIGTERM" || bad "$name: exit $rc on SIGTERM"
}

# kill -9 of pid $1: it cannot remove its shared-memory segment; its restarted successor removes
# segments of dead processes when it starts, which the after-case check verifies.
kill9() {
  kill -KILL "$1" 2>/dev/null
  { wait "$1"; } 2>/dev/null
}

# ---- helpers for batch lines "EPOCH BATCH HASH N_VALID INDEX:VALID ..." -----------------------
# exactly_once FILE N EPOCHS LINES_PER_EPOCH ORDERED: each epoch has LINES_PER_EPOCH lines and its
# valid indices are 0..N-1 once each; N_VALID matches the line; with ORDERED=1 the lines are epoch
# by epoch, batch 0, 1, ... Prints what is wrong.
exactly_once() {
  awk -v n="$2" -v ne="$3" -v lpe="$4" -v ordered="$5" '
    { e = $1; if (!(e in lines)) nep++; lines[e]++; v = 0
      if (ordered && ($1 != int((NR - 1) / lpe) || $2 != (NR - 1) % lpe)) {
        print "line " NR ": epoch " $1 " batch " $2 " out of order"; bad = 1 }
      for (i = 5; i <= NF; i++) {
        split($i, p, ":")
        if (p[2] == "1") { v++; seen[e, p[1]]++; tot[e]++ }
        else if (p[2] != "0") { print "line " NR ": bad field " $i; bad = 1 }
      }
      if (v != $4) { print "line " NR ": n_valid " $4 ", " v " valid"; bad = 1 } }
    END {
      if (nep != ne) { print nep " epochs, want " ne; bad = 1 }
      for (e = 0; e < ne; e++) {
        if (lines[e] != lpe) { print "epoch " e ": " lines[e] + 0 " lines, want " lpe; bad = 1 }
        if (tot[e] != n) { print "epoch " e ": " tot[e] + 0 " valid, want " n; bad = 1 }
        for (i = 0; i < n; i++)
          if (seen[e, i] != 1) { print "epoch " e ": index " i " valid " seen[e, i] + 0 " times"; bad = 1 }
      }
      exit bad }' "$1"
}
# Valid indices of file $1 in order, space-separated.
valid_indices() { awk '{ for (i = 5; i <= NF; i++) { split($i, p, ":"); if (p[2] == "1") printf "%s ", p[1] } }' "$1"; }
# Every index loaded (valid or not), one a line.
all_indices() { awk '{ for (i = 5; i <= NF; i++) { split($i, p, ":"); print p[1] } }' "$1"; }

# batches OUT ARGS...: effdet batches (20 s at most) with stdout to OUT, stderr to OUT.err.
batches() {
  local out=$1; shift
  timeout -k 3 20 "$BIN/effdet" batches "$@" >"$out" 2>"$out.err"
}

# ---- datasets ----------------------------------------------------------------------------------
if ! "$BIN/effdet" synth --out "$T/d24" --images 24 --size 160x120 --seed 3 >/dev/null 2>"$T/err" ||
   ! "$BIN/effdet" synth --out "$T/d22" --images 22 --size 160x120 --seed 3 >/dev/null 2>"$T/err"; then
  bad "effdet synth: $(cat "$T/err")"
  exit 1
fi
TRAIN=(--batch-size 4 --image-size 128x128 --epochs 2 --seed 5)

# The 1x1 batches of the intact 24-image set (case 1 makes them; later cases compare with them).
base_output() { [ -s "$T/b1x1" ] || batches "$T/b1x1" --data "$T/d24" "${TRAIN[@]}"; }

# ---- 1. determinism ----------------------------------------------------------------------------
case_determinism() {
  local lm l m
  for lm in 1x1 2x3 3x1; do
    l=${lm%x*} m=${lm#*x}
    batches "$T/b$lm" --data "$T/d24" "${TRAIN[@]}" --loaders "$l" --augmenters "$m" ||
      bad "$lm: effdet batches exit $?: $(head -2 "$T/b$lm.err")"
  done
  if [ "$(nlines "$T/b1x1")" -eq 12 ] && exactly_once "$T/b1x1" 24 2 6 1 >"$T/why"; then
    ok "1x1: 2 epochs of 6 batches: $(head -1 "$T/b1x1")"
  else
    bad "1x1: $(nlines "$T/b1x1") lines: $(head -3 "$T/why")"
  fi
  for lm in 2x3 3x1; do
    cmp -s "$T/b1x1" "$T/b$lm" && ok "$lm loaders x augmenters: byte-identical to 1x1" ||
      bad "$lm differs from 1x1: $(diff "$T/b1x1" "$T/b$lm" | head -3 | tr '\n' ' ')"
  done
  batches "$T/bseed" --data "$T/d24" --batch-size 4 --image-size 128x128 --epochs 2 --seed 6 ||
    bad "--seed 6: exit $?: $(head -2 "$T/bseed.err")"
  # another seed: another order of the first epoch, and no batch hash in common
  if [ "$(nlines "$T/bseed")" -eq 12 ] && [ "$(valid_indices "$T/bseed")" != "$(valid_indices "$T/b1x1")" ] &&
     [ -z "$(comm -12 <(cut -d' ' -f3 "$T/b1x1" | sort) <(cut -d' ' -f3 "$T/bseed" | sort))" ]; then
    ok "--seed 6: another order and other batches"
  else
    bad "--seed 6 gives the same order or batches as --seed 5"
  fi
  batches "$T/beval" --data "$T/d24" "${TRAIN[@]}" --eval || bad "--eval: exit $?: $(head -2 "$T/beval.err")"
  local want; want="$(seq 0 23 | tr '\n' ' ')"
  if [ "$(nlines "$T/beval")" -eq 6 ] && [ "$(valid_indices "$T/beval")" = "$want" ] &&
     exactly_once "$T/beval" 24 1 6 1 >"$T/why"; then
    ok "--eval (with --epochs 2): one pass, indices 0..23 in order"
  else
    bad "--eval: $(nlines "$T/beval") lines, indices $(valid_indices "$T/beval") $(head -2 "$T/why")"
  fi
  batches "$T/beval22" --data "$T/d22" "${TRAIN[@]}" --eval
  if [ "$(valid_indices "$T/beval22")" = "$(seq 0 21 | tr '\n' ' ')" ] &&
     [ "$(tail -1 "$T/beval22" | cut -d' ' -f4-)" = "2 20:1 21:1 0:0 1:0" ]; then
    ok "--eval on 22 images: 0..21, the last batch padded: $(tail -1 "$T/beval22" | cut -d' ' -f4-)"
  else
    bad "--eval on 22 images: $(valid_indices "$T/beval22") / last: $(tail -1 "$T/beval22")"
  fi
}

# ---- 2. exactly once per epoch -----------------------------------------------------------------
case_exactly_once() {
  local n r f
  batches "$T/o22" --data "$T/d22" --batch-size 4 --image-size 96x96 --epochs 2 --seed 5 ||
    bad "22 images: exit $?: $(head -2 "$T/o22.err")"
  # 22 = 5 full batches + one of 2 valid and 2 padding positions
  if exactly_once "$T/o22" 22 2 6 1 >"$T/why" && [ "$(grep -c ' 2 [0-9]*:1 [0-9]*:1 [0-9]*:0 [0-9]*:0$' "$T/o22")" -eq 2 ]; then
    ok "1 rank, 22 images, batch 4: each index valid once per epoch, last batch 2 valid + 2 padding"
  else
    bad "1 rank, 22 images: $(head -3 "$T/why") $(grep -c ':0' "$T/o22") padding fields"
  fi
  for n in 24 22; do
    for r in 0 1; do
      batches "$T/r$n.$r" --data "$T/d$n" --batch-size 4 --image-size 96x96 --epochs 2 --seed 5 \
        --rank "$r" --world 2 || bad "$n images rank $r: exit $?: $(head -2 "$T/r$n.$r.err")"
    done
    # each rank: 3 batches an epoch; together every index once per epoch
    if [ "$(nlines "$T/r$n.0")" -eq 6 ] && [ "$(nlines "$T/r$n.1")" -eq 6 ] &&
       exactly_once <(cat "$T/r$n.0" "$T/r$n.1") "$n" 2 6 0 >"$T/why"; then
      ok "--world 2, $n images: ranks disjoint, together each index valid once per epoch"
    else
      bad "--world 2, $n images: $(nlines "$T/r$n.0") + $(nlines "$T/r$n.1") lines: $(head -3 "$T/why")"
    fi
  done
  # 24 positions an epoch for 22 images: the 2 padding ones are the last 2 of rank 1's last batch
  local p0 p1
  p0=$(grep -o ' [0-9]*:0' "$T/r22.0" | wc -l) p1=$(grep -c ' [0-9]*:1 [0-9]*:1 [0-9]*:0 [0-9]*:0$' "$T/r22.1")
  if [ "$p0" -eq 0 ] && [ "$p1" -eq 2 ] && [ "$(tail -1 "$T/r22.1" | cut -d' ' -f2)" = 2 ]; then
    ok "--world 2, 22 images: per epoch the 2 padding positions end rank 1's last batch"
  else
    bad "--world 2, 22 images: padding fields of rank 0: $p0, rank 1's padded batches: $p1"
  fi
}

# ---- 3. to 4. processes killed and restarted ---------------------------------------------------
# start_stages DIR NL NA: loaders l0.. and augmenters a0.. (pids in LP[], AP[]), augmenter
# endpoints in EPS, with the flags a restart reuses (start_loader / start_aug).
start_loader() { spawn "LP[$2]" "$1/l$2.err" "$BIN/effdet-loader" --data "$T/d24" --listen "ipc://$1/l$2.sock" --name "l$2" --hb-ms 50; }
start_aug() {
  spawn "AP[$2]" "$1/a$2.err" "$BIN/effdet-augment" --loaders "$LEPS" --listen "ipc://$1/a$2.sock" \
    --name "a$2" --batch 4 --image-size 96x96 --seed 7 --hb-ms 50 --dead-ms 500
}
start_stages() {
  local i
  LP=() AP=() LEPS="" EPS=""
  for i in $(seq 0 $(($2 - 1))); do start_loader "$1" "$i"; LEPS="$LEPS${LEPS:+,}ipc://$1/l$i.sock"; done
  for i in $(seq 0 $(($3 - 1))); do start_aug "$1" "$i"; EPS="$EPS${EPS:+,}ipc://$1/a$i.sock"; done
}
stop_stages() {
  local i
  for i in "${!LP[@]}"; do stop_ok "loader l$i" "${LP[$i]}"; done
  for i in "${!AP[@]}"; do stop_ok "augmenter a$i" "${AP[$i]}"; done
}
CONSUMER=(--batch-size 4 --image-size 96x96 --epochs 2 --seed 7 --dead-ms 500)

# The uninterrupted log of the stages started: $1/ref, 12 lines.
ref_log() {
  timeout -k 3 20 "$BIN/effdet" batches --connect "$EPS" "${CONSUMER[@]}" --log "$1/ref" 2>"$1/ref.err"
  local rc=$?
  if [ "$rc" -eq 0 ] && [ "$(nlines "$1/ref")" -eq 12 ] && exactly_once "$1/ref" 24 2 6 1 >"$T/why"; then
    ok "$2: uninterrupted run: 12 batches"
  else
    bad "$2: uninterrupted run: exit $rc, $(nlines "$1/ref") lines: $(head -2 "$1/ref.err") $(head -2 "$T/why")"
  fi
}

# compare_log DIR NAME: DIR/log equals DIR/ref line for line.
compare_log() {
  if [ -s "$1/ref" ] && cmp -s "$1/ref" "$1/log"; then
    ok "$2: log equals the uninterrupted log ($(nlines "$1/log") lines)"
  else
    bad "$2: log differs from the uninterrupted one: $(diff "$1/ref" "$1/log" | head -4 | tr '\n' ' ')"
  fi
}

case_consumer_restart() {
  local D=$T/p3 cp n1 n2 rc
  mkdir -p "$D"
  start_stages "$D" 1 1
  ref_log "$D" "consumer restart"
  # killed twice (mid-epoch, then at about the epoch's end), resumed each time
  spawn cp "$D/c.err" "$BIN/effdet" batches --connect "$EPS" "${CONSUMER[@]}" --log "$D/log" --delay-ms 100
  wait_lines "$D/log" 3 "$cp"; kill9 "$cp"; n1=$(nlines "$D/log")
  spawn cp "$D/c.err" "$BIN/effdet" batches --connect "$EPS" "${CONSUMER[@]}" --log "$D/log" --delay-ms 100 --resume
  wait_lines "$D/log" 6 "$cp"; kill9 "$cp"; n2=$(nlines "$D/log")
  timeout -k 3 20 "$BIN/effdet" batches --connect "$EPS" "${CONSUMER[@]}" --log "$D/log" --resume 2>>"$D/c.err"
  rc=$?
  if [ "$n1" -ge 3 ] && [ "$n1" -lt "$n2" ] && [ "$n2" -lt 12 ] && [ "$rc" -eq 0 ]; then
    ok "consumer killed -9 after $n1 and $n2 lines, resumed: exit 0"
  else
    bad "consumer restart: killed after $n1 and $n2 lines (want 3.. < .. < 12), resume exit $rc: $(tail -2 "$D/c.err")"
  fi
  compare_log "$D" "consumer killed twice and resumed"
  stop_stages
}

# kill_stage NAME KIND(aug|loader) NL NA: the consumer runs (slowly) while stage KIND 0 is killed
# -9 after 3 batches and restarted with the same flags; the consumer must finish with the
# uninterrupted log.
kill_stage() {
  local name=$1 kind=$2 D=$T/p4$2$3$4 cp rc n
  mkdir -p "$D"
  start_stages "$D" "$3" "$4"
  ref_log "$D" "$name"
  spawn cp "$D/c.err" timeout -k 3 12 "$BIN/effdet" batches --connect "$EPS" "${CONSUMER[@]}" --log "$D/log" --delay-ms 100
  wait_lines "$D/log" 3 "$cp"
  n=$(nlines "$D/log")
  if [ "$kind" = aug ]; then kill9 "${AP[0]}"; start_aug "$D" 0; else kill9 "${LP[0]}"; start_loader "$D" 0; fi
  { wait "$cp"; rc=$?; } 2>/dev/null
  if [ "$rc" -eq 0 ] && [ "$n" -ge 3 ] && [ "$n" -lt 12 ]; then
    ok "$name: killed -9 after $n batches and restarted: the consumer completes"
  else
    bad "$name: killed after $n batches: consumer exit $rc (124: hung) with $(nlines "$D/log") of 12 lines: $(tail -2 "$D/c.err" | tr '\n' ' ')"
  fi
  compare_log "$D" "$name"
  stop_stages
}

# ---- 5. bad images, and the JPEG forms a folder may hold ---------------------------------------
# corrupt_case KIND: 000000000005.jpg (index 4) made unreadable in a copy of the 24-image set.
corrupt_case() {
  local kind=$1 C=$T/c_$1 f want
  base_output
  cp -r "$T/d24" "$C"
  f=$C/images/000000000005.jpg
  case $kind in
  garbage) head -c 3000 /dev/urandom >"$f" ;;
  truncated) head -c 600 "$T/d24/images/000000000005.jpg" >"$f" ;;
  empty) : >"$f" ;;
  oversized) "$MKJPEG" "$f" rgb 170 120 || bad "mkjpeg rgb 170 120 (is $MKJPEG built?)" ;;
  esac
  batches "$T/x" --data "$C" "${TRAIN[@]}"
  local rc=$? lines; lines=$(nlines "$T/x.err")
  if [ "$rc" -eq 1 ] && [ "$lines" -eq 1 ] && grep -q '000000000005\.jpg' "$T/x.err"; then
    ok "$kind image: exit 1: $(cat "$T/x.err")"
  else
    bad "$kind image: exit $rc, $lines stderr lines, want 1 naming 000000000005.jpg: $(head -3 "$T/x.err" | tr '\n' ' ')"
  fi
  # skipped: index 4 never loaded; its positions hold the next readable index (5), the rest is as
  # with the intact set
  batches "$T/x" --data "$C" "${TRAIN[@]}" --skip-bad-images
  rc=$?
  want=$(awk '{ $3 = ""; for (i = 5; i <= NF; i++) sub(/^4:/, "5:", $i); print }' "$T/b1x1")
  if [ "$rc" -eq 0 ] && ! all_indices "$T/x" | grep -qx 4 &&
     [ "$(awk '{ $3 = ""; print }' "$T/x")" = "$want" ]; then
    ok "$kind image, --skip-bad-images: exit 0, index 4 never loaded, replaced by index 5"
  else
    bad "$kind image, --skip-bad-images: exit $rc, $(nlines "$T/x") lines, index 4 loaded $(all_indices "$T/x" | grep -cx 4) times: $(head -2 "$T/x.err" | tr '\n' ' ')"
  fi
}

case_bad_images() {
  local k
  for k in garbage truncated empty oversized; do corrupt_case "$k"; done
}

# 000000000003.jpg (index 2) replaced by a gray, CMYK or progressive JPEG of the annotated size:
# the run succeeds, the batch holding index 2 changes, every other batch stays the same.
case_jpeg_forms() {
  local kind C rc
  [ -x "$MKJPEG" ] || { bad "$MKJPEG not built"; return; }
  base_output
  for kind in gray cmyk progressive; do
    C=$T/j_$kind
    cp -r "$T/d24" "$C"
    "$MKJPEG" "$C/images/000000000003.jpg" "$kind" 160 120 || bad "mkjpeg $kind"
    batches "$T/x" --data "$C" "${TRAIN[@]}"
    rc=$?
    if [ "$rc" -eq 0 ] && [ ! -s "$T/x.err" ] &&
       [ "$(grep -v ' 2:1' "$T/x")" = "$(grep -v ' 2:1' "$T/b1x1")" ] &&
       [ "$(grep ' 2:1' "$T/x" | cut -d' ' -f1,2,4-)" = "$(grep ' 2:1' "$T/b1x1" | cut -d' ' -f1,2,4-)" ] &&
       [ -z "$(comm -12 <(grep ' 2:1' "$T/x" | cut -d' ' -f3 | sort) <(grep ' 2:1' "$T/b1x1" | cut -d' ' -f3 | sort))" ]; then
      ok "$kind JPEG: loaded, only its batches change"
    else
      bad "$kind JPEG: exit $rc: $(head -2 "$T/x.err" | tr '\n' ' ') $(diff "$T/b1x1" "$T/x" | grep -c '^>') lines differ"
    fi
  done
}

# ---- 6. bad flags ------------------------------------------------------------------------------
case_bad_flags() {
  local E=("$BIN/effdet" batches --data "$T/d24")
  expect_error "missing --batch-size" "--batch-size" "${E[@]}" --image-size 96x96
  expect_error "missing --image-size" "--image-size" "${E[@]}" --batch-size 4
  expect_error "bad --image-size 96y96" "--image-size 96y96" "${E[@]}" --batch-size 4 --image-size 96y96
  expect_error "bad --image-size 0x96" "--image-size 0x96" "${E[@]}" --batch-size 4 --image-size 0x96
  expect_error "bad --batch-size 0" "--batch-size 0" "${E[@]}" --batch-size 0 --image-size 96x96
  expect_error "bad --loaders 0" "--loaders 0" "${E[@]}" --batch-size 4 --image-size 96x96 --loaders 0
  expect_error "--rank 2 --world 2" "--rank 2" "${E[@]}" --batch-size 4 --image-size 96x96 --rank 2 --world 2
  expect_error "--resume without --log" "--resume" "${E[@]}" --batch-size 4 --image-size 96x96 --resume
  expect_error "bad --dead-ms 10" "--dead-ms 10" "${E[@]}" --batch-size 4 --image-size 96x96 --dead-ms 10
  expect_error "no dataset" "dataset is required" "$BIN/effdet" batches --batch-size 4 --image-size 96x96
  echo "not a log" >"$T/notlog"
  expect_error "bad --resume log" "not a batches log" "${E[@]}" --batch-size 4 --image-size 96x96 \
    --log "$T/notlog" --resume
  # a dataset directory that does not exist: the loader's error, and exit 1 at once
  local t0=$SECONDS rc
  timeout -k 3 10 "${E[@]:0:2}" --data "$T/nodir" --batch-size 4 --image-size 96x96 >"$T/out" 2>"$T/err"
  rc=$?
  if [ "$rc" -eq 1 ] && grep -q "$T/nodir/annotations.json" "$T/err"; then
    ok "--data with no such directory: exit 1 after $((SECONDS - t0)) s: $(head -1 "$T/err")"
  else
    bad "--data with no such directory: exit $rc (124: hung) after $((SECONDS - t0)) s: $(head -2 "$T/err" | tr '\n' ' ')"
  fi
}

run_case "1. determinism" case_determinism
run_case "2. exactly once" case_exactly_once
run_case "3. consumer killed and resumed" case_consumer_restart
run_case "4a. augmenter killed (1 of 1)" kill_stage "augmenter 1 of 1 killed" aug 1 1
run_case "4b. augmenter killed (1 of 2)" kill_stage "augmenter 1 of 2 killed" aug 1 2
run_case "4c. loader killed (1 of 1)" kill_stage "loader 1 of 1 killed" loader 1 1
run_case "4d. loader killed (1 of 2)" kill_stage "loader 1 of 2 killed" loader 2 2
run_case "5a. unreadable images" case_bad_images
run_case "5b. gray, CMYK, progressive JPEGs" case_jpeg_forms
run_case "6. bad flags" case_bad_flags
[ "$fails" -eq 0 ]
