//! Moving from the Go reference server: its cache directory imported into
//! ours (`load --from-reference-cache DIR`), or converted in place when
//! `serve` finds it in its own `imagePath`.
//!
//! Nothing in it is trusted (the reference never verified what it wrote): a
//! blob is streamed into the store and committed only when its bytes hash to
//! its name, a manifest file is used only when its bytes hash to its
//! `digest` ([`layout`] reads the directory). What cannot be used is reported
//! and skipped; the rest is imported. Reading is synchronous;
//! [`Cache::import_reference_cache`] is the face.

mod layout;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context;
use tracing::{info, warn};

pub use layout::{Found, ManifestFile, SkippedFile, parse_manifest_file, scan};
use layout::{IMG_DIR, LTS_DIR, read_manifest_file};

use super::archive::{Counting, import_named_blob};
use super::manage::store_named;
use super::store::{Store, StoredManifest};
use super::{Cache, Inner, Locator, OnBytes, blocking};
use crate::oci::{Digest, ImageRef, ManifestKind, ManifestView};

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
