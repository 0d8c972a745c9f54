# Sourced by bench/run.sh and bench/replicas.sh, with a name prefix then their
# arguments: makes the work dir `work` (BENCH_WORK, kept; else a temporary one,
# removed at exit unless --keep) and, on exit, stops the Python side (`child`,
# its PID, set by the caller) and anything its PID file lists.
prefix=$1; shift
keep=false
for a in "$@"; do [ "$a" = --keep ] && keep=true; done
if [ -n "${BENCH_WORK:-}" ]; then
  work=$BENCH_WORK; keep=true; mkdir -p "$work"   # reused between runs: never removed
else
  work=$(mktemp -d -t "$prefix.XXXXXX")
fi
child=
cleanup() {
  set +e  # clean up whatever fails
  # The Python side stops its servers on SIGTERM; the PID file catches any it could not.
  [ -n "$child" ] && kill "$child" 2>/dev/null && wait "$child"
  if [ -f "$work/run/pids" ]; then
    while read -r p; do kill "$p" 2>/dev/null || true; done < "$work/run/pids"
  fi
  if $keep; then echo "work dir kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT   # traps make `wait` return at once on Ctrl-C or kill;
trap 'exit 143' TERM  # exiting then runs cleanup
