#!/usr/bin/env bash
# The benchmark in one command: ociregistry against nginx serving the same bytes
# (the ceiling) and Debian's docker-registry in proxy mode (the incumbent), warm,
# side by side, medians of RUNS runs and ratios, as a Markdown table written to
# bench/results/ (ratios matter; absolute numbers on a shared machine do not).
#
#   cargo build --release && bench/run.sh            # ~10 min on 2 cores
#   bench/run.sh --quick                             # ~30 s: does the harness still work (CI)
#   bench/run.sh --help                              # workloads, env and flags
#
# This script checks the tools, builds the load client (bench/loadgen.c), makes the
# work dir and cleans up; bench/harness.py does the rest.
set -euo pipefail
cd "$(dirname "$0")/.."
for a in "$@"; do case $a in -h|--help) exec python3 bench/harness.py --work - --loadgen - --help ;; esac; done
BIN=${BIN:-target/release/ociregistry}
[ -x "$BIN" ] || { echo "no ociregistry binary at $BIN: run cargo build --release (or set BIN)"; exit 1; }
need() { command -v "$1" >/dev/null || { echo "missing $1: apt-get install $2"; exit 1; }; }
need python3 python3; need docker-registry docker-registry; need nginx nginx-light; need wrk wrk
need curl curl; need skopeo skopeo; need cc gcc

keep=false
for a in "$@"; do [ "$a" = --keep ] && keep=true; done
if [ -n "${BENCH_WORK:-}" ]; then
  work=$BENCH_WORK; keep=true; mkdir -p "$work"   # a cache between runs: never removed
else
  work=$(mktemp -d -t ociregistry-bench.XXXXXX)
fi
harness=
cleanup() {
  set +e  # clean up whatever fails
  # The harness stops its servers on SIGTERM; the PID file catches any it could not.
  [ -n "$harness" ] && kill "$harness" 2>/dev/null && wait "$harness"
  if [ -f "$work/run/pids" ]; then
    while read -r p; do kill "$p" 2>/dev/null || true; done < "$work/run/pids"
  fi
  if $keep; then echo "work dir kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT   # traps make `wait` below return at once on Ctrl-C or kill;
trap 'exit 143' TERM  # exiting then runs cleanup

cc -O2 -o "$work/loadgen" bench/loadgen.c
# In the background so that a signal to this script reaches the trap at once.
BIN=$BIN python3 bench/harness.py --work "$work" --loadgen "$work/loadgen" "$@" &
harness=$!
wait "$harness"
harness=
