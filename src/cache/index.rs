//! What the cache holds, in memory: what each manifest is (not its body:
//! see `bodies`) and tags by (registry, repository, tag), read from the
//! cache directory in the background at start-up.
//!
//! Both maps are `DashMap`s (sharded locks): a hit takes one shard's read
//! lock for one lookup, never a global lock. Until the background load is
//! done ([`Index::is_loaded`]), a miss may be content not read yet, so
//! lookups first read their repository from the store (`read_ahead`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use dashmap::DashMap;
use tracing::warn;

use super::store::{Store, StoredManifest};
use crate::oci::{Digest, ManifestError, ManifestKind, ManifestView, RegistryHost, RepoName, Tag};

/// A cached manifest: what it is and what it points at. Its body (the exact
/// upstream bytes) stays in the store; fixed-size facts stay here.
#[derive(Debug)]
pub struct Manifest {
    pub digest: Digest,
    /// The type it is served with (one of a few: shared, not allocated per manifest).
    pub media_type: MediaType,
    /// The body's length.
    pub len: u64,
    /// An index (its references are manifests) or an image (config and layers).
    pub kind: ManifestKind,
    /// What it points at and the sizes its descriptors state, for links.
    pub references: Box<[(Digest, Option<u64>)]>,
}

/// A manifest's media type: the well-known ones as constants.
pub type MediaType = std::borrow::Cow<'static, str>;

fn media_type(s: String) -> MediaType {
    const KNOWN: &[&str] = &[
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
        "application/vnd.docker.distribution.manifest.v1+json",
    ];
    match KNOWN.iter().find(|k| **k == s) {
        Some(k) => MediaType::Borrowed(k),
        None => MediaType::Owned(s),
    }
}

impl Manifest {
    pub fn new(digest: Digest, view: ManifestView, len: u64) -> Manifest {
        let references = view.references.into_iter().map(|r| (r.digest, r.size)).collect();
        Manifest { digest, media_type: media_type(view.media_type), len, kind: view.kind, references }
    }

    /// What the store holds, served with the type it was stored with (even
    /// when this version would have chosen another).
    pub fn from_stored(m: &StoredManifest) -> Result<Manifest, ManifestError> {
        let view = ManifestView::parse(&m.bytes, Some(&m.media_type))?;
        let len = m.bytes.len() as u64;
        Ok(Manifest {
            media_type: media_type(m.media_type.clone()),
            ..Manifest::new(m.digest.clone(), view, len)
        })
    }
}

/// Where a tag pointed when it was last fetched or re-checked upstream.
#[derive(Debug, Clone)]
pub struct TagEntry {
    pub digest: Digest,
    /// Last confirmed upstream (persisted as the tag file's mtime).
    pub checked: SystemTime,
}

#[derive(Default)]
pub struct Index {
    manifests: DashMap<Digest, Arc<Manifest>>,
    /// Keyed `registry/repo:tag`.
    tags: DashMap<String, TagEntry>,
    /// Whether everything in the store has been read (see the module's comment).
    loaded: AtomicBool,
}

/// What start-up found on disk.
#[derive(Debug, Default, Clone, Copy)]
pub struct LoadReport {
    pub manifests: usize,
    pub tags: usize,
    pub blobs: usize,
    pub blob_bytes: u64,
    pub skipped: usize,
}

fn tag_key(registry: &RegistryHost, repo: &RepoName, tag: &Tag) -> String {
    format!("{registry}/{repo}:{tag}")
}

impl Index {
    pub fn manifest(&self, d: &Digest) -> Option<Arc<Manifest>> {
        self.manifests.get(d).map(|m| m.clone())
    }

    pub fn tag(&self, registry: &RegistryHost, repo: &RepoName, tag: &Tag) -> Option<TagEntry> {
        self.tags.get(&tag_key(registry, repo, tag)).map(|e| e.clone())
    }

    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    pub fn set_loaded(&self) {
        self.loaded.store(true, Ordering::Release);
    }

    /// How many manifests, and their bytes (a scan: for metrics scrapes).
    pub fn manifest_totals(&self) -> (usize, u64) {
        let bytes = self.manifests.iter().map(|m| m.len).sum();
        (self.manifests.len(), bytes)
    }

    /// The cached tags of one repository, sorted (a scan: only for
    /// `tags/list` when the upstream cannot answer).
    pub fn tags_of(&self, registry: &RegistryHost, repo: &RepoName) -> Vec<String> {
        let prefix = format!("{registry}/{repo}:");
        let mut tags: Vec<String> =
            self.tags.iter().filter_map(|e| e.key().strip_prefix(&prefix).map(str::to_owned)).collect();
        tags.sort();
        tags
    }

    /// Forgets a manifest whose body turned out unreadable.
    pub fn remove_manifest(&self, d: &Digest) {
        self.manifests.remove(d);
    }

    /// Adds a manifest unless one with its digest is cached: a cached
    /// manifest is never replaced. Returns the one now in the index.
    pub fn insert_manifest(&self, m: Arc<Manifest>) -> Arc<Manifest> {
        self.manifests.entry(m.digest.clone()).or_insert(m).clone()
    }

    /// Every tag's (registry, repository, digest) (a scan: at start-up).
    pub fn tagged(&self) -> Vec<(RegistryHost, RepoName, Digest)> {
        self.tags
            .iter()
            .filter_map(|e| {
                let (name, _tag) = e.key().rsplit_once(':')?;
                let (registry, repo) = name.split_once('/')?;
                let registry = RegistryHost::parse(registry).ok()?;
                Some((registry, RepoName::parse(repo).ok()?, e.value().digest.clone()))
            })
            .collect()
    }

    pub fn insert_tag(&self, registry: &RegistryHost, repo: &RepoName, tag: &Tag, entry: TagEntry) {
        self.tags.insert(tag_key(registry, repo, tag), entry);
    }

    /// A tag read from the store, unless this process knows it already (its
    /// own entry is at least as new: it writes the store first).
    pub fn insert_tag_if_absent(&self, registry: &RegistryHost, repo: &RepoName, tag: &Tag, entry: TagEntry) {
        self.tags.entry(tag_key(registry, repo, tag)).or_insert(entry);
    }

    /// Makes this index what `fresh` (loaded from the store from `since` on)
    /// says, without forgetting what was cached while it was read: a tag
    /// confirmed since stays, a manifest still `on_disk` stays.
    pub fn sync_from(&self, fresh: Index, since: SystemTime, on_disk: impl Fn(&Digest) -> bool) {
        self.manifests.retain(|d, _| fresh.manifests.contains_key(d) || on_disk(d));
        for (d, m) in fresh.manifests {
            self.manifests.entry(d).or_insert(m);
        }
        self.tags.retain(|k, e| fresh.tags.contains_key(k) || e.checked >= since);
        for (k, e) in fresh.tags {
            self.tags.insert(k, e);
        }
    }

    /// Rebuilds the index from the store. An entry that fails to parse or
    /// verify is reported and skipped; it never stops the load.
    pub fn load(store: &dyn Store) -> (Index, LoadReport) {
        let index = Index::default();
        let mut report = LoadReport::default();
        for m in store.manifests() {
            let parsed = m
                .map_err(|s| (s.what, s.why))
                .and_then(|m| Manifest::from_stored(&m).map_err(|e| (m.digest.to_string(), e.to_string())));
            match parsed {
                Ok(m) => {
                    index.insert_manifest(Arc::new(m));
                    report.manifests += 1;
                }
                Err((what, why)) => {
                    warn!(file = %what, error = %why, "skipping unreadable cached manifest");
                    report.skipped += 1;
                }
            }
        }
        for t in store.tags() {
            match t {
                Ok(t) if index.manifests.contains_key(&t.digest) => {
                    index.insert_tag(
                        &t.registry,
                        &t.repo,
                        &t.tag,
                        TagEntry { digest: t.digest, checked: t.checked },
                    );
                    report.tags += 1;
                }
                Ok(t) => {
                    warn!(repo = %format!("{}/{}", t.registry, t.repo), tag = %t.tag, digest = %t.digest, "skipping cached tag whose manifest is missing");
                    report.skipped += 1;
                }
                Err(s) => {
                    warn!(file = %s.what, error = %s.why, "skipping unreadable cached tag");
                    report.skipped += 1;
                }
            }
        }
        for (_, len) in store.blobs() {
            report.blobs += 1;
            report.blob_bytes += len;
        }
        (index, report)
    }
}
