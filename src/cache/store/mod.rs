//! The storage seam: what a backend must do to hold the cache's persistent
//! state. The cache above it decides *what* is true (verified digests,
//! single flights, links); a backend only keeps it.
//!
//! Shaped so an object store can implement it without contortions:
//! - a blob is written to a [`Partial`]: a local, random-access file (an
//!   object store stages there too, then uploads), exclusive while held (a
//!   `flock` here, a lease object there), resumable after a crash;
//! - [`Store::commit_blob`] makes it visible only whole, and never replaces
//!   what is there (a rename here, a conditional create there);
//! - manifests are written once, tags and links are small whole objects or
//!   appends, and everything can be listed, in full (the index, built in the
//!   background at start-up) or for one repository (lookups before that).
//!
//! [`fs::FsStore`] is the directory layout of `imagePath` (`layout.rs`);
//! [`s3::S3Store`] the same layout as keys in an S3-compatible bucket
//! (`s3/keys.rs`). Every backend runs the same test suite (`suite.rs`).

pub mod fs;
pub(crate) mod layout;
mod nowait;
pub mod s3;
#[cfg(test)]
mod suite;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;

use super::Locator;
use crate::oci::{Digest, RegistryHost, RepoName, Tag};

/// Reading a committed blob at any offset, by any number of readers at once.
pub trait ReadAt: Send + Sync {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> std::io::Result<usize>;

    /// `len` bytes at `pos` without copying them (a memory map), when the
    /// backend can; `None` sends readers to [`ReadAt::read_at`].
    fn map(&self, _pos: u64, _len: usize) -> Option<std::io::Result<Bytes>> {
        None
    }
}

impl ReadAt for File {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> std::io::Result<usize> {
        FileExt::read_at(self, buf, pos)
    }
}

/// A blob being written: local, random-access, exclusive to its writer.
pub struct Partial {
    pub file: Arc<File>,
    /// Bytes an interrupted download left, to re-hash and resume from.
    pub adopted: u64,
    /// Where it lives, for the backend (and messages).
    pub path: std::path::PathBuf,
}

/// Who downloads a blob, among every process sharing the store.
pub enum Claim {
    /// This process: fetch it from the upstream. The claim holds while the
    /// guard lives (renewed in the background) and is given up when dropped.
    Ours(Box<dyn Send + Sync>),
    /// Another replica is fetching it: stream from its peer address while it
    /// does (when it has one), else wait for it in the store.
    Elsewhere { peer: Option<String> },
}

/// What a commit found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    Created,
    /// Another writer committed the same digest first; ours was dropped.
    AlreadyThere,
}

/// A backend that did not answer (a bucket unreachable, its server failing):
/// worth a retry, unlike a bug or a full disk. Carried inside an `io::Error`.
#[derive(Debug)]
pub struct Unavailable(pub String);

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unavailable {}

/// Whether `e` says the backend did not answer (see [`Unavailable`]).
pub fn is_unavailable(e: &std::io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<Unavailable>())
}

/// Where the cache's content lives (`storage`).
#[derive(Debug, Clone, Default)]
pub enum Backend {
    /// The `imagePath` directory.
    #[default]
    Fs,
    /// An S3-compatible bucket; `imagePath` stages downloads.
    S3(Box<s3::S3Settings>),
}

/// Opens the configured backend; `local` is `imagePath`.
pub fn open(backend: &Backend, local: &std::path::Path) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match backend {
        Backend::Fs => Arc::new(fs::FsStore::new(local)),
        Backend::S3(settings) => Arc::new(s3::S3Store::new(settings, local)?),
    })
}

/// A stored manifest's bytes: `<media type>\n` and the manifest, which must
/// match `digest` (the same in every backend).
fn parse_manifest(raw: Bytes, digest: &Digest) -> Result<StoredManifest, String> {
    let newline = raw.iter().position(|b| *b == b'\n').ok_or("no media type line")?;
    let media_type = std::str::from_utf8(&raw[..newline]).map_err(|e| e.to_string())?.to_owned();
    let bytes = raw.slice(newline + 1..);
    let actual = Digest::of(digest.algorithm(), &bytes);
    if actual != *digest {
        return Err(format!("content digest is {actual}"));
    }
    Ok(StoredManifest { digest: digest.clone(), media_type, bytes })
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// What [`parse_manifest`] reads back.
fn manifest_bytes(m: &StoredManifest) -> Vec<u8> {
    let mut raw = Vec::with_capacity(m.media_type.len() + 1 + m.bytes.len());
    raw.extend_from_slice(m.media_type.as_bytes());
    raw.push(b'\n');
    raw.extend_from_slice(&m.bytes);
    raw
}

/// A manifest as stored: the exact upstream bytes and the type it is served with.
pub struct StoredManifest {
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Bytes,
}

pub struct StoredTag {
    pub registry: RegistryHost,
    pub repo: RepoName,
    pub tag: Tag,
    pub digest: Digest,
    /// When the tag was last confirmed upstream.
    pub checked: SystemTime,
}

/// An entry a listing could not read, and why (for the operator's log).
#[derive(Debug, Clone)]
pub struct Skipped {
    pub what: String,
    pub why: String,
    /// The digest it claims to be, when it names one (so `verify` can quarantine it).
    pub digest: Option<Digest>,
}

pub type Listing<T> = Vec<Result<T, Skipped>>;

pub trait Store: Send + Sync + 'static {
    /// Makes the store ready: creates what is missing, checks it can write,
    /// sweeps what a crash left behind.
    fn prepare(&self) -> anyhow::Result<()>;

    /// A committed blob and its length, `None` if there is none.
    fn open_blob(&self, d: &Digest) -> std::io::Result<Option<(Arc<dyn ReadAt>, u64)>>;
    fn blob_len(&self, d: &Digest) -> std::io::Result<Option<u64>>;
    /// A committed blob of at most `max` bytes, read whole, only if that
    /// cannot wait on storage: called on an async worker thread. `None`
    /// (the default) sends the caller to [`Store::open_blob`] on the blocking pool.
    fn read_small_now(&self, _d: &Digest, _max: u64) -> Option<(Arc<dyn ReadAt>, Bytes)> {
        None
    }
    /// Starts writing `d`, adopting what an interrupted download left when it
    /// can; `None` when `d` is already committed.
    fn begin_blob(&self, d: &Digest) -> std::io::Result<Option<Partial>>;
    /// Whether another writer (another process sharing the store) is
    /// downloading `d` right now.
    fn downloading_elsewhere(&self, d: &Digest) -> bool;
    /// Starts writing a blob whose digest is known only once written
    /// (an archive's unnamed layer); commit it under the digest computed.
    fn begin_anonymous(&self) -> std::io::Result<Partial>;
    /// Makes a verified partial visible as `d`, durably, unless `d` is
    /// already there (then the partial is dropped).
    fn commit_blob(&self, p: &Partial, d: &Digest, len: u64) -> std::io::Result<Committed>;
    /// Gives up a partial; `keep` leaves it to be resumed by a later start.
    fn abandon_blob(&self, p: &Partial, keep: bool);
    /// Moves a corrupt blob out of the way, kept for inspection.
    fn quarantine_blob(&self, d: &Digest) -> std::io::Result<()>;
    fn remove_blob(&self, d: &Digest) -> std::io::Result<()>;
    /// Every committed blob and its length.
    fn blobs(&self) -> Vec<(Digest, u64)>;
    /// When the blob was committed (pruning spares blobs younger than a grace period).
    fn blob_stored_at(&self, d: &Digest) -> Option<SystemTime>;

    /// Stores a manifest unless one with its digest is there.
    fn put_manifest(&self, m: &StoredManifest) -> std::io::Result<()>;
    /// Every stored manifest whose bytes match its digest.
    fn manifests(&self) -> Listing<StoredManifest>;
    /// One stored manifest, checked against its digest; `Ok(None)` if absent.
    fn manifest(&self, d: &Digest) -> Result<Option<StoredManifest>, Skipped>;
    fn quarantine_manifest(&self, d: &Digest) -> std::io::Result<()>;
    fn remove_manifest(&self, d: &Digest) -> std::io::Result<()>;
    /// When the manifest entered the cache.
    fn manifest_stored_at(&self, d: &Digest) -> Option<SystemTime>;

    fn put_tag(&self, registry: &RegistryHost, repo: &RepoName, tag: &Tag, d: &Digest)
    -> std::io::Result<()>;
    /// Records that the tag was confirmed upstream at `at`.
    fn touch_tag(
        &self,
        registry: &RegistryHost,
        repo: &RepoName,
        tag: &Tag,
        at: SystemTime,
    ) -> std::io::Result<()>;
    fn tags(&self) -> Listing<StoredTag>;
    /// The tags of one repository (what a lookup needs before the whole index is read).
    fn repo_tags(&self, loc: &Locator) -> Listing<StoredTag>;
    fn remove_tag(&self, registry: &RegistryHost, repo: &RepoName, tag: &Tag) -> std::io::Result<()>;

    /// Appends links of a repository (see `links.rs`).
    fn add_links(&self, loc: &Locator, entries: &[(Digest, Option<u64>)]) -> std::io::Result<()>;
    fn links(&self) -> Listing<(Locator, Digest, Option<u64>)>;
    /// The root links of one repository.
    fn repo_links(&self, loc: &Locator) -> Listing<(Digest, Option<u64>)>;
    /// Drops these root links of a repository (pruning), keeping any added meanwhile.
    fn unlink(&self, loc: &Locator, digests: &[Digest]) -> std::io::Result<()>;

    /// Records when a repository's references (tags or digests) were last
    /// pulled; a later time wins over an earlier one.
    fn record_pulls(&self, loc: &Locator, pulls: &[(String, SystemTime)]) -> std::io::Result<()>;
    /// Every recorded pull time, the latest per (repository, reference).
    fn pulls(&self) -> Listing<(Locator, String, SystemTime)>;
    /// Forgets the pull times of references that were pruned.
    fn forget_pulls(&self, loc: &Locator, references: &[String]) -> std::io::Result<()>;

    /// Held while an archive is imported: its blobs are committed before its
    /// manifests, so until they are, no prune (in any process) removes blobs.
    fn hold_blobs(&self) -> std::io::Result<Box<dyn Send>>;
    /// Whether an import holds the blobs now.
    fn blobs_held(&self) -> bool;

    /// Globs pinned at run time (admin API), beside the configured ones.
    fn pins(&self) -> Vec<String>;
    fn set_pins(&self, pins: &[String]) -> std::io::Result<()>;

    /// Changes whenever content is added or removed by a command working on
    /// the store beside a running server (`load`, `prune`), so the server
    /// can pick the change up.
    fn generation(&self) -> u64;
    fn bump_generation(&self) -> std::io::Result<()>;
    /// Removes what downloads left behind and no download holds now:
    /// resumable partials untouched for a week, other temp files for an
    /// hour. Returns how many and their bytes.
    fn sweep_partials(&self) -> (usize, u64);

    /// Claims the download of `d`. `take_over`: even from a live holder
    /// (whose peer stopped answering). Only a store shared by replicas has
    /// anyone to share with: the others fetch what they are asked for.
    fn claim_fill(&self, _d: &Digest, _take_over: bool) -> std::io::Result<Claim> {
        Ok(Claim::Ours(Box::new(())))
    }

    /// Claims the right to prune (evict, remove images) among every process
    /// sharing the store, held while the guard lives; `None`: another is
    /// pruning now. Only a store shared by replicas needs one.
    fn claim_pruning(&self) -> std::io::Result<Option<Box<dyn Send + Sync>>> {
        Ok(Some(Box::new(())))
    }

    /// A URL the client can fetch the committed blob `d` from itself (a
    /// presigned bucket URL), when the backend is set to redirect.
    fn blob_url(&self, _d: &Digest) -> std::io::Result<Option<String>> {
        Ok(None)
    }

    /// Stores a blob whose bytes are in memory and known to match `d`.
    fn put_blob(&self, d: &Digest, bytes: &[u8]) -> std::io::Result<()> {
        let Some(p) = self.begin_blob(d)? else { return Ok(()) };
        let written = p.file.set_len(0).and_then(|()| p.file.write_all_at(bytes, 0));
        match written.and_then(|()| self.commit_blob(&p, d, bytes.len() as u64)) {
            Ok(_) => Ok(()),
            Err(e) => {
                self.abandon_blob(&p, false);
                Err(e)
            }
        }
    }
}
