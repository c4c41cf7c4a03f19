# cases.bash: what the e2e scripts that start pipeline processes share (data, bench_pipeline,
# train_pipeline, coordinator, demo). Source after common.bash, with $T set. It sends the
# processes' run directories to $T/tmp, quiets their info lines, stops at exit whatever is left of
# them (every process of a test has $T in its command line: paths, endpoints), and gives the two
# after-run checks: run_case (a case with its own bracket) and leftovers (after a run).
export TMPDIR="$T/tmp" # the run directories go here; must be empty after each case
unset XDG_RUNTIME_DIR
mkdir -p "$TMPDIR"
export EFFDET_LOG=warn # the processes' info lines off: stderr holds errors and warnings only

cleanup() {
  local p
  for p in $(pgrep -f -- "$T"); do kill -TERM "$p" 2>/dev/null; done
  sleep 0.3
  for p in $(pgrep -f -- "$T"); do kill -KILL "$p" 2>/dev/null; done
  rm -rf "$T"
}
trap cleanup EXIT

shm_list() { ls /dev/shm 2>/dev/null | grep '^effdet-' | sort; }
shm0=$(shm_list | wc -l)

# leftovers NAME WHAT PATTERN: after a run, no process matching PATTERN (pgrep -f) is left, no more
# effdet shared-memory segments exist than when this file was sourced, and $TMPDIR is empty.
leftovers() {
  sleep 0.3
  check "$1: no ${2:+$2 }process left" "[ \$(pgrep -f '$3' | wc -l) -eq 0 ]"
  check "$1: no shared-memory segment left" "[ \$(shm_list | wc -l) -le $shm0 ]"
  check "$1: no run directory or socket left" "[ -z \"\$(ls -A '$TMPDIR')\" ]"
}

# run_case NAME COMMAND...: runs the case, then checks that it left no process of the test, no
# shared-memory segment of a process that is gone, and nothing in $TMPDIR (each removed if found).
run_case() {
  local name=$1 t0=$SECONDS; shift
  echo "== $name"
  shm_list >"$T/shm_before"
  "$@"
  local procs p f pid left=""
  procs=$(pgrep -f -- "$T" | tr '\n' ' ')
  if [ -n "$procs" ]; then
    bad "$name: processes left: $(for p in $procs; do tr '\0' ' ' </proc/"$p"/cmdline 2>/dev/null | cut -c1-80; echo; done)"
    for p in $procs; do kill -KILL "$p" 2>/dev/null; done
    sleep 0.2
  fi
  # Segments made during the case whose process is gone: leftovers (live ones belong to others).
  for f in $(shm_list | comm -13 "$T/shm_before" -); do
    pid=$(echo "$f" | sed -nE 's/^effdet-([0-9]+)-.*/\1/p')
    [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null && left="$left $f"
  done
  if [ -n "$left" ]; then
    bad "$name: shared memory left in /dev/shm:$left"
    for f in $left; do rm -f "/dev/shm/$f"; done
  fi
  if [ -n "$(ls -A "$TMPDIR")" ]; then
    bad "$name: left in \$TMPDIR: $(ls -A "$TMPDIR" | tr '\n' ' ')"
    rm -rf "${TMPDIR:?}"/*
  fi
  [ -z "$procs$left" ] && ok "$name: no process, segment or run directory left ($((SECONDS - t0)) s)"
}
