//! What the cache holds, in memory: manifests by digest and tags by
//! (registry, repository, tag), rebuilt from the cache directory at start-up.
//!
//! Both maps are `DashMap`s (sharded locks): a hit takes one shard's read
//! lock for one lookup, never a global lock. Manifests are kept whole in
//! memory (they are small, at most 4 MiB and usually a few KiB) so a manifest
//! hit does no I/O at all.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use dashmap::DashMap;
use tracing::warn;

use super::store::{Store, StoredManifest};
use crate::oci::{Digest, ManifestReference, ManifestView, RegistryHost, RepoName, Tag};

/// A cached manifest: the exact upstream bytes and the media type they are served with.
#[derive(Debug)]
pub struct Manifest {
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Bytes,
    /// What it points at, for links.
    pub references: Vec<ManifestReference>,
}

impl Manifest {
    pub fn new(digest: Digest, view: ManifestView, bytes: Bytes) -> Manifest {
        Manifest { digest, media_type: view.media_type, bytes, references: view.references }
    }

    /// What the store keeps of it.
    pub fn stored(&self) -> StoredManifest {
        StoredManifest {
            digest: self.digest.clone(),
            media_type: self.media_type.clone(),
            bytes: self.bytes.clone(),
        }
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

    /// How many manifests, and their bytes (a scan: for metrics scrapes).
    pub fn manifest_totals(&self) -> (usize, u64) {
        let bytes = self.manifests.iter().map(|m| m.bytes.len() as u64).sum();
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
            let parsed = m.map_err(|s| (s.what, s.why)).and_then(|m| {
                let view = ManifestView::parse(&m.bytes, Some(&m.media_type))
                    .map_err(|e| (m.digest.to_string(), e.to_string()))?;
                // Served with the type it was stored with, even by a version that chose differently.
                Ok(Manifest { media_type: m.media_type, ..Manifest::new(m.digest, view, m.bytes) })
            });
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
