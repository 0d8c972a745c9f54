#!/usr/bin/env bash
# Preload throughput: `ociregistry load` against `skopeo copy` of the same
# images from the same upstream, side by side in one run (ratios matter; the
# machine is shared). Both write to local disk: skopeo to an OCI layout, we to
# the cache (verified, committed). Needs: docker-registry, skopeo, hyperfine, curl, python3.
#
#   cargo build --release && bench/load.sh
#
# Env: BIN (default target/release/ociregistry), IMAGES (4), LAYER_MIB (64), RUNS (5)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/ociregistry}
IMAGES=${IMAGES:-4}
LAYER_MIB=${LAYER_MIB:-64}
RUNS=${RUNS:-5}
for t in docker-registry skopeo hyperfine curl python3; do
  command -v "$t" >/dev/null || { echo "missing $t (apt-get install docker-registry skopeo hyperfine curl python3)"; exit 1; }
done

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 100); do curl -fs -o /dev/null "$1" && return 0; sleep 0.1; done; echo "no answer from $1"; exit 1; }

UP=$(port)
cat > "$work/up.yml" <<YML
version: 0.1
storage: {filesystem: {rootdirectory: $work/up}}
http: {addr: 127.0.0.1:$UP}
log: {level: error}
YML
docker-registry serve "$work/up.yml" >"$work/up.log" 2>&1 & pids+=($!)
wait_http "http://127.0.0.1:$UP/v2/"
: > "$work/images.txt"
for i in $(seq "$IMAGES"); do
  python3 bench/mkimage.py "$work/img$i" $((LAYER_MIB * 1024 * 1024)) >/dev/null
  skopeo copy -q --dest-tls-verify=false "oci:$work/img$i:v1" "docker://127.0.0.1:$UP/bench/app$i:v1"
  echo "up.bench/bench/app$i:v1" >> "$work/images.txt"
done

cat > "$work/config.yaml" <<YML
imagePath: $work/cache
registries:
  - {name: up.bench, endpoint: "http://127.0.0.1:$UP"}
YML

# Each run starts from an empty destination; skopeo copies the images one
# after another (it has no list mode), we load the list.
cat > "$work/skopeo_all.sh" <<SH
#!/bin/sh
set -e
for i in \$(seq $IMAGES); do
  skopeo copy -q --src-tls-verify=false "docker://127.0.0.1:$UP/bench/app\$i:v1" "oci:$work/skopeo:app\$i"
done
SH
chmod +x "$work/skopeo_all.sh"
hyperfine --runs "$RUNS" --export-json "$work/result.json" \
  --prepare "rm -rf $work/cache $work/skopeo" \
  -n "ociregistry load" "$BIN --config-file $work/config.yaml load --image-file $work/images.txt --platform all" \
  -n "skopeo copy" "$work/skopeo_all.sh"

python3 - "$work/result.json" "$IMAGES" "$LAYER_MIB" <<'PY'
import json, sys
r = {x["command"]: x["mean"] for x in json.load(open(sys.argv[1]))["results"]}
mib = int(sys.argv[2]) * int(sys.argv[3])
ours, skopeo = r["ociregistry load"], r["skopeo copy"]
print(f"\n{mib} MiB in {sys.argv[2]} images")
print(f"ociregistry load: {mib / ours:7.1f} MiB/s ({ours:.2f} s)")
print(f"skopeo copy:      {mib / skopeo:7.1f} MiB/s ({skopeo:.2f} s)")
print(f"ratio (ours / skopeo, throughput): {skopeo / ours:.2f}")
PY
