#!/usr/bin/env python3
"""Write a one-layer OCI image layout for benchmarks: mkimage.py DIR LAYER_BYTES.

The layer is an uncompressed tar of random bytes (incompressible, so the blob
really is LAYER_BYTES long). Prints the manifest and layer digests.
"""
import hashlib, io, json, os, sys, tarfile

out, size = sys.argv[1], int(sys.argv[2])
os.makedirs(f"{out}/blobs/sha256", exist_ok=True)

def put(data):
    digest = hashlib.sha256(data).hexdigest()
    with open(f"{out}/blobs/sha256/{digest}", "wb") as f:
        f.write(data)
    return "sha256:" + digest, len(data)

buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode="w") as tar:
    payload = os.urandom(size)
    info = tarfile.TarInfo("payload.bin")
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))
layer = buf.getvalue()
layer_digest, layer_size = put(layer)
config = json.dumps({"architecture": "amd64", "os": "linux",
                     "rootfs": {"type": "layers", "diff_ids": [layer_digest]}}).encode()
config_digest, config_size = put(config)
# A small layer too (50 KiB): the shape of most config blobs and small layers.
small_digest, small_size = put(os.urandom(50 * 1024))
manifest = json.dumps({
    "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_size},
               {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": small_digest, "size": small_size}],
}).encode()
manifest_digest, manifest_size = put(manifest)
with open(f"{out}/index.json", "w") as f:
    json.dump({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest,
        "size": manifest_size, "annotations": {"org.opencontainers.image.ref.name": "v1"}}]}, f)
with open(f"{out}/oci-layout", "w") as f:
    f.write('{"imageLayoutVersion":"1.0.0"}')
print(manifest_digest, layer_digest, small_digest)
