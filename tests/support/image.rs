//! Generated test images: an OCI image layout on disk (`oci-layout`, `index.json`,
//! `blobs/sha256/…`), seeded into an upstream with `skopeo copy`.
//!
//! Layers are real gzip'd tar files (a text file and a data file of seeded random,
//! i.e. incompressible, bytes), deterministic: the same spec always gives the same
//! digests. The config carries the layers' `diff_ids`, so containerd can unpack them.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use super::skopeo::Skopeo;
use super::upstream::Upstream;
use super::{Explain, digest_of, hex_of};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// The path of the file every layer holds, with its layer's identity as content.
pub const MARKER_FILE: &str = "e2e/layer-id.txt";

/// What to generate.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// Random payload size (bytes) of each layer's data file.
    pub layers: Vec<usize>,
    /// Platforms `(os, architecture)`; one → a plain manifest, several → an index.
    pub platforms: Vec<(String, String)>,
    /// Seeds all content; different seeds give different digests.
    pub seed: u64,
    /// Seeds the first layer of each platform instead of `seed`: images whose specs
    /// have the same `shared_base` (and first layer size) share that layer, as
    /// images built on one base image do.
    pub shared_base: Option<u64>,
}

impl ImageSpec {
    /// A single-platform (linux/amd64) image with these layer payload sizes.
    pub fn single(seed: u64, layers: &[usize]) -> ImageSpec {
        ImageSpec {
            layers: layers.to_vec(),
            platforms: vec![("linux".into(), "amd64".into())],
            seed,
            shared_base: None,
        }
    }

    /// A linux/amd64 + linux/arm64 index, each platform with these layer sizes.
    pub fn multi_platform(seed: u64, layers: &[usize]) -> ImageSpec {
        ImageSpec {
            layers: layers.to_vec(),
            platforms: vec![("linux".into(), "amd64".into()), ("linux".into(), "arm64".into())],
            seed,
            shared_base: None,
        }
    }

    /// The first layer of each platform seeded by `base` (see [`ImageSpec::shared_base`]).
    pub fn with_shared_base(mut self, base: u64) -> ImageSpec {
        self.shared_base = Some(base);
        self
    }
}

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

impl Descriptor {
    fn from_json(v: &Value) -> Descriptor {
        Descriptor {
            media_type: v["mediaType"].as_str().unwrap_or_default().to_string(),
            digest: v["digest"]
                .as_str()
                .unwrap_or_else(|| panic!("descriptor without digest: {v}"))
                .to_string(),
            size: v["size"].as_u64().unwrap_or_else(|| panic!("descriptor without size: {v}")),
        }
    }

    fn to_json(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size})
    }
}

/// One image manifest (of one platform).
#[derive(Debug, Clone)]
pub struct ManifestInfo {
    pub descriptor: Descriptor,
    /// `os/arch`.
    pub platform: String,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    /// The exact manifest bytes.
    pub bytes: Vec<u8>,
}

/// An image as stored somewhere (generated layout or seeded upstream): the top
/// manifest (index or manifest) and every manifest and blob below it.
#[derive(Debug, Clone)]
pub struct ImageInfo {
    /// The tagged manifest: an index/list, or an image manifest.
    pub top: Descriptor,
    /// The exact bytes of the top manifest.
    pub top_bytes: Vec<u8>,
    /// The image manifests (one, or one per platform).
    pub manifests: Vec<ManifestInfo>,
}

impl ImageInfo {
    /// Whether the top is an index/manifest list.
    pub fn is_index(&self) -> bool {
        self.top.media_type == OCI_INDEX || self.top.media_type == DOCKER_LIST
    }

    /// Every blob (configs and layers), each once, in manifest order.
    pub fn blobs(&self) -> Vec<Descriptor> {
        let mut out: Vec<Descriptor> = Vec::new();
        for m in &self.manifests {
            for d in std::iter::once(&m.config).chain(&m.layers) {
                if !out.iter().any(|o| o.digest == d.digest) {
                    out.push(d.clone());
                }
            }
        }
        out
    }

    /// Every layer, each once.
    pub fn layers(&self) -> Vec<Descriptor> {
        let mut out: Vec<Descriptor> = Vec::new();
        for m in &self.manifests {
            for d in &m.layers {
                if !out.iter().any(|o| o.digest == d.digest) {
                    out.push(d.clone());
                }
            }
        }
        out
    }

    /// The largest layer.
    pub fn largest_layer(&self) -> Descriptor {
        self.layers().into_iter().max_by_key(|d| d.size).expect("image has layers")
    }

    /// The manifest of one platform (`"linux/amd64"`).
    pub fn manifest_for(&self, platform: &str) -> &ManifestInfo {
        self.manifests
            .iter()
            .find(|m| m.platform == platform)
            .unwrap_or_else(|| panic!("image has no {platform} manifest"))
    }

    /// Every manifest digest (top first).
    pub fn manifest_digests(&self) -> Vec<String> {
        let mut v = vec![self.top.digest.clone()];
        for m in &self.manifests {
            if m.descriptor.digest != self.top.digest {
                v.push(m.descriptor.digest.clone());
            }
        }
        v
    }
}

/// A generated OCI image layout directory.
#[derive(Debug, Clone)]
pub struct ImageLayout {
    pub dir: PathBuf,
    /// The reference name in `index.json` (use as `oci:DIR:REF`).
    pub reference: String,
    pub info: ImageInfo,
}

impl ImageLayout {
    /// Generates the image described by `spec` as a layout in `dir`.
    pub fn generate(dir: &Path, spec: &ImageSpec) -> ImageLayout {
        let blobs = dir.join("blobs").join("sha256");
        std::fs::create_dir_all(&blobs).expect("creating the layout's blob directory");
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)
            .expect("writing oci-layout");
        let mut manifests = Vec::new();
        for (p, (os, arch)) in spec.platforms.iter().enumerate() {
            let mut layers = Vec::new();
            let mut diff_ids = Vec::new();
            for (l, size) in spec.layers.iter().enumerate() {
                let (id, seed) = match spec.shared_base {
                    Some(base) if l == 0 => (format!("base={base} platform={os}/{arch} layer=0"), base),
                    _ => (format!("seed={} platform={os}/{arch} layer={l}", spec.seed), spec.seed),
                };
                let rng_seed =
                    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add((p as u64) << 32 | l as u64);
                let (desc, diff_id) = write_layer(&blobs, &id, rng_seed, *size);
                layers.push(desc);
                diff_ids.push(diff_id);
            }
            let config = json!({
                "architecture": arch,
                "os": os,
                "created": "1970-01-01T00:00:00Z",
                "config": {"Cmd": ["/bin/true"], "Env": [format!("E2E_SEED={}", spec.seed)]},
                "rootfs": {"type": "layers", "diff_ids": diff_ids},
                "history": spec.layers.iter().map(|_| json!({"created": "1970-01-01T00:00:00Z", "created_by": "ociregistry e2e"})).collect::<Vec<_>>(),
            });
            let config = write_blob(&blobs, OCI_CONFIG, config.to_string().as_bytes());
            let manifest = json!({
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": config.to_json(),
                "layers": layers.iter().map(Descriptor::to_json).collect::<Vec<_>>(),
            });
            let bytes = manifest.to_string().into_bytes();
            let descriptor = write_blob(&blobs, OCI_MANIFEST, &bytes);
            manifests.push(ManifestInfo {
                descriptor,
                platform: format!("{os}/{arch}"),
                config,
                layers,
                bytes,
            });
        }
        let (top, top_bytes) = if manifests.len() == 1 {
            (manifests[0].descriptor.clone(), manifests[0].bytes.clone())
        } else {
            let index = json!({
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": manifests.iter().map(|m| {
                    let (os, arch) = m.platform.split_once('/').expect("os/arch");
                    let mut d = m.descriptor.to_json();
                    d["platform"] = json!({"os": os, "architecture": arch});
                    d
                }).collect::<Vec<_>>(),
            });
            let bytes = index.to_string().into_bytes();
            (write_blob(&blobs, OCI_INDEX, &bytes), bytes)
        };
        let reference = "e2e".to_string();
        let mut top_json = top.to_json();
        top_json["annotations"] = json!({"org.opencontainers.image.ref.name": reference});
        let index_json = json!({"schemaVersion": 2, "manifests": [top_json]});
        std::fs::write(dir.join("index.json"), index_json.to_string()).expect("writing index.json");
        ImageLayout { dir: dir.to_path_buf(), reference, info: ImageInfo { top, top_bytes, manifests } }
    }

    /// The skopeo source name: `oci:DIR:REF`.
    pub fn skopeo_ref(&self) -> String {
        format!("oci:{}:{}", self.dir.display(), self.reference)
    }

    /// The path of a blob in the layout.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.dir.join("blobs").join("sha256").join(hex_of(digest))
    }
}

/// Media types of a seeded image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// As generated: OCI manifest/index.
    Oci,
    /// Converted by skopeo (`--format v2s2`): Docker schema 2 manifest/list.
    Docker,
}

/// An image pushed into an upstream, as the upstream now holds it.
#[derive(Debug, Clone)]
pub struct Seeded {
    /// Repository name, e.g. `team/app`.
    pub repo: String,
    pub tag: String,
    pub format: Format,
    /// Read back from the upstream (digests differ from the layout's for Docker).
    pub info: ImageInfo,
}

impl Seeded {
    /// `repo:tag`.
    pub fn name_tag(&self) -> String {
        format!("{}:{}", self.repo, self.tag)
    }
}

/// Generates `spec` under `dir` and pushes it to `upstream` as `repo:tag`.
pub fn seed(
    upstream: &Upstream,
    dir: &Path,
    spec: &ImageSpec,
    repo: &str,
    tag: &str,
    format: Format,
) -> Seeded {
    let layout = ImageLayout::generate(dir, spec);
    seed_layout(upstream, &layout, repo, tag, format)
}

/// Pushes a generated layout to `upstream` as `repo:tag` and reads back what the
/// upstream holds (`skopeo inspect --raw`).
pub fn seed_layout(
    upstream: &Upstream,
    layout: &ImageLayout,
    repo: &str,
    tag: &str,
    format: Format,
) -> Seeded {
    let dest = format!("docker://{}/{repo}:{tag}", upstream.host_port());
    let skopeo = Skopeo::new().context(upstream);
    let mut args: Vec<String> = vec!["copy".into(), "--all".into()];
    match format {
        Format::Oci => args.push("--preserve-digests".into()),
        Format::Docker => args.extend(["--format".into(), "v2s2".into()]),
    }
    args.extend(upstream_flags(upstream, "dest-"));
    args.push(layout.skopeo_ref());
    args.push(dest);
    skopeo.run(&args);

    let info = read_back(upstream, repo, tag);
    if format == Format::Oci {
        assert_eq!(
            info.top.digest,
            layout.info.top.digest,
            "the upstream holds {repo}:{tag} under another digest than the layout\n{}",
            upstream.explain()
        );
    }
    Seeded { repo: repo.to_string(), tag: tag.to_string(), format, info }
}

/// skopeo flags to talk to `upstream`: TLS trust and credentials. `prefix` is
/// `"src-"` or `"dest-"` for `copy`, `""` for `inspect`.
pub fn upstream_flags(upstream: &Upstream, prefix: &str) -> Vec<String> {
    let mut args = Vec::new();
    match upstream.cert_dir() {
        Some(dir) => args.push(format!("--{prefix}cert-dir={}", dir.display())),
        None => args.push(format!("--{prefix}tls-verify=false")),
    }
    if let Some((u, p)) = upstream.credentials() {
        args.push(format!("--{prefix}creds={u}:{p}"));
    }
    args
}

/// Reads an image back from the upstream: the top manifest and each platform manifest.
pub fn read_back(upstream: &Upstream, repo: &str, tag: &str) -> ImageInfo {
    let skopeo = Skopeo::new().context(upstream);
    let base = format!("docker://{}/{repo}", upstream.host_port());
    let raw = |reference: &str| -> Vec<u8> {
        let mut args: Vec<String> = vec!["inspect".into(), "--raw".into()];
        args.extend(upstream_flags(upstream, ""));
        args.push(format!("{base}{reference}"));
        skopeo.run(&args).stdout
    };
    let top_bytes = raw(&format!(":{tag}"));
    image_info_from(top_bytes, |digest| raw(&format!("@{digest}")))
}

/// Builds an [`ImageInfo`] from top manifest bytes, fetching child manifests by digest.
pub fn image_info_from(top_bytes: Vec<u8>, mut fetch: impl FnMut(&str) -> Vec<u8>) -> ImageInfo {
    let top_json: Value = serde_json::from_slice(&top_bytes).expect("top manifest is JSON");
    let media_type = top_json["mediaType"].as_str().unwrap_or_default().to_string();
    let top = Descriptor {
        media_type: media_type.clone(),
        digest: digest_of(&top_bytes),
        size: top_bytes.len() as u64,
    };
    let manifests = if media_type == OCI_INDEX || media_type == DOCKER_LIST {
        top_json["manifests"]
            .as_array()
            .expect("index has manifests")
            .iter()
            .map(|m| {
                let descriptor = Descriptor::from_json(m);
                let bytes = fetch(&descriptor.digest);
                assert_eq!(digest_of(&bytes), descriptor.digest, "manifest bytes do not match their digest");
                let platform = format!(
                    "{}/{}",
                    m["platform"]["os"].as_str().unwrap_or("?"),
                    m["platform"]["architecture"].as_str().unwrap_or("?")
                );
                parse_manifest(descriptor, platform, bytes)
            })
            .collect()
    } else {
        vec![parse_manifest(top.clone(), String::new(), top_bytes.clone())]
    };
    ImageInfo { top, top_bytes, manifests }
}

fn parse_manifest(descriptor: Descriptor, platform: String, bytes: Vec<u8>) -> ManifestInfo {
    let v: Value = serde_json::from_slice(&bytes).expect("manifest is JSON");
    ManifestInfo {
        descriptor,
        platform,
        config: Descriptor::from_json(&v["config"]),
        layers: v["layers"]
            .as_array()
            .expect("manifest has layers")
            .iter()
            .map(Descriptor::from_json)
            .collect(),
        bytes,
    }
}

/// Writes a blob into `blobs` (named by its digest) and returns its descriptor.
fn write_blob(blobs: &Path, media_type: &str, bytes: &[u8]) -> Descriptor {
    let digest = digest_of(bytes);
    std::fs::write(blobs.join(hex_of(&digest)), bytes).expect("writing a layout blob");
    Descriptor { media_type: media_type.to_string(), digest, size: bytes.len() as u64 }
}

/// A writer that hashes and counts what passes through it.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
    len: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes one gzip'd tar layer; returns its descriptor and its diff_id (digest of the
/// uncompressed tar).
fn write_layer(blobs: &Path, id: &str, seed: u64, payload: usize) -> (Descriptor, String) {
    let tmp = blobs.join(format!(".layer-{seed:x}.tmp"));
    let file = File::create(&tmp).expect("creating a layer file");
    let compressed = Hashing { inner: BufWriter::new(file), hash: Sha256::new(), len: 0 };
    // Large random payloads do not compress: store them (level 0) to keep generation
    // fast in unoptimised test builds.
    let level = if payload > 1 << 20 { Compression::none() } else { Compression::fast() };
    let gz = GzEncoder::new(compressed, level);
    let uncompressed = Hashing { inner: gz, hash: Sha256::new(), len: 0 };
    let mut tar = tar::Builder::new(uncompressed);
    tar.mode(tar::HeaderMode::Deterministic);

    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    dir.set_mtime(0);
    dir.set_uid(0);
    dir.set_gid(0);
    tar.append_data(&mut dir, "e2e/", io::empty()).expect("tar: directory");

    let text = format!("{id}\n");
    append_file(&mut tar, MARKER_FILE, text.as_bytes());
    let data = random_bytes(seed, payload);
    append_file(&mut tar, &format!("e2e/data-{seed:x}.bin"), &data);

    let uncompressed = tar.into_inner().expect("tar: finishing the archive");
    let diff_id = format!("sha256:{}", hex::encode(uncompressed.hash.finalize()));
    let mut compressed = uncompressed.inner.finish().expect("gzip: finishing the layer");
    compressed.flush().expect("flushing the layer file");
    let digest = format!("sha256:{}", hex::encode(compressed.hash.finalize()));
    let size = compressed.len;
    drop(compressed.inner);
    std::fs::rename(&tmp, blobs.join(hex_of(&digest))).expect("renaming the layer into place");
    (Descriptor { media_type: OCI_LAYER_GZIP.to_string(), digest, size }, diff_id)
}

fn append_file<W: Write>(tar: &mut tar::Builder<W>, path: &str, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    tar.append_data(&mut h, path, data).unwrap_or_else(|e| panic!("tar: appending {path}: {e}"));
}

/// `len` pseudo-random bytes from `seed` (splitmix64): incompressible and repeatable.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    let mut state = seed;
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Reads an OCI layout or `dir:` directory written by skopeo and returns the blob
/// file for `digest`, if present.
pub fn find_blob(dir: &Path, digest: &str) -> Option<PathBuf> {
    let hex = hex_of(digest);
    [dir.join("blobs").join("sha256").join(hex), dir.join(hex)].into_iter().find(|p| p.is_file())
}
