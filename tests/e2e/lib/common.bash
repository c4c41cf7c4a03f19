# common.bash: helpers the end-to-end scripts source: pass/fail counting and the check that a
# command fails with exactly one error line naming the thing. Expects $T (a scratch directory).
fails=0
ok() { echo "ok   $1"; }
bad() { echo "FAIL $1"; fails=$((fails + 1)); }
check() { if eval "$2"; then ok "$1"; else bad "$1"; fi; }

# A command that must fail (status 1 or 2, not a signal) with exactly one stderr line
# containing $2.
expect_error() {
  local name=$1 needle=$2; shift 2
  "$@" >"$T/out" 2>"$T/err"; local rc=$?
  local lines; lines=$(wc -l <"$T/err")
  if [ "$rc" -ne 0 ] && [ "$rc" -lt 128 ] && [ "$lines" -eq 1 ] && grep -qF -- "$needle" "$T/err"; then
    ok "$name: $(cat "$T/err")"
  else
    bad "$name (exit $rc, $lines stderr lines, wanted '$needle'): $(head -3 "$T/err")"
  fi
}
