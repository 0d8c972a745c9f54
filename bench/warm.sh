#!/usr/bin/env bash
# Warm-serving benchmark: ociregistry against nginx serving the same bytes,
# side by side in one run (ratios matter; absolute numbers on a shared
# machine do not). Needs: docker-registry, skopeo, nginx, hey, curl, python3.
#
#   cargo build --release && bench/warm.sh
#
# Env: BIN (default target/release/ociregistry), LAYER_MIB (256), SECS (10), CONNS (32),
#      LOG_LEVEL (info: the default, access lines written to a file)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/ociregistry}
LAYER_MIB=${LAYER_MIB:-256}
SECS=${SECS:-10}
CONNS=${CONNS:-32}
LOG_LEVEL=${LOG_LEVEL:-info}
for t in docker-registry skopeo nginx hey curl python3 openssl; do
  command -v "$t" >/dev/null || { echo "missing $t (apt-get install docker-registry skopeo nginx-light hey curl python3)"; exit 1; }
done

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 100); do curl -fs -o /dev/null "$1" && return 0; sleep 0.1; done; echo "no answer from $1"; exit 1; }
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

UP=$(port); MIRROR=$(port); NGINX=$(port); MIRROR_TLS=$(port)
read -r MANIFEST LAYER SMALL < <(python3 bench/mkimage.py "$work/img" $((LAYER_MIB * 1024 * 1024)))

cat > "$work/up.yml" <<YML
version: 0.1
storage: {filesystem: {rootdirectory: $work/up}}
http: {addr: 127.0.0.1:$UP}
log: {level: error}
YML
docker-registry serve "$work/up.yml" >"$work/up.log" 2>&1 & pids+=($!)
wait_http "http://127.0.0.1:$UP/v2/"
skopeo copy -q --preserve-digests --dest-tls-verify=false "oci:$work/img:v1" "docker://127.0.0.1:$UP/bench/app:v1"

cat > "$work/mirror.yaml" <<YML
imagePath: $work/cache
host: 127.0.0.1
port: $MIRROR
logLevel: $LOG_LEVEL
defaultNs: up.bench
registries:
  - {name: up.bench, endpoint: "http://127.0.0.1:$UP"}
YML
"$BIN" serve --config-file "$work/mirror.yaml" >"$work/mirror.log" 2>&1 & MPID=$!; pids+=($MPID)
wait_http "http://127.0.0.1:$MIRROR/v2/"
sleep 1
RSS_IDLE=$(rss_kib $MPID)
skopeo copy -q --src-tls-verify=false "docker://127.0.0.1:$MIRROR/bench/app:v1" "oci:$work/pulled:v1"

# The same cache served over HTTPS by a second instance (the directory is shareable).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj /CN=bench \
  -addext subjectAltName=IP:127.0.0.1 -keyout "$work/tls.key" -out "$work/tls.crt" 2>/dev/null
sed -e "s/^port: .*/port: $MIRROR_TLS/" "$work/mirror.yaml" > "$work/mirror-tls.yaml"
printf 'serverTlsConfig: {cert: %s, key: %s}\n' "$work/tls.crt" "$work/tls.key" >> "$work/mirror-tls.yaml"
"$BIN" serve --config-file "$work/mirror-tls.yaml" >"$work/mirror-tls.log" 2>&1 & pids+=($!)
wait_http "http://127.0.0.1:$MIRROR/v2/"
for _ in $(seq 100); do curl -fsk -o /dev/null "https://127.0.0.1:$MIRROR_TLS/v2/" && break; sleep 0.1; done

# nginx serves the same bytes at the same paths, with sendfile.
mkdir -p "$work/www/v2/bench/app/manifests" "$work/www/v2/bench/app/blobs"
cp "$work/img/blobs/sha256/${MANIFEST#sha256:}" "$work/www/v2/bench/app/manifests/v1"
ln -s "$work/cache/blobs/sha256/${LAYER:7:2}/${LAYER#sha256:}" "$work/www/v2/bench/app/blobs/$LAYER"
ln -s "$work/cache/blobs/sha256/${SMALL:7:2}/${SMALL#sha256:}" "$work/www/v2/bench/app/blobs/$SMALL"
cp "$work/img/blobs/sha256/${MANIFEST#sha256:}" "$work/www/v2/bench/app/manifests/$MANIFEST"
cat > "$work/nginx.conf" <<NGX
worker_processes 1;
user root;
pid $work/nginx.pid;
error_log $work/nginx.err;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on; tcp_nopush on; tcp_nodelay on; keepalive_requests 1000000;
  default_type application/octet-stream;
  server { listen 127.0.0.1:$NGINX; root $work/www; }
}
NGX
nginx -c "$work/nginx.conf"
wait_http "http://127.0.0.1:$NGINX/v2/bench/app/manifests/v1"


hey_run() { # method url [hey flags] -> "rps p99_ms"
  hey -z "${SECS}s" -c "$CONNS" -m "$1" "${@:3}" "$2" > "$work/hey.out"
  if grep -q "Error distribution" "$work/hey.out"; then echo "hey saw errors:" >&2; grep -A3 "Error distribution" "$work/hey.out" >&2; fi
  awk '/Requests\/sec/ {rps=$2} /99% in/ {p99=$3*1000} END {printf "%.0f %.2f\n", rps, p99}' "$work/hey.out"
}
blob_mbs() { # url -> MB/s over 3 sequential downloads
  local total=0
  for _ in 1 2 3; do
    s=$(curl -s -o /dev/null -w '%{speed_download}' "$1"); total=$(python3 -c "print($total + $s)")
  done
  python3 -c "print(round($total / 3 / 1e6))"
}


echo "warm manifest HEAD, $CONNS connections, ${SECS}s each (hey)"
read -r m_rps m_p99 < <(hey_run HEAD "http://127.0.0.1:$MIRROR/v2/bench/app/manifests/v1")
read -r n_rps n_p99 < <(hey_run HEAD "http://127.0.0.1:$NGINX/v2/bench/app/manifests/v1")
# hey sends "host:port" as the TLS server name, which is not a valid SNI host
# name (rustls refuses it); -host gives it a plain one.
read -r t_rps t_p99 < <(hey_run HEAD "https://127.0.0.1:$MIRROR_TLS/v2/bench/app/manifests/v1" -host localhost)
printf "  %-16s %8s req/s  p99 %6s ms\n" ociregistry "$m_rps" "$m_p99" nginx "$n_rps" "$n_p99" \
  "ociregistry-https" "$t_rps" "$t_p99"
echo "warm manifest GET by digest and 50 KiB blob GET, $CONNS connections, ${SECS}s each (hey)"
read -r md_rps md_p99 < <(hey_run GET "http://127.0.0.1:$MIRROR/v2/bench/app/manifests/$MANIFEST")
read -r nd_rps nd_p99 < <(hey_run GET "http://127.0.0.1:$NGINX/v2/bench/app/manifests/$MANIFEST")
read -r mb_rps mb_p99 < <(hey_run GET "http://127.0.0.1:$MIRROR/v2/bench/app/blobs/$SMALL")
read -r nb_rps nb_p99 < <(hey_run GET "http://127.0.0.1:$NGINX/v2/bench/app/blobs/$SMALL")
printf "  %-22s %8s req/s  p99 %6s ms\n" "ociregistry manifest" "$md_rps" "$md_p99" "nginx manifest" "$nd_rps" "$nd_p99" \
  "ociregistry 50KiB blob" "$mb_rps" "$mb_p99" "nginx 50KiB blob" "$nb_rps" "$nb_p99"
echo "warm ${LAYER_MIB} MiB blob GET, 3 sequential downloads (curl)"
m_mbs=$(blob_mbs "http://127.0.0.1:$MIRROR/v2/bench/app/blobs/$LAYER")
n_mbs=$(blob_mbs "http://127.0.0.1:$NGINX/v2/bench/app/blobs/$LAYER")
printf "  %-12s %8s MB/s\n" ociregistry "$m_mbs" nginx "$n_mbs"
echo "ociregistry RSS: idle $((RSS_IDLE / 1024)) MiB, after serving $(( $(rss_kib $MPID) / 1024 )) MiB"
