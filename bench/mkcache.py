#!/usr/bin/env python3
"""Write the benchmark's images straight into a docker-registry storage tree.

    mkcache.py OUT IMAGES BIG_BYTES COLD_LAYER_BYTES [SEED]

Pushing 1,500 images with skopeo takes many minutes; writing distribution 2.8's
filesystem layout directly takes seconds. Every image is an OCI index with one
linux/amd64 manifest -> config + layers. Contents are random but deterministic
(seeded per image), so a rerun writes the same digests.

Writes under OUT:
  upstream/docker/registry/v2/...  storage for the upstream docker-registry
  www/v2/<name>/manifests/{v1,sha256:..}, www/v2/<name>/blobs/sha256:..
                                   the same bytes at the same URL paths for nginx
                                   (manifests copied, blobs symlinked to upstream)
  images.txt                       the warm images, for `ociregistry load`
  meta.json                        names, digests and sizes, for the harness

Images: bench/app0001..appNNNN:v1 (3 layers of 1-64 KiB each), bench/big:v1
(one BIG_BYTES layer + one 50 KiB layer: workloads 3 and 4) and bench/cold:v1
(one COLD_LAYER_BYTES tar layer + 2 small ones: the cold pull, not in images.txt).
"""
import hashlib, io, json, os, random, sys, tarfile

INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar"

out, images, big_bytes, cold_bytes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
seed = sys.argv[5] if len(sys.argv) > 5 else "ociregistry-bench"
v2 = f"{out}/upstream/docker/registry/v2"
written = set()  # blob digests already on disk (the 50 KiB blob is shared by nothing, but be safe)


def write(path, data, mode="wb"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, mode) as f:
        f.write(data)


def blob(data):
    """Store a blob once in the global blob store; return (digest, size)."""
    hexd = hashlib.sha256(data).hexdigest()
    if hexd not in written:
        write(f"{v2}/blobs/sha256/{hexd[:2]}/{hexd}/data", data)
        written.add(hexd)
    return "sha256:" + hexd, len(data)


def random_bytes(rng, n):
    """rng.randbytes in 16 MiB pieces (one call cannot make 256 MiB)."""
    return b"".join(rng.randbytes(min(1 << 24, n - i)) for i in range(0, n, 1 << 24))


def link(path, digest):
    # distribution's link files hold the bare digest string, no newline.
    write(path, digest, "w")


def tar_of(payload, name):
    """An uncompressed tar holding one file: a layer skopeo can treat as real."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size, info.mtime = len(payload), 0
        tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def image(name, layers):
    """Write one image (index -> manifest -> config + layers) into repo NAME, tag v1."""
    repo = f"{v2}/repositories/{name}"
    descs = []
    for data in layers:
        digest, size = blob(data)
        link(f"{repo}/_layers/sha256/{digest[7:]}/link", digest)
        descs.append({"mediaType": LAYER, "digest": digest, "size": size})
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Labels": {"bench": name}},
                         "rootfs": {"type": "layers", "diff_ids": [d["digest"] for d in descs]}}).encode()
    config_digest, config_size = blob(config)
    link(f"{repo}/_layers/sha256/{config_digest[7:]}/link", config_digest)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST,
                           "config": {"mediaType": CONFIG, "digest": config_digest, "size": config_size},
                           "layers": descs}).encode()
    manifest_digest, manifest_size = blob(manifest)
    index = json.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": [
        {"mediaType": MANIFEST, "digest": manifest_digest, "size": manifest_size,
         "platform": {"architecture": "amd64", "os": "linux"}}]}).encode()
    index_digest, _ = blob(index)
    for d in (manifest_digest, index_digest):
        link(f"{repo}/_manifests/revisions/sha256/{d[7:]}/link", d)
    link(f"{repo}/_manifests/tags/v1/current/link", index_digest)
    link(f"{repo}/_manifests/tags/v1/index/sha256/{index_digest[7:]}/link", index_digest)
    # nginx's copy: manifests as files (by tag and by digest), blobs as symlinks.
    www = f"{out}/www/v2/{name}"
    write(f"{www}/manifests/v1", index)
    write(f"{www}/manifests/{index_digest}", index)
    write(f"{www}/manifests/{manifest_digest}", manifest)
    os.makedirs(f"{www}/blobs", exist_ok=True)
    for d in [config_digest] + [x["digest"] for x in descs]:
        os.symlink(f"{v2}/blobs/sha256/{d[7:9]}/{d[7:]}/data", f"{www}/blobs/{d}")
    return {"name": name, "index": index_digest, "manifest": manifest_digest, "config": config_digest,
            "layers": [x["digest"] for x in descs], "sizes": [config_size] + [x["size"] for x in descs]}


meta = {"apps": [], "seed": seed}
for i in range(1, images + 1):
    rng = random.Random(f"{seed}/app{i}")
    meta["apps"].append(image(f"bench/app{i:04d}", [rng.randbytes(rng.randint(1024, 64 * 1024)) for _ in range(3)]))
rng = random.Random(f"{seed}/big")
big = image("bench/big", [random_bytes(rng, big_bytes), rng.randbytes(50 * 1024)])
meta["big"] = {**big, "big_blob": big["layers"][0], "big_size": big_bytes,
               "small_blob": big["layers"][1], "small_size": 50 * 1024}
rng = random.Random(f"{seed}/cold")
meta["cold"] = image("bench/cold", [tar_of(random_bytes(rng, cold_bytes), "big.bin"),
                                    tar_of(rng.randbytes(8 * 1024), "a.bin"), tar_of(rng.randbytes(32 * 1024), "b.bin")])
with open(f"{out}/images.txt", "w") as f:
    f.writelines(f"up.bench/{a['name']}:v1\n" for a in meta["apps"] + [meta["big"]])
with open(f"{out}/meta.json", "w") as f:
    json.dump(meta, f)
