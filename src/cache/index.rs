//! What the cache holds, in memory: manifests by digest and tags by
//! (registry, repository, tag), rebuilt from the cache directory at start-up.
//!
//! Both maps are `DashMap`s (sharded locks): a hit takes one shard's read
//! lock for one lookup, never a global lock. Manifests are kept whole in
//! memory (they are small, at most 4 MiB and usually a few KiB) so a manifest
//! hit does no I/O at all.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use dashmap::DashMap;
use tracing::warn;

use super::Error;
use super::fill::publish_file;
use super::layout::{Layout, TAGS_DIR};
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

    /// Rebuilds the index from disk. A file that fails to parse or verify is
    /// reported and skipped; it never stops the load.
    pub fn load(layout: &Layout) -> (Index, LoadReport) {
        let index = Index::default();
        let mut report = LoadReport::default();

        for path in files_under(&layout.manifests()) {
            match read_manifest(&path) {
                Ok(m) => {
                    index.insert_manifest(Arc::new(m));
                    report.manifests += 1;
                }
                Err(e) => {
                    warn!(file = %path.display(), error = %e, "skipping unreadable cached manifest");
                    report.skipped += 1;
                }
            }
        }
        let tags_root = layout.tags();
        for path in files_under(&tags_root) {
            match read_tag(&tags_root, &path) {
                Ok((registry, repo, tag, entry)) if index.manifests.contains_key(&entry.digest) => {
                    index.insert_tag(&registry, &repo, &tag, entry);
                    report.tags += 1;
                }
                Ok((.., entry)) => {
                    let digest = entry.digest;
                    warn!(file = %path.display(), %digest, "skipping cached tag whose manifest is missing");
                    report.skipped += 1;
                }
                Err(e) => {
                    warn!(file = %path.display(), error = %e, "skipping unreadable cached tag");
                    report.skipped += 1;
                }
            }
        }
        for blob in files_under(&layout.blobs()) {
            report.blobs += 1;
            report.blob_bytes += std::fs::metadata(&blob).map_or(0, |m| m.len());
        }
        (index, report)
    }
}

fn files_under(dir: &Path) -> impl Iterator<Item = std::path::PathBuf> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(|e| match e {
            Ok(e) => Some(e),
            Err(err) => {
                if err.io_error().is_none_or(|io| io.kind() != std::io::ErrorKind::NotFound) {
                    warn!(error = %err, "skipping unreadable cache entry");
                }
                None
            }
        })
        .filter(|e| e.file_type().is_file())
        .map(|e| e.into_path())
}

fn read_manifest(path: &Path) -> Result<Manifest, String> {
    let name = path.file_name().and_then(|n| n.to_str()).ok_or("bad file name")?;
    let alg = path.parent().and_then(Path::parent).and_then(Path::file_name).and_then(|n| n.to_str());
    let digest = Digest::parse(&format!("{}:{name}", alg.unwrap_or(""))).map_err(|e| e.to_string())?;
    let raw = std::fs::read(path).map_err(|e| e.to_string())?;
    let newline = raw.iter().position(|b| *b == b'\n').ok_or("no media type line")?;
    let media_type = std::str::from_utf8(&raw[..newline]).map_err(|e| e.to_string())?.to_owned();
    let bytes = Bytes::from(raw).slice(newline + 1..);
    let actual = Digest::of(digest.algorithm(), &bytes);
    if actual != digest {
        return Err(format!("content digest is {actual}"));
    }
    let view = ManifestView::parse(&bytes, Some(&media_type)).map_err(|e| e.to_string())?;
    // Served with the type it was stored with, even by a version that chose differently.
    Ok(Manifest { media_type, ..Manifest::new(digest, view, bytes) })
}

fn read_tag(root: &Path, path: &Path) -> Result<(RegistryHost, RepoName, Tag, TagEntry), String> {
    let rel = path.strip_prefix(root).map_err(|e| e.to_string())?;
    let parts: Vec<&str> =
        rel.iter().map(|p| p.to_str().ok_or("non-UTF-8 path")).collect::<Result<_, _>>()?;
    let [registry, repo @ .., marker, tag] = parts.as_slice() else {
        return Err("not a tag file".into());
    };
    if *marker != TAGS_DIR || repo.is_empty() {
        return Err("not a tag file".into());
    }
    let registry = RegistryHost::parse(registry).map_err(|e| e.to_string())?;
    let repo = RepoName::parse(&repo.join("/")).map_err(|e| e.to_string())?;
    let tag = Tag::parse(tag).map_err(|e| e.to_string())?;
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let digest = Digest::parse(text.trim()).map_err(|e| e.to_string())?;
    let checked = std::fs::metadata(path).and_then(|m| m.modified()).map_err(|e| e.to_string())?;
    Ok((registry, repo, tag, TagEntry { digest, checked }))
}

/// Writes `contents` to `target` through a temp file and a rename.
fn write_atomically(layout: &Layout, target: &Path, contents: &[&[u8]]) -> Result<(), Error> {
    let temp = layout.temp_file("meta");
    let write = || -> std::io::Result<std::fs::File> {
        let mut f = std::fs::File::create(&temp)?;
        for c in contents {
            f.write_all(c)?;
        }
        Ok(f)
    };
    let result = write()
        .map_err(|e| Error::io(format!("writing {}", temp.display()), e))
        .and_then(|f| publish_file(&f, &temp, target));
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

/// Writes a blob whose bytes are already in memory (and known to match `d`).
pub fn store_blob(layout: &Layout, d: &Digest, bytes: &[u8]) -> Result<(), Error> {
    let target = layout.blob(d);
    if target.exists() {
        return Ok(());
    }
    write_atomically(layout, &target, &[bytes])
}

pub fn store_manifest(layout: &Layout, m: &Manifest) -> Result<(), Error> {
    let header = format!("{}\n", m.media_type);
    write_atomically(layout, &layout.manifest(&m.digest), &[header.as_bytes(), &m.bytes])
}

/// Records that the tag was confirmed upstream now (its file's mtime).
pub fn touch_tag(layout: &Layout, registry: &RegistryHost, repo: &RepoName, tag: &Tag, at: SystemTime) {
    let path = layout.tag(registry, repo, tag);
    if let Err(e) = std::fs::File::options().write(true).open(&path).and_then(|f| f.set_modified(at)) {
        warn!(file = %path.display(), error = %e, "could not record the tag's re-check time");
    }
}

pub fn store_tag(
    layout: &Layout,
    registry: &RegistryHost,
    repo: &RepoName,
    tag: &Tag,
    d: &Digest,
) -> Result<(), Error> {
    write_atomically(layout, &layout.tag(registry, repo, tag), &[d.to_string().as_bytes()])
}
