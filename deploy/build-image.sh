#!/usr/bin/env bash
# Builds the ociregistry container image without Docker: no daemon, no root, no
# base image to pull. See usage() below, or run: deploy/build-image.sh --help
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: deploy/build-image.sh [OPTIONS]

Builds the ociregistry container image without Docker, buildah or a daemon: it
compiles a static binary (cargo, a *-linux-musl target) and writes the image's
one layer, config and manifest itself with tar, gzip and sha256sum. Needs no
root and pulls no base image, so it works on an air-gapped build machine.

The image has the same layout as the one deploy/Dockerfile builds:
  /ociregistry/server                  the static binary (ENTRYPOINT; CMD serve)
  /etc/ssl/certs/ca-certificates.crt   CA bundle (the system trust store the
                                       server reads, besides its built-in roots)
  /etc/passwd, /etc/group              root, nobody, nonroot (65532)
  /var/lib/ociregistry                 the cache, owned by 65532:65532 (VOLUME)
  /var/ociregistry/config              where the chart mounts registry-config.yaml
  /tmp                                 mode 1777
USER 65532:65532, EXPOSE 8080, OCI labels (version, revision, created, source).

Writes into the output directory:
  ociregistry.oci.tar      OCI archive (oci-archive): ctr images import, k3s/RKE2
                           agent/images, skopeo copy oci-archive:...
  ociregistry.docker.tar   docker-archive of the same image: docker load, ctr,
                           k3s/RKE2 agent/images
  oci/                     the same image as an OCI layout directory
  digest                   the manifest digest (sha256:...) to pin the image by

Reproducible: the same binary, CA bundle and SOURCE_DATE_EPOCH give the same
digest, byte for byte (every timestamp in the image is SOURCE_DATE_EPOCH).

Options:
  --output DIR       where to write (default: target/image)
  --tag NAME:TAG     the image's name (default: ociregistry:<version from
                     Cargo.toml>, which is what the Helm chart runs by default;
                     containerd stores it as docker.io/library/ociregistry:<version>)
  --profile NAME     cargo profile for the build (default: release; dev builds
                     faster, runs slower and is bigger)
  --target TRIPLE    Rust target (default: x86_64-unknown-linux-musl); the image's
                     architecture follows the binary (amd64 or arm64)
  --binary PATH      package this static binary instead of building one
  --ca-bundle FILE   CA bundle to ship (default: /etc/ssl/certs/ca-certificates.crt,
                     Debian's ca-certificates)
  --source URL       org.opencontainers.image.source label (default: the git
                     remote "origin", if any; no label otherwise)
  --revision COMMIT  org.opencontainers.image.revision label (default: git
                     rev-parse HEAD; no label outside a git checkout)
  -h, --help         this text

Environment:
  SOURCE_DATE_EPOCH  the image's (and the binary's build) date, in seconds since
                     1970 (default: the last commit's date, git log -1 --format=%ct)
  CARGO_TARGET_DIR   cargo's output directory (default: target)
  CC_<target>        C compiler for the target (ring compiles C); for
                     x86_64-unknown-linux-musl the default is musl-gcc
  CARGO_PROFILE_RELEASE_LTO=off CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16
                     cargo's own overrides: a release build ~20% faster, with
                     a ~10% bigger binary (for quick test images)

Needs: bash, GNU tar, gzip, coreutils, readelf (binutils); to build the binary
also cargo, the target (rustup target add x86_64-unknown-linux-musl) and a musl
C compiler (Debian: apt-get install musl-tools).

Examples:
  # Build the image (release binary, ~4 min on 2 cores):
  deploy/build-image.sh
  # Load it on a node whose containerd cannot pull it (Kubernetes namespace k8s.io):
  ctr -n k8s.io images import target/image/ociregistry.oci.tar
  # k3s/RKE2 import every archive in this directory at start-up:
  cp target/image/ociregistry.oci.tar /var/lib/rancher/k3s/agent/images/
  # Push it to a registry, keeping its digest:
  skopeo copy --preserve-digests oci-archive:target/image/ociregistry.oci.tar \
    docker://registry.example.com/ociregistry:0.1.0
  # Re-package an existing binary under another name, with a fixed date:
  SOURCE_DATE_EPOCH=1700000000 deploy/build-image.sh --binary ./ociregistry \
    --tag registry.example.com/ociregistry:0.1.0 --output /tmp/image
EOF
}

die() {
  echo "build-image.sh: $*" >&2
  exit 1
}

need() { # command, what to install
  command -v "$1" >/dev/null 2>&1 || die "$1 not found: install $2"
}

# Modes in the archives must not depend on the caller's umask.
umask 022
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
output=""
tag=""
profile=release
target=x86_64-unknown-linux-musl
binary=""
ca_bundle=/etc/ssl/certs/ca-certificates.crt
source_url=""
revision=""

while [[ $# -gt 0 ]]; do
  opt=$1
  case $opt in
    -h | --help)
      usage
      exit 0
      ;;
    --*=*)
      set -- "${opt%%=*}" "${opt#*=}" "${@:2}"
      continue
      ;;
    --output | --tag | --profile | --target | --binary | --ca-bundle | --source | --revision)
      [[ $# -ge 2 ]] || die "$opt needs a value (see --help)"
      case $opt in
        --output) output=$2 ;;
        --tag) tag=$2 ;;
        --profile) profile=$2 ;;
        --target) target=$2 ;;
        --binary) binary=$2 ;;
        --ca-bundle) ca_bundle=$2 ;;
        --source) source_url=$2 ;;
        --revision) revision=$2 ;;
      esac
      shift 2
      ;;
    *) die "unknown argument: $opt (see --help)" ;;
  esac
done

need tar tar
need gzip gzip
need sha256sum coreutils
need readelf binutils
tar --version 2>/dev/null | grep -q 'GNU tar' || die "needs GNU tar (for --mtime, --owner, --format)"

# --- what the image is ------------------------------------------------------

package_key() { # the [package] key $1 of Cargo.toml
  awk -v k="$1" '
    /^\[/ { p = ($0 == "[package]") }
    p && $0 ~ "^" k " *= *\"" { sub(/^[^"]*"/, ""); sub(/"[^"]*$/, ""); print; exit }
  ' "$root/Cargo.toml"
}
version=$(package_key version)
description=$(package_key description)
license=$(package_key license)
[[ -n $version ]] || die "no version in $root/Cargo.toml"

git_() { git -C "$root" "$@" 2>/dev/null; }
[[ -n $revision ]] || revision=$(git_ rev-parse HEAD || true)
if [[ -z $source_url ]]; then
  source_url=$(git_ remote get-url origin || true)
  # git@github.com:org/repo.git -> https://github.com/org/repo
  if [[ $source_url =~ ^[^@/]+@([^:/]+):(.+)$ ]]; then
    source_url="https://${BASH_REMATCH[1]}/${BASH_REMATCH[2]}"
  fi
  source_url=${source_url%.git}
  [[ $source_url == https://* ]] || source_url=""
fi

if [[ -z ${SOURCE_DATE_EPOCH:-} ]]; then
  SOURCE_DATE_EPOCH=$(git_ log -1 --format=%ct || true)
  [[ -n $SOURCE_DATE_EPOCH ]] || die "set SOURCE_DATE_EPOCH (no git history to take the date from)"
fi
[[ $SOURCE_DATE_EPOCH =~ ^[0-9]+$ ]] || die "SOURCE_DATE_EPOCH must be seconds since 1970, not '$SOURCE_DATE_EPOCH'"
export SOURCE_DATE_EPOCH
created=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)

# The name: NAME:TAG as a user writes it (docker-archive RepoTags), and the full
# name containerd stores (docker.io/library/NAME:TAG), which the kubelet looks up.
[[ -n $tag ]] || tag="ociregistry:$version"
image_tag=${tag##*:}
image_name=${tag%:*}
[[ $tag == *:* && $image_tag != */* ]] || die "--tag wants NAME:TAG, e.g. registry.example.com/ociregistry:$version"
name_re='^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*$'
tag_re='^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$'
[[ $image_name =~ $name_re ]] || die "--tag: '$image_name' is not a valid image name (lower case, digits, . _ - /)"
[[ $image_tag =~ $tag_re ]] || die "--tag: '$image_tag' is not a valid tag"
first=${image_name%%/*}
if [[ $image_name != */* ]]; then
  full_name="docker.io/library/$image_name:$image_tag"
elif [[ $first == *.* || $first == *:* || $first == localhost ]]; then
  full_name="$image_name:$image_tag"
else
  full_name="docker.io/$image_name:$image_tag"
fi

[[ -f $ca_bundle ]] || die "no CA bundle at $ca_bundle: install ca-certificates (Debian) or give --ca-bundle FILE"
grep -q -- '-----BEGIN CERTIFICATE-----' "$ca_bundle" || die "$ca_bundle holds no PEM certificate"

# --- the binary -------------------------------------------------------------

if [[ -z $binary ]]; then
  need cargo "Rust (https://rustup.rs)"
  if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -x "$target" >/dev/null; then
    die "the Rust target $target is not installed: rustup target add $target"
  fi
  cc_var="CC_${target//-/_}"
  if [[ -z ${!cc_var:-} && $target == *-linux-musl ]]; then
    if [[ $target == "$(uname -m)-unknown-linux-musl" ]] && command -v musl-gcc >/dev/null 2>&1; then
      export "$cc_var=musl-gcc"
    else
      die "ring compiles C for $target: install musl-tools (Debian: apt-get install musl-tools) or set $cc_var to a C compiler for it"
    fi
  fi
  commit=$(git_ rev-parse --short=12 HEAD || true)
  echo "building ociregistry $version ($target, profile $profile)..." >&2
  (
    cd "$root"
    OCIREGISTRY_COMMIT=${OCIREGISTRY_COMMIT:-$commit} \
      cargo build --locked --profile "$profile" --target "$target" --bin ociregistry
  )
  case $profile in
    dev) profile_dir=debug ;;
    *) profile_dir=$profile ;;
  esac
  target_dir=${CARGO_TARGET_DIR:-${CARGO_BUILD_TARGET_DIR:-$root/target}}
  [[ $target_dir == /* ]] || target_dir="$root/$target_dir"
  binary="$target_dir/$target/$profile_dir/ociregistry"
fi
[[ -f $binary ]] || die "no binary at $binary"

# Static: no program interpreter and no shared libraries (there is no libc in the image).
readelf -h "$binary" >/dev/null 2>&1 || die "$binary is not an ELF binary"
if readelf -l "$binary" | grep -q 'program interpreter'; then
  die "$binary is dynamically linked (it names a program interpreter): build it for a *-linux-musl target"
fi
if readelf -d "$binary" 2>/dev/null | grep -q '(NEEDED)'; then
  die "$binary needs shared libraries: build it for a *-linux-musl target"
fi
machine=$(readelf -h "$binary" | sed -n 's/^ *Machine: *//p')
case $machine in
  *X86-64*) arch=amd64 uname_arch=x86_64 ;;
  *AArch64*) arch=arm64 uname_arch=aarch64 ;;
  *) die "$binary is for '$machine': only x86-64 (amd64) and AArch64 (arm64) are packaged" ;;
esac
if [[ $(uname -m) == "$uname_arch" ]]; then
  "$binary" version >/dev/null || die "$binary does not run ('$binary version' failed)"
fi

# --- the layer --------------------------------------------------------------

work=$(mktemp -d "${TMPDIR:-/tmp}/ociregistry-image.XXXXXX")
trap 'rm -rf "$work"' EXIT

# install sets every mode explicitly: the checkout's umask does not leak in.
fs=$work/rootfs
install -d -m 0755 "$fs"/{etc,etc/ssl,etc/ssl/certs,ociregistry,var,var/lib,var/lib/ociregistry,var/ociregistry,var/ociregistry/config}
install -d -m 1777 "$fs/tmp"
install -m 0644 "$root/deploy/rootfs/etc/passwd" "$root/deploy/rootfs/etc/group" "$fs/etc/"
install -m 0644 "$ca_bundle" "$fs/etc/ssl/certs/ca-certificates.crt"
install -m 0755 "$binary" "$fs/ociregistry/server"

# Deterministic tar: fixed order, owners and mtime; ustar has no atime/ctime.
# Files are owned by root, the cache directory by 65532 (a second pass, appended:
# no chown, so no root needed).
det_tar() { # owner, archive, mode (-c or -r), paths... (run in the tree)
  local owner=$1 archive=$2 mode=$3
  shift 3
  tar "$mode" -f "$archive" --format=ustar --no-recursion --numeric-owner \
    --owner="$owner" --group="$owner" --mtime="@$SOURCE_DATE_EPOCH" -- "$@"
}
layer=$work/layer.tar
(
  cd "$fs"
  det_tar 0 "$layer" -c etc etc/group etc/passwd etc/ssl etc/ssl/certs etc/ssl/certs/ca-certificates.crt \
    ociregistry ociregistry/server tmp var var/lib
  det_tar 65532 "$layer" -r var/lib/ociregistry
  det_tar 0 "$layer" -r var/ociregistry var/ociregistry/config
)
gzip -n -9 <"$layer" >"$layer.gz"

# --- config, manifest, index (OCI image layout) -----------------------------

sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }
json_str() { # a JSON string; the values here are names, versions and URLs
  local s=$1
  [[ $s != *[[:cntrl:]]* ]] || die "a control character in '$s'"
  s=${s//\\/\\\\}
  printf '"%s"' "${s//\"/\\\"}"
}
json_obj() { # key value key value ... -> {"key":"value",...} (in the order given)
  local out="" sep=""
  while [[ $# -gt 0 ]]; do
    out+="$sep$(json_str "$1"):$(json_str "$2")"
    sep=,
    shift 2
  done
  printf '{%s}' "$out"
}

layout=$work/oci
mkdir -p "$layout/blobs/sha256"
blob() { # file -> its digest's hex; the file moves into the layout
  local hex
  hex=$(sha "$1")
  mv "$1" "$layout/blobs/sha256/$hex"
  chmod 0644 "$layout/blobs/sha256/$hex"
  echo "$hex"
}

diff_id=$(sha "$layer")
layer_size=$(size "$layer.gz")
layer_hex=$(blob "$layer.gz")

# Labels (sorted by key); the same pairs annotate the manifest.
labels=(
  org.opencontainers.image.created "$created"
  org.opencontainers.image.description "$description"
  org.opencontainers.image.licenses "$license"
)
[[ -z $revision ]] || labels+=(org.opencontainers.image.revision "$revision")
[[ -z $source_url ]] || labels+=(org.opencontainers.image.source "$source_url")
labels+=(
  org.opencontainers.image.title ociregistry
  org.opencontainers.image.version "$version"
)
labels_json=$(json_obj "${labels[@]}")

config=$work/config.json
printf '%s' "{\"created\":\"$created\",\"architecture\":\"$arch\",\"os\":\"linux\"\
,\"config\":{\"User\":\"65532:65532\",\"ExposedPorts\":{\"8080/tcp\":{}}\
,\"Env\":[\"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\"]\
,\"Entrypoint\":[\"/ociregistry/server\"],\"Cmd\":[\"serve\"]\
,\"Volumes\":{\"/var/lib/ociregistry\":{}},\"WorkingDir\":\"/\",\"Labels\":$labels_json}\
,\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"sha256:$diff_id\"]}\
,\"history\":[{\"created\":\"$created\",\"created_by\":\"deploy/build-image.sh\"\
,\"comment\":$(json_str "ociregistry $version: static binary, CA bundle, user 65532")}]}" >"$config"
config_size=$(size "$config")
cp "$config" "$work/config.docker.json"
config_hex=$(blob "$config")

manifest=$work/manifest.json
printf '%s' "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\"\
,\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"sha256:$config_hex\",\"size\":$config_size}\
,\"layers\":[{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:$layer_hex\",\"size\":$layer_size}]\
,\"annotations\":$labels_json}" >"$manifest"
manifest_size=$(size "$manifest")
manifest_hex=$(blob "$manifest")

# io.containerd.image.name: the name `ctr images import` and k3s give the image
# (without it an OCI archive imports under a made-up name); ref.name: the tag, as
# the OCI layout convention has it (skopeo copy oci-archive:FILE:TAG).
printf '%s' "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.index.v1+json\"\
,\"manifests\":[{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"sha256:$manifest_hex\",\"size\":$manifest_size\
,\"platform\":{\"architecture\":\"$arch\",\"os\":\"linux\"}\
,\"annotations\":$(json_obj io.containerd.image.name "$full_name" org.opencontainers.image.ref.name "$image_tag")}]}" >"$layout/index.json"
printf '%s' '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"

(
  cd "$layout"
  det_tar 0 "$work/ociregistry.oci.tar" -c oci-layout index.json blobs blobs/sha256 \
    "blobs/sha256/$config_hex" "blobs/sha256/$layer_hex" "blobs/sha256/$manifest_hex"
)

# --- the docker-archive (docker save's format) ------------------------------

docker=$work/docker
mkdir -p "$docker/$diff_id"
mv "$work/config.docker.json" "$docker/$config_hex.json"
mv "$layer" "$docker/$diff_id/layer.tar"
chmod 0644 "$docker/$config_hex.json" "$docker/$diff_id/layer.tar"
printf '%s' "[{\"Config\":\"$config_hex.json\",\"RepoTags\":[$(json_str "$tag")],\"Layers\":[\"$diff_id/layer.tar\"]}]" \
  >"$docker/manifest.json"
(
  cd "$docker"
  det_tar 0 "$work/ociregistry.docker.tar" -c manifest.json "$config_hex.json" "$diff_id" "$diff_id/layer.tar"
)

# --- into place -------------------------------------------------------------

[[ -n $output ]] || output="$root/target/image"
mkdir -p "$output"
if [[ -e $output/oci ]]; then
  [[ -f $output/oci/oci-layout ]] || die "$output/oci exists and is not an OCI layout: not replacing it"
  rm -rf "$output/oci"
fi
mv "$layout" "$output/oci"
mv "$work/ociregistry.oci.tar" "$work/ociregistry.docker.tar" "$output/"
echo "sha256:$manifest_hex" >"$output/digest"

cat <<EOF
image   $full_name (linux/$arch, created $created)
digest  sha256:$manifest_hex
binary  $binary
wrote   $output/ociregistry.oci.tar     OCI archive ($(size "$output/ociregistry.oci.tar") bytes)
        $output/ociregistry.docker.tar  docker-archive ($(size "$output/ociregistry.docker.tar") bytes)
        $output/oci/                    OCI layout
load    ctr -n k8s.io images import $output/ociregistry.oci.tar
push    skopeo copy --preserve-digests oci-archive:$output/ociregistry.oci.tar docker://REGISTRY/ociregistry:$image_tag
EOF
