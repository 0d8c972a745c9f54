//! The Go reference server's cache directory, read: its layout (facts):
//! - `blobs/<hex>`: raw blob bytes, flat, named by their sha256 hex;
//! - `img/<hex>` and `lts/<hex>`: one JSON file per manifest (pulled by a tag
//!   other than / equal to `latest`) with `type` (0 Docker manifest list,
//!   1 Docker manifest, 2 OCI index, 3 OCI manifest), `digest` (hex),
//!   `imageUrl`, `bytes` (the manifest bytes, base64), and `created` /
//!   `pulled` (local time, `YYYY-MM-DDTHH:MM:SS`).
//!
//! A manifest file is used only when its bytes hash to its `digest`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use base64::Engine;
use bytes::Bytes;
use serde::Deserialize;

use crate::cache::store::StoredManifest;
use crate::oci::{Algorithm, Digest, ImageRef, MAX_MANIFEST_BYTES, ManifestView};

pub(super) const BLOBS_DIR: &str = "blobs";
/// Manifests pulled by a tag other than `latest` (and by digest).
pub(super) const IMG_DIR: &str = "img";
/// Manifests pulled by `latest`.
pub(super) const LTS_DIR: &str = "lts";

/// A manifest file is its manifest in base64 (4/3 the size) plus a few fields.
pub(super) const MAX_MANIFEST_FILE_BYTES: u64 = 2 * MAX_MANIFEST_BYTES as u64;

/// What `type` means, when the manifest bytes do not say their `mediaType`.
pub(super) const TYPE_MEDIA_TYPES: [&str; 4] = [
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
];

/// One manifest file, checked: its bytes hash to its digest and are a manifest.
pub struct ManifestFile {
    /// Its `imageUrl`.
    pub image: ImageRef,
    pub manifest: StoredManifest,
    pub created: Option<SystemTime>,
    pub pulled: Option<SystemTime>,
}

/// A file of the directory that was not imported, and why.
#[derive(Debug, Clone)]
pub struct SkippedFile {
    pub path: PathBuf,
    pub why: String,
    /// Where the layout has content, but it is corrupt or unreadable (as
    /// opposed to a file the layout does not have, which is only reported).
    pub corrupt: bool,
}

/// A manifest file as the reference writes it.
#[derive(Deserialize)]
pub(super) struct Raw {
    #[serde(rename = "type")]
    kind: i64,
    digest: String,
    #[serde(rename = "imageUrl")]
    image_url: String,
    bytes: Option<String>,
    created: Option<String>,
    pulled: Option<String>,
}

/// Only the manifest's own `mediaType`.
#[derive(Deserialize)]
pub(super) struct OwnType {
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
}

/// Reads one manifest file. The bytes are authoritative: they must hash to
/// `digest`; the media type is theirs (`mediaType`), else `type`'s.
pub fn parse_manifest_file(data: &[u8]) -> Result<ManifestFile, String> {
    let raw: Raw = serde_json::from_slice(data).map_err(|e| {
        format!("not a reference manifest file (JSON with type, digest, imageUrl, bytes): {e}")
    })?;
    let hex = raw.digest.strip_prefix("sha256:").unwrap_or(&raw.digest);
    let digest = Digest::parse(&format!("sha256:{hex}"))
        .map_err(|_| format!("digest {:?} is not a sha256 hex digest", raw.digest))?;
    let encoded = raw.bytes.filter(|b| !b.is_empty()).ok_or("it holds no manifest bytes")?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded.as_bytes())
        .map_err(|e| format!("bytes is not base64: {e}"))?;
    let got = Digest::of(Algorithm::Sha256, &bytes);
    if got != digest {
        return Err(format!("the manifest bytes hash to {got}, but its digest says {digest}"));
    }
    let own = serde_json::from_slice::<OwnType>(&bytes).ok().and_then(|o| o.media_type);
    let media_type = match own {
        Some(m) => m,
        None => usize::try_from(raw.kind)
            .ok()
            .and_then(|k| TYPE_MEDIA_TYPES.get(k))
            .map(|m| (*m).to_owned())
            .ok_or_else(|| format!("unknown type {}, and the manifest bytes name no mediaType", raw.kind))?,
    };
    let view = ManifestView::parse(&bytes, Some(&media_type))
        .map_err(|e| format!("the bytes are not a manifest: {e}"))?;
    let image = ImageRef::parse(&raw.image_url)
        .map_err(|e| format!("imageUrl {:?} is not an image reference: {e}", raw.image_url))?;
    Ok(ManifestFile {
        image,
        manifest: StoredManifest { digest, media_type: view.media_type, bytes: Bytes::from(bytes) },
        created: raw.created.as_deref().and_then(local_time),
        pulled: raw.pulled.as_deref().and_then(local_time),
    })
}

/// `YYYY-MM-DDTHH:MM:SS` in this machine's time zone (how the reference
/// writes times); with a `Z`, UTC. `None` when it is not such a time.
pub(super) fn local_time(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    let as_utc = humantime::parse_rfc3339_weak(s).ok()?;
    if s.ends_with('Z') {
        return Some(as_utc);
    }
    let wall = i64::try_from(as_utc.duration_since(UNIX_EPOCH).ok()?.as_secs()).ok()?;
    // The offset at the wall time read as UTC, then at the instant that gives
    // (right across a daylight-saving change too).
    let first = utc_offset(wall)?;
    let at = wall - utc_offset(wall - first)?;
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(at).ok()?))
}

/// The local time zone's offset from UTC at `at` (seconds since 1970), in seconds.
// The libc crate marks `time_t` deprecated on musl (its width changed in musl
// 1.2); it is still the type localtime_r takes.
#[allow(deprecated)]
pub(super) fn utc_offset(at: i64) -> Option<i64> {
    let t = libc::time_t::try_from(at).ok()?;
    // SAFETY: localtime_r reads `t` and writes only the `tm` we own.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    if unsafe { libc::localtime_r(&t, &mut tm) }.is_null() {
        return None;
    }
    Some(tm.tm_gmtoff)
}

/// What the directory holds, each list sorted by path.
#[derive(Debug, Default)]
pub struct Found {
    /// `blobs/<hex>`: the digest its name gives, the file and its length.
    pub blobs: Vec<(Digest, PathBuf, u64)>,
    /// `img/<hex>` and `lts/<hex>`.
    pub manifest_files: Vec<PathBuf>,
    /// Files the layout does not have, and files that cannot be read.
    pub skipped: Vec<SkippedFile>,
}

/// Lists the directory. An error only when it cannot be read or is not the
/// reference's cache at all.
pub fn scan(dir: &Path) -> anyhow::Result<Found> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .with_context(|| format!("reading {}", dir.display()))?;
    entries.sort();
    let ours = |p: &Path| [BLOBS_DIR, IMG_DIR, LTS_DIR].iter().any(|d| p.file_name() == Some(d.as_ref()));
    if !entries.iter().any(|p| ours(p) && p.is_dir()) {
        anyhow::bail!(
            "{} is not the reference server's cache directory (it has no {BLOBS_DIR}/, {IMG_DIR}/ or {LTS_DIR}/)",
            dir.display()
        );
    }
    let mut found = Found::default();
    let unknown = |path: PathBuf, why: &str| SkippedFile { path, why: why.to_owned(), corrupt: false };
    for entry in entries {
        if !(ours(&entry) && entry.is_dir()) {
            found.skipped.push(unknown(entry, "not part of the reference server's cache layout"));
            continue;
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(&entry)
            .with_context(|| format!("reading {}", entry.display()))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .with_context(|| format!("reading {}", entry.display()))?;
        files.sort();
        let blobs = entry.file_name() == Some(BLOBS_DIR.as_ref());
        for path in files {
            let digest = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| Digest::parse(&format!("sha256:{n}")).ok());
            let meta = std::fs::metadata(&path);
            match (digest, meta) {
                (None, _) => found.skipped.push(unknown(path, "not named by a sha256 hex digest")),
                (_, Err(e)) => found.skipped.push(SkippedFile {
                    path,
                    why: format!("cannot be read: {e}"),
                    corrupt: true,
                }),
                (Some(_), Ok(m)) if !m.is_file() => found.skipped.push(unknown(path, "not a file")),
                (Some(d), Ok(m)) if blobs => found.blobs.push((d, path, m.len())),
                (Some(_), Ok(_)) => found.manifest_files.push(path),
            }
        }
    }
    Ok(found)
}

/// Reads and checks one manifest file; the error names no path (the caller's `SkippedFile` does).
pub(super) fn read_manifest_file(path: &Path) -> Result<ManifestFile, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot be read: {e}"))?;
    let mut data = Vec::new();
    file.take(MAX_MANIFEST_FILE_BYTES + 1)
        .read_to_end(&mut data)
        .map_err(|e| format!("cannot be read: {e}"))?;
    if data.len() as u64 > MAX_MANIFEST_FILE_BYTES {
        return Err(format!("larger than any manifest file ({MAX_MANIFEST_FILE_BYTES} bytes)"));
    }
    parse_manifest_file(&data)
}
