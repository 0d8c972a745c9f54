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

source bench/workdir.sh ociregistry-bench "$@"

cc -O2 -o "$work/loadgen" bench/loadgen.c
# In the background so that a signal to this script reaches the trap at once.
BIN=$BIN python3 bench/harness.py --work "$work" --loadgen "$work/loadgen" "$@" &
child=$!
wait "$child"
child=
