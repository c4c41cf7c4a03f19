#!/usr/bin/env bash
# End-to-end checks of `effdet bench --mode pipeline` (data stages feeding the train step, with
# the stages' reports) on a small synthetic dataset:
#   1. --json: exit 0, a rate for the loader, augment and worker stages, and `limit` naming the
#      stage of lowest total capacity (recomputed here from the JSON's own figures);
#   2. text: one line per stage and the `limit:` line;
#   3. --no-step: the data stages alone; the limit is a data stage;
#   4. a bad --consumer fails with one line;
#   5. after every case: no process of the test left, no shared-memory segment of the test left,
#      no run directory left in $TMPDIR.
# Plain bash, awk, grep and sed. About 20 s.
set -u
BIN=${EFFDET_BIN:-$(cd "$(dirname "$0")/../.." && pwd)/build/bin}
T=$(mktemp -d)
source "$(dirname "$0")/lib/common.bash"
source "$(dirname "$0")/lib/cases.bash" # TMPDIR, cleanup at exit, run_case

# jnum FILE OBJ KEY: the number KEY of the JSON object OBJ ("" for the top level); "null" or ""
# when absent. The bench's JSON is one line of flat objects, so sed is enough.
jnum() {
  if [ -z "$2" ]; then
    sed -E 's/"(loader|augment|worker)": \{[^}]*\}//g' "$1" | sed -nE "s/.*\"$3\": (null|[-0-9.e+]+).*/\1/p"
  else
    sed -nE "s/.*\"$2\": \{[^}]*\"$3\": (null|[-0-9.e+]+).*/\1/p" "$1"
  fi
}
positive() { awk -v v="$1" 'BEGIN { exit !(v != "" && v != "null" && v + 0 > 0) }'; }

"$BIN/effdet" synth --out "$T/d" --images 16 --seed 1 --size 96x80 --classes 3 >/dev/null 2>"$T/synth.err" ||
  { bad "synth: $(head -2 "$T/synth.err")"; exit 1; }
ARGS=(--mode pipeline --data "$T/d" --image-size 64x64 --batch-size 2 --loaders 1 --augmenters 1)

case_json() {
  timeout 60 "$BIN/effdet" bench "${ARGS[@]}" --seconds 3 --json >"$T/j" 2>"$T/j.err"
  local rc=$?
  [ "$rc" -eq 0 ] && ok "json: exit 0" || { bad "json: exit $rc: $(head -3 "$T/j.err")"; return; }
  [ "$(wc -l <"$T/j")" -eq 1 ] && ok "json: one line" || bad "json: $(wc -l <"$T/j") lines"
  local s v lo au wo lim want
  for s in loader augment worker; do
    v=$(jnum "$T/j" "$s" img_per_s)
    positive "$v" && ok "json: $s rate $v img/s" || bad "json: $s rate '$v': $(cat "$T/j")"
  done
  v=$(jnum "$T/j" "" img_per_s)
  positive "$v" && ok "json: achieved $v img/s" || bad "json: achieved rate '$v'"
  v=$(jnum "$T/j" "" queue_depth)
  awk -v v="$v" 'BEGIN { exit !(v != "" && v != "null" && v >= 0) }' &&
    ok "json: queue depth $v" || bad "json: queue depth '$v'"
  for s in loader augment; do
    v=$(jnum "$T/j" "$s" busy)
    awk -v v="$v" 'BEGIN { exit !(v != "" && v != "null" && v >= 0 && v <= 1.05) }' &&
      ok "json: $s busy $v" || bad "json: $s busy '$v' (want a fraction)"
  done
  lo=$(jnum "$T/j" loader img_per_s) au=$(jnum "$T/j" augment img_per_s) wo=$(jnum "$T/j" worker img_per_s)
  lim=$(sed -nE 's/.*"limit": "([^"]*)".*/\1/p' "$T/j")
  want=$(awk -v l="$lo" -v a="$au" -v w="$wo" 'BEGIN {
    n = "loader"; m = l; if (a < m) { n = "augment"; m = a } if (w < m) n = "worker (train step)"; print n }')
  [ "$lim" = "$want" ] && ok "json: limit '$lim' (the lowest of $lo, $au, $wo)" ||
    bad "json: limit '$lim', want '$want' (loader $lo, augment $au, worker $wo)"
}

case_text() {
  timeout 60 "$BIN/effdet" bench "${ARGS[@]}" --seconds 2 >"$T/t" 2>"$T/t.err" &
  local pid=$! rc i lp ap
  # While it runs: the stages' command lines (data_pipeline_stage_argv) name the report endpoint.
  for i in $(seq 1 500); do
    lp=$(pgrep -f -- "effdet-loader.*$T" | head -1) ap=$(pgrep -f -- "effdet-augment.*$T" | head -1)
    [ -n "$lp" ] && [ -n "$ap" ] && break
    sleep 0.02
  done
  for p in "loader0:$lp" "aug0:$ap"; do
    tr '\0' ' ' </proc/"${p#*:}"/cmdline >"$T/cmdline" 2>/dev/null
    grep -qE -- "--name ${p%%:*} .*--report ipc://[^ ]*/report\.sock" "$T/cmdline" &&
      ok "text: ${p%%:*} runs with --name ${p%%:*} and --report" ||
      bad "text: ${p%%:*} command line: $(cat "$T/cmdline")"
  done
  { wait "$pid"; rc=$?; } 2>/dev/null
  [ "$rc" -eq 0 ] && ok "text: exit 0" || { bad "text: exit $rc: $(head -3 "$T/t.err")"; return; }
  check "text: loader line" "grep -qE '^loader  x1: [0-9.]+ img/s per process, [0-9.]+ img/s total \\(busy [0-9]+%\\)' '$T/t'"
  check "text: augment line" "grep -qE '^augment x1: [0-9.]+ img/s per process' '$T/t'"
  check "text: worker line" "grep -qE '^worker  x1: [0-9.]+ img/s \\(train step' '$T/t'"
  check "text: pipeline line" "grep -qE '^pipeline: [0-9.]+ img/s achieved.*queue depth [0-9.]+' '$T/t'"
  check "text: limit line" "grep -qE '^limit: (loader|augment|worker \\(train step\\))$' '$T/t'"
}

case_no_step() {
  timeout 60 "$BIN/effdet" bench "${ARGS[@]}" --seconds 1 --no-step --json >"$T/n" 2>"$T/n.err"
  local rc=$?
  [ "$rc" -eq 0 ] && ok "no-step: exit 0" || { bad "no-step: exit $rc: $(head -3 "$T/n.err")"; return; }
  local lim
  lim=$(sed -nE 's/.*"limit": "([^"]*)".*/\1/p' "$T/n")
  [ "$lim" = loader ] || [ "$lim" = augment ] && ok "no-step: limit '$lim'" ||
    bad "no-step: limit '$lim': $(cat "$T/n")"
  check "no-step: no step time" "grep -q '\"step_ms\": null' '$T/n'"
}

case_bad() {
  expect_error "bad --consumer" "--consumer" "$BIN/effdet" bench "${ARGS[@]}" --consumer bogus
}

run_case "1. pipeline --json" case_json
run_case "2. pipeline text" case_text
run_case "3. pipeline --no-step" case_no_step
run_case "4. bad flags" case_bad
[ "$fails" -eq 0 ]
