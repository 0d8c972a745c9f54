#!/usr/bin/env bash
# One replica on a directory against 1 and 3 replicas sharing an S3 bucket (s3s-fs),
# with peers, with and without a local disk tier: a cold herd's upstream bytes and
# wall time, warm big- and small-blob throughput, medians of RUNS runs and ratios
# to the directory, as a Markdown table in bench/results/replicas-*.md.
#
#   cargo build --release && bench/replicas.sh       # ~6 min on 2 cores
#   bench/replicas.sh --quick                        # under a minute: does it still work
#   bench/replicas.sh --help                         # measurements, env and flags
#
# This script checks the tools, makes the work dir and cleans up; bench/replicas.py
# (with helpers from bench/harness.py) does the rest.
set -euo pipefail
cd "$(dirname "$0")/.."
for a in "$@"; do case $a in -h|--help) exec python3 bench/replicas.py --work - --help ;; esac; done
BIN=${BIN:-target/release/ociregistry}
[ -x "$BIN" ] || { echo "no ociregistry binary at $BIN: run cargo build --release (or set BIN)"; exit 1; }
need() { command -v "$1" >/dev/null || { echo "missing $1: apt-get install $2"; exit 1; }; }
need python3 python3; need docker-registry docker-registry; need wrk wrk; need curl curl
S3S_FS=${S3S_FS:-$(command -v s3s-fs || echo "$HOME/.cargo/bin/s3s-fs")}
[ -x "$S3S_FS" ] || {
  echo "missing s3s-fs (an S3 server over a directory): cargo install s3s-fs@0.14.1 --locked --features binary"
  echo "(or set S3S_FS to its path)"; exit 1; }

source bench/workdir.sh ociregistry-replicas "$@"

# In the background so that a signal to this script reaches the trap at once.
BIN=$BIN S3S_FS=$S3S_FS python3 bench/replicas.py --work "$work" "$@" &
child=$!
wait "$child"
child=
