//! Moving from the Go reference server: its cache directory imported into
//! ours (`load --from-reference-cache DIR`), or converted in place when
//! `serve` finds it in its own `imagePath`.
//!
//! Its layout (facts):
//! - `blobs/<hex>`: raw blob bytes, flat, named by their sha256 hex;
//! - `img/<hex>` and `lts/<hex>`: one JSON file per manifest (pulled by a tag
//!   other than / equal to `latest`) with `type` (0 Docker manifest list,
//!   1 Docker manifest, 2 OCI index, 3 OCI manifest), `digest` (hex),
//!   `imageUrl`, `bytes` (the manifest bytes, base64), and `created` /
//!   `pulled` (local time, `YYYY-MM-DDTHH:MM:SS`).
//!
//! Nothing in it is trusted (the reference never verified what it wrote): a
//! blob is streamed into the store and committed only when its bytes hash to
//! its name, a manifest file is used only when its bytes hash to its
//! `digest`. What cannot be used is reported and skipped; the rest is
//! imported. Reading is synchronous; [`Cache::import_reference_cache`] is
//! the face.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use base64::Engine;
use bytes::Bytes;
use serde::Deserialize;
use tracing::{info, warn};

use super::archive::{Counting, import_named_blob};
use super::manage::store_named;
use super::store::{Store, StoredManifest};
use super::{Cache, Inner, Locator, OnBytes, blocking};
use crate::oci::{Algorithm, Digest, ImageRef, MAX_MANIFEST_BYTES, ManifestKind, ManifestView};

const BLOBS_DIR: &str = "blobs";
/// Manifests pulled by a tag other than `latest` (and by digest).
const IMG_DIR: &str = "img";
/// Manifests pulled by `latest`.
const LTS_DIR: &str = "lts";

/// A manifest file is its manifest in base64 (4/3 the size) plus a few fields.
const MAX_MANIFEST_FILE_BYTES: u64 = 2 * MAX_MANIFEST_BYTES as u64;

/// What `type` means, when the manifest bytes do not say their `mediaType`.
const TYPE_MEDIA_TYPES: [&str; 4] = [
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

/// What an import did.
#[derive(Debug, Default)]
pub struct ReferenceImport {
    /// Distinct manifests stored.
    pub manifests: usize,
    pub tags: usize,
    /// Manifests named by digest: `imageUrl`s with a digest, and a tag's
    /// older manifests when several files name the same tag.
    pub digest_links: usize,
    pub blobs_imported: usize,
    /// Blobs that were in the cache already (not read again).
    pub blobs_cached: usize,
    pub blob_bytes: u64,
    /// Pull times recorded (from `pulled`).
    pub pulls: usize,
    /// Blobs no imported manifest uses (imported all the same).
    pub unreferenced: Vec<Digest>,
    /// Configs and layers the imported manifests use that are not in the
    /// cache (fetched from the upstream on their first pull).
    pub missing: Vec<Digest>,
    /// Tags several files named, and which manifest kept the tag.
    pub notes: Vec<String>,
    pub skipped: Vec<SkippedFile>,
}

impl ReferenceImport {
    /// Files skipped because they were corrupt or unreadable.
    pub fn corrupt(&self) -> usize {
        self.skipped.iter().filter(|s| s.corrupt).count()
    }

    /// Whether nothing at all came of the directory.
    pub fn nothing_imported(&self) -> bool {
        self.manifests == 0 && self.blobs_imported == 0 && self.blobs_cached == 0
    }
}

/// A manifest file as the reference writes it.
#[derive(Deserialize)]
struct Raw {
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
struct OwnType {
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
fn local_time(s: &str) -> Option<SystemTime> {
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
fn utc_offset(at: i64) -> Option<i64> {
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
fn read_manifest_file(path: &Path) -> Result<ManifestFile, String> {
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

impl Cache {
    /// Imports the Go reference server's cache directory: every blob streamed
    /// in and committed only if it verifies, every manifest file whose bytes
    /// verify stored and named by its `imageUrl` (a tag, or a link by digest),
    /// its `pulled` time recorded. Safe beside a running server (which
    /// picks the import up). Files that cannot be used are listed in the
    /// answer, not errors; an error is a directory that cannot be read, or
    /// the cache failing to store.
    pub async fn import_reference_cache(
        &self,
        dir: PathBuf,
        on_bytes: OnBytes,
    ) -> anyhow::Result<ReferenceImport> {
        // Blobs are committed before the manifests that use them: until
        // those are stored, no prune (here or beside us) may take them.
        let _hold = self.inner.store.hold_blobs().context("holding the cache's blobs for the import")?;
        let inner = self.inner.clone();
        let report = blocking("importing the reference server's cache", move || {
            import(&inner, &dir, &on_bytes, Source::Elsewhere)
        })
        .await??;
        self.mark_changed("the imported reference server's cache").await;
        Ok(report)
    }

    /// A cache directory the reference server used (its `img/` or `lts/`
    /// beside ours) converted in place: each file imported as
    /// [`Cache::import_reference_cache`] does, then deleted, so the disk
    /// never holds more than one extra blob. Files that cannot be used stay
    /// (and are logged). `None` when there is nothing of the reference's.
    pub async fn convert_reference_layout(&self) -> anyhow::Result<Option<ReferenceImport>> {
        let root = self.inner.root.clone();
        if ![IMG_DIR, LTS_DIR].iter().any(|d| root.join(d).is_dir()) {
            return Ok(None);
        }
        info!(dir = %root.display(), "imagePath holds the reference server's cache (img/, lts/): converting it in place");
        let _hold = self.inner.store.hold_blobs().context("holding the cache's blobs for the conversion")?;
        let inner = self.inner.clone();
        let report = blocking("converting the reference server's cache", move || {
            import(&inner, &root, &(Arc::new(Unwatched) as OnBytes), Source::OwnDirectory)
        })
        .await??;
        self.mark_changed("the converted reference server's cache").await;
        Ok(Some(report))
    }
}

/// Progress nobody watches (the server logs the outcome).
struct Unwatched;

impl super::LoadProgress for Unwatched {
    fn arrived(&self, _bytes: u64) {}
}

/// Where the reference's files are.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    /// Another directory: read, left as it is.
    Elsewhere,
    /// This cache's own directory: each file deleted once imported.
    OwnDirectory,
}

fn import(inner: &Inner, dir: &Path, on_bytes: &OnBytes, source: Source) -> anyhow::Result<ReferenceImport> {
    let own = matches!((dir.canonicalize(), inner.root.canonicalize()), (Ok(a), Ok(b)) if a == b);
    if own && source == Source::Elsewhere {
        anyhow::bail!(
            "{} is this cache's own directory: `ociregistry serve` converts the reference's files there by itself",
            dir.display()
        );
    }
    let in_place = source == Source::OwnDirectory;
    let found = scan(dir)?;
    // In our own directory, our files are not the reference's to report.
    let skipped = found.skipped.into_iter().filter(|s| !in_place || s.corrupt).collect();
    let mut report = ReferenceImport { skipped, ..ReferenceImport::default() };
    let mut files = Vec::new();
    let mut converted_files = Vec::new();
    for path in found.manifest_files {
        match read_manifest_file(&path) {
            Ok(f) => {
                files.push(f);
                converted_files.push(path);
            }
            Err(why) => report.skipped.push(SkippedFile { path, why, corrupt: true }),
        }
    }

    on_bytes.planned(found.blobs.iter().map(|(_, _, len)| len).sum());
    let store: &dyn Store = &*inner.store;
    let mut buf = vec![0u8; 1024 * 1024];
    let mut in_cache = Vec::new();
    for (digest, path, len) in found.blobs {
        let what = path.display().to_string();
        let imported =
            std::fs::File::open(&path).with_context(|| format!("{what}: opening")).and_then(|file| {
                let mut src = Counting { inner: file, on_bytes: &|n| on_bytes.arrived(n) };
                import_named_blob(store, &digest, &mut src, &mut buf, &what)
            });
        if in_place && imported.is_ok() {
            remove_converted(&path);
        }
        match imported {
            Ok(Some(n)) => {
                report.blobs_imported += 1;
                report.blob_bytes += n;
                in_cache.push(digest);
            }
            Ok(None) => {
                on_bytes.arrived(len);
                report.blobs_cached += 1;
                in_cache.push(digest);
            }
            Err(e) => {
                // The message starts with the path already.
                let why = format!("{e:#}");
                let why = why.strip_prefix(&format!("{what}: ")).unwrap_or(&why).to_owned();
                report.skipped.push(SkippedFile { path, why, corrupt: true });
            }
        }
    }

    let names = name_manifests(&mut files, &mut report);
    let mut manifests: Vec<StoredManifest> = Vec::new();
    // What some imported manifest uses, or is (a manifest's bytes in `blobs/` too).
    let mut referenced: HashSet<Digest> = HashSet::new();
    let mut blobs_used: HashSet<Digest> = HashSet::new();
    let mut stored: HashSet<Digest> = HashSet::new();
    for f in &files {
        if !stored.insert(f.manifest.digest.clone()) {
            continue;
        }
        referenced.insert(f.manifest.digest.clone());
        if let Ok(view) = ManifestView::parse(&f.manifest.bytes, Some(&f.manifest.media_type)) {
            let digests = view.references.into_iter().map(|r| r.digest);
            match view.kind {
                ManifestKind::Image => blobs_used.extend(digests),
                ManifestKind::Index => referenced.extend(digests),
            }
        }
        manifests.push(StoredManifest {
            digest: f.manifest.digest.clone(),
            media_type: f.manifest.media_type.clone(),
            bytes: f.manifest.bytes.clone(),
        });
    }
    store_named(inner, &manifests, &names)
        .with_context(|| format!("storing the manifests of {}", dir.display()))?;
    if in_place {
        for path in &converted_files {
            remove_converted(path);
        }
        // Only once empty: what could not be used stays for the operator.
        for d in [IMG_DIR, LTS_DIR] {
            let _ = std::fs::remove_dir(dir.join(d));
        }
    }
    report.manifests = manifests.len();
    report.tags = names.iter().filter(|(r, _)| r.tag.is_some()).count();
    report.digest_links = names.len() - report.tags;

    record_pulls(store, &files, &names, &mut report);
    referenced.extend(blobs_used.iter().cloned());
    report.unreferenced = in_cache.into_iter().filter(|d| !referenced.contains(d)).collect();
    let mut missing: Vec<Digest> =
        blobs_used.into_iter().filter(|d| !matches!(store.blob_len(d), Ok(Some(_)))).collect();
    missing.sort();
    report.missing = missing;
    for s in &report.skipped {
        warn!(file = %s.path.display(), reason = %s.why, "reference cache: skipped");
    }
    info!(
        dir = %dir.display(),
        manifests = report.manifests,
        tags = report.tags,
        blobs = report.blobs_imported,
        skipped = report.skipped.len(),
        "imported the reference server's cache"
    );
    Ok(report)
}

/// Deletes a reference file whose content is in the cache now; one that
/// cannot be deleted is imported again (as already cached) at the next start.
fn remove_converted(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        warn!(file = %path.display(), error = %e, "reference cache: converted, but the file could not be deleted");
    }
}

/// The names to put: each file's `imageUrl`, the tag on the file's manifest
/// or a link by digest. When several files name one tag, it goes to the
/// manifest no other of them contains (an index over its children), then to
/// the most recently created; the others are linked by digest. Sorts `files`
/// oldest first.
fn name_manifests(files: &mut [ManifestFile], report: &mut ReferenceImport) -> Vec<(ImageRef, Digest)> {
    files.sort_by_key(|f| (f.created, f.pulled));
    let mut by_tag: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, f) in files.iter().enumerate() {
        if let Some(tag) = &f.image.tag {
            by_tag.entry(format!("{}/{}:{tag}", f.image.registry, f.image.repo)).or_default().push(i);
        }
    }
    let mut loses: HashSet<usize> = HashSet::new();
    let mut tags: Vec<(String, Vec<usize>)> = by_tag.into_iter().filter(|(_, v)| v.len() > 1).collect();
    tags.sort();
    for (tag, candidates) in tags {
        let children: HashSet<Digest> = candidates
            .iter()
            .filter_map(|&i| {
                ManifestView::parse(&files[i].manifest.bytes, Some(&files[i].manifest.media_type)).ok()
            })
            .filter(|v| v.kind == ManifestKind::Index)
            .flat_map(|v| v.references.into_iter().map(|r| r.digest))
            .collect();
        let roots: Vec<usize> =
            candidates.iter().copied().filter(|&i| !children.contains(&files[i].manifest.digest)).collect();
        let Some(&winner) = roots.last().or(candidates.last()) else { continue };
        let keeps = &files[winner].manifest.digest;
        if candidates.iter().any(|&i| files[i].manifest.digest != *keeps) {
            report.notes.push(format!(
                "{tag} is named by {} files; it stays on {keeps}, the others are kept by digest",
                candidates.len()
            ));
        }
        loses.extend(candidates.into_iter().filter(|&i| i != winner));
    }
    let mut seen = HashSet::new();
    let mut names: Vec<(ImageRef, Digest)> = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let mut name = f.image.clone();
        if loses.contains(&i) {
            name.tag = None;
        }
        let named = (name, f.manifest.digest.clone());
        if seen.insert(named.clone()) {
            names.push(named);
        }
    }
    names
}

/// Records each file's `pulled` under the reference it names (the tag, or
/// the digest), so eviction and `prune --accessed-before` see it.
fn record_pulls(
    store: &dyn Store,
    files: &[ManifestFile],
    names: &[(ImageRef, Digest)],
    report: &mut ReferenceImport,
) {
    let tagged: HashSet<(&ImageRef, &Digest)> =
        names.iter().filter(|(n, _)| n.tag.is_some()).map(|(n, d)| (n, d)).collect();
    let mut by_repo: HashMap<Locator, Vec<(String, SystemTime)>> = HashMap::new();
    for f in files {
        let Some(at) = f.pulled else { continue };
        let reference = match &f.image.tag {
            Some(tag) if tagged.contains(&(&f.image, &f.manifest.digest)) => tag.to_string(),
            _ => f.manifest.digest.to_string(),
        };
        let loc = Locator { registry: f.image.registry.clone(), repo: f.image.repo.clone() };
        by_repo.entry(loc).or_default().push((reference, at));
    }
    for (loc, pulls) in by_repo {
        match store.record_pulls(&loc, &pulls) {
            Ok(()) => report.pulls += pulls.len(),
            Err(e) => warn!(repo = %loc, error = %e, "could not record the reference cache's pull times"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INDEX: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","size":10,"platform":{"os":"linux","architecture":"amd64"}}]}"#;
    /// A Docker manifest without its own mediaType (so `type` says what it is).
    const BARE: &str = r#"{"schemaVersion":2,"config":{"digest":"sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb","size":5},"layers":[]}"#;

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    /// A manifest file as the reference writes it.
    fn file(kind: i64, digest: &str, url: &str, bytes: &str) -> Vec<u8> {
        serde_json::json!({
            "type": kind,
            "digest": digest,
            "imageUrl": url,
            "bytes": bytes,
            "created": "2024-03-01T22:17:31",
            "pulled": "2024-03-02T08:00:00",
        })
        .to_string()
        .into_bytes()
    }

    fn hex(bytes: &[u8]) -> String {
        Digest::of(Algorithm::Sha256, bytes).hex().to_owned()
    }

    fn error(data: &[u8]) -> String {
        match parse_manifest_file(data) {
            Ok(f) => panic!("accepted a bad file as {}", f.manifest.digest),
            Err(e) => e,
        }
    }

    #[test]
    fn reads_a_manifest_file() {
        let data = file(2, &hex(INDEX.as_bytes()), "quay.io/org/repo:v1.2", &b64(INDEX.as_bytes()));
        let f = parse_manifest_file(&data).unwrap();
        assert_eq!(f.image.to_string(), "quay.io/org/repo:v1.2");
        assert_eq!(f.manifest.digest.hex(), hex(INDEX.as_bytes()));
        assert_eq!(f.manifest.bytes.as_ref(), INDEX.as_bytes(), "the exact bytes");
        assert_eq!(f.manifest.media_type, "application/vnd.oci.image.index.v1+json");
        let (created, pulled) = (f.created.unwrap(), f.pulled.unwrap());
        assert_eq!(pulled.duration_since(created).unwrap(), Duration::from_secs(9 * 3600 + 42 * 60 + 29));

        // By digest, with a `sha256:` prefix on its digest: accepted too.
        let d = Digest::of(Algorithm::Sha256, INDEX.as_bytes());
        let data = file(2, &d.to_string(), &format!("quay.io/org/repo@{d}"), &b64(INDEX.as_bytes()));
        let f = parse_manifest_file(&data).unwrap();
        assert_eq!((f.image.tag, f.image.digest), (None, Some(d)));
    }

    #[test]
    fn the_media_type_is_the_bytes_own_else_the_type() {
        // The bytes say OCI index; `type` 3 (OCI manifest) does not relabel them.
        let data = file(3, &hex(INDEX.as_bytes()), "r.test/a:b", &b64(INDEX.as_bytes()));
        assert_eq!(parse_manifest_file(&data).unwrap().manifest.media_type, TYPE_MEDIA_TYPES[2]);
        let data = file(1, &hex(BARE.as_bytes()), "r.test/a:b", &b64(BARE.as_bytes()));
        assert_eq!(parse_manifest_file(&data).unwrap().manifest.media_type, TYPE_MEDIA_TYPES[1]);
    }

    #[test]
    fn an_unknown_type_needs_the_bytes_to_say_what_they_are() {
        let e = error(&file(7, &hex(BARE.as_bytes()), "r.test/a:b", &b64(BARE.as_bytes())));
        assert!(e.contains("unknown type 7"), "{e}");
        let e = error(&file(-1, &hex(BARE.as_bytes()), "r.test/a:b", &b64(BARE.as_bytes())));
        assert!(e.contains("unknown type -1"), "{e}");
        let f = parse_manifest_file(&file(9, &hex(INDEX.as_bytes()), "r.test/a:b", &b64(INDEX.as_bytes())));
        assert_eq!(f.unwrap().manifest.media_type, TYPE_MEDIA_TYPES[2]);
    }

    #[test]
    fn bad_base64_is_refused() {
        let e = error(&file(2, &hex(INDEX.as_bytes()), "r.test/a:b", "not*base64!"));
        assert!(e.contains("not base64"), "{e}");
        // URL-safe base64 is not what Go writes.
        let url_safe = base64::engine::general_purpose::URL_SAFE.encode([0xfb, 0xff]);
        let e = error(&file(2, &hex(&[0xfb, 0xff]), "r.test/a:b", &url_safe));
        assert!(e.contains("not base64"), "{e}");
        let e = error(
            &serde_json::json!({"type": 2, "digest": hex(b"x"), "imageUrl": "r.test/a:b", "bytes": null})
                .to_string()
                .into_bytes(),
        );
        assert!(e.contains("no manifest bytes"), "{e}");
    }

    #[test]
    fn a_digest_mismatch_is_refused() {
        let e = error(&file(2, &hex(b"other bytes"), "r.test/a:b", &b64(INDEX.as_bytes())));
        assert!(e.contains("hash to") && e.contains(&hex(INDEX.as_bytes())), "{e}");
        let e = error(&file(2, "ABC", "r.test/a:b", &b64(INDEX.as_bytes())));
        assert!(e.contains("not a sha256 hex digest"), "{e}");
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        for (data, says) in [
            (b"this is not JSON\n".to_vec(), "not a reference manifest file"),
            (b"{\"type\":2}".to_vec(), "not a reference manifest file"),
            (file(2, &hex(b"[1,2]"), "r.test/a:b", &b64(b"[1,2]")), "not a manifest"),
            (file(2, &hex(INDEX.as_bytes()), "UPPER/Case:x", &b64(INDEX.as_bytes())), "imageUrl"),
        ] {
            let e = error(&data);
            assert!(e.contains(says), "{says}: {e}");
        }
    }

    #[test]
    fn times_are_local_wall_clock() {
        let a = local_time("2024-07-01T12:00:00").unwrap();
        let b = local_time("2024-07-01 12:00:01").unwrap();
        assert_eq!(b.duration_since(a).unwrap(), Duration::from_secs(1));
        assert_eq!(local_time("1970-01-01T00:00:00Z"), Some(UNIX_EPOCH));
        assert_eq!(local_time("yesterday"), None);
        assert_eq!(local_time("2024-13-01T00:00:00"), None);
    }

    #[test]
    fn scan_sorts_the_layout_from_what_is_not_in_it() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for sub in ["blobs", "img", "lts", "blobs/nested"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        std::fs::write(d.join("blobs").join(hex(b"blob")), b"blob").unwrap();
        std::fs::write(d.join("blobs/README"), b"x").unwrap();
        std::fs::write(d.join("img").join(hex(b"m")), b"{}").unwrap();
        std::fs::write(d.join("lts").join(hex(b"n")), b"{}").unwrap();
        std::fs::write(d.join("config.yaml"), b"").unwrap();
        let found = scan(d).unwrap();
        assert_eq!(found.blobs.len(), 1);
        assert_eq!((found.blobs[0].0.hex(), found.blobs[0].2), (hex(b"blob").as_str(), 4));
        assert_eq!(found.manifest_files.len(), 2);
        let unknown: Vec<String> = found.skipped.iter().map(|s| s.path.display().to_string()).collect();
        assert_eq!(unknown.len(), 3, "{unknown:?}");
        assert!(found.skipped.iter().all(|s| !s.corrupt));

        let empty = tempfile::tempdir().unwrap();
        let e = scan(empty.path()).unwrap_err().to_string();
        assert!(e.contains("not the reference server's cache directory"), "{e}");
    }

    #[test]
    fn a_tag_named_twice_goes_to_the_index_then_the_newest() {
        let child = Digest::parse(&format!("sha256:{}", "a".repeat(64))).unwrap();
        let mk = |bytes: &str, url: &str, created: u64| ManifestFile {
            image: ImageRef::parse(url).unwrap(),
            manifest: StoredManifest {
                digest: Digest::of(Algorithm::Sha256, bytes.as_bytes()),
                media_type: ManifestView::parse(bytes.as_bytes(), None).unwrap().media_type,
                bytes: Bytes::from(bytes.to_owned()),
            },
            created: Some(UNIX_EPOCH + Duration::from_secs(created)),
            pulled: None,
        };
        // The index's child, created later, claims the tag too; so does an old one.
        let mut child_file = mk(BARE, "r.test/a:v1", 30);
        child_file.manifest.digest = child.clone();
        let old = r#"{"schemaVersion":2,"layers":[]}"#;
        let mut files = vec![child_file, mk(INDEX, "r.test/a:v1", 20), mk(old, "r.test/a:v1", 10)];
        let mut report = ReferenceImport::default();
        let names = name_manifests(&mut files, &mut report);
        let tagged: Vec<&Digest> = names.iter().filter(|(n, _)| n.tag.is_some()).map(|(_, d)| d).collect();
        assert_eq!(tagged, vec![&Digest::of(Algorithm::Sha256, INDEX.as_bytes())], "{names:?}");
        assert_eq!(names.len(), 3, "the others are linked by digest: {names:?}");
        assert_eq!(report.notes.len(), 1, "{:?}", report.notes);
    }
}
