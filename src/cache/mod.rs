//! The store and its policies: the one face the HTTP handlers call.
//!
//! Content-addressed blobs and manifests, a tag index, verify-before-commit
//! through `tmp/` and a rename, and single-flight fills streamed to every
//! waiting client. On a miss it asks [`crate::upstream`]; it knows nothing of HTTP.
//!
//! - this file: the face ([`Cache`]), its settings and the types it answers with;
//! - `manifests`: fetching, verifying, storing manifests; tag re-checks;
//! - `blobs`: hits, upstream checks and joining or starting fills;
//! - `download`: the download loop behind a fill (resume, back-off);
//! - `fill`, `reader`, `flight`: the single-flight machinery;
//! - `shared`: fills shared by replicas on one bucket (one upstream fetch across them);
//! - `index`, `links`: what is cached and what may be served for which repository;
//! - `bodies`: manifest bodies, on disk with a bounded memory cache;
//! - `read_ahead`: lookups served before the index is loaded;
//! - `store`: the storage seam (what a backend must do) and the filesystem backend;
//! - [`verify`]: re-hashing what is on disk; [`policy`]: tag freshness;
//! - [`reference_cache`]: importing the Go reference server's cache directory.

pub mod archive;
mod blobs;
mod bodies;
pub mod capacity;
pub mod catalog;
mod download;
mod error;
mod fill;
mod flight;
mod index;
mod links;
mod manage;
mod manifests;
pub mod policy;
pub mod prune;
mod pulls;
mod read_ahead;
mod reader;
pub mod reference_cache;
mod shared;
pub mod store;
pub mod verify;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use bytes::Bytes;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

pub use error::Error;
pub use index::{LoadReport, Manifest};
pub use manage::{Imported, LoadProgress, OnBytes, Preloaded};
pub use reader::BlobReader;
pub use store::Store;
pub use store::fs::FsStore;

use bodies::Bodies;
use fill::Fills;
use flight::Flights;
use index::{Index, TagEntry};
use links::Links;
use policy::{Revalidate, TagPolicy};
use pulls::Pulls;
use read_ahead::ReadAhead;

use crate::metrics::Metrics;
use crate::oci::{Digest, ManifestView, Reference, RegistryHost, RepoName, Tag};
use crate::upstream::{ErrorKind, Upstreams};

/// How a request was answered; the same words in logs and (later) metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Served from the cache.
    Hit,
    /// Fetched from the upstream by this request.
    Miss,
    /// Followed a fetch another request had already started.
    Joined,
    /// Answered by asking the upstream without caching (blob HEAD, tag list).
    Passthrough,
    /// A cached tag re-checked upstream and found unchanged.
    Revalidated,
    /// A cached tag served because its re-check failed (stale-if-error), or
    /// a tag list answered from the cache because the upstream could not.
    Stale,
}

impl CacheOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheOutcome::Hit => "hit",
            CacheOutcome::Miss => "miss",
            CacheOutcome::Joined => "joined",
            CacheOutcome::Passthrough => "passthrough",
            CacheOutcome::Revalidated => "revalidated",
            CacheOutcome::Stale => "stale",
        }
    }
}

/// What the cache is built from: plain data, filled in by `main`.
pub struct Settings {
    /// The cache directory.
    pub root: std::path::PathBuf,
    pub tag_policy: TagPolicy,
    pub revalidate: Revalidate,
    /// Downloads allowed to go on after every client that asked has gone.
    pub max_background_fills: usize,
    /// How often a broken blob download is resumed before it is given up.
    pub resume_attempts: u32,
    /// `cacheSize`, `minFreeDisk`, `pinned`.
    pub capacity: capacity::Capacity,
    /// `pruneConfig`, when enabled.
    pub prune: Option<capacity::PruneSchedule>,
    /// `manifestCacheBytes`: manifest bodies held in memory.
    pub manifest_cache_bytes: u64,
    /// `storage`: the directory at `root`, or a bucket (downloads staged in `root`).
    pub backend: store::Backend,
}

/// An image put in the cache as if pulled (`serve --hello-world`).
pub struct Seed {
    pub registry: RegistryHost,
    pub repo: RepoName,
    pub tag: Tag,
    pub blobs: Vec<(Digest, Vec<u8>)>,
    pub manifest: Vec<u8>,
    pub media_type: &'static str,
}

/// A repository at a registry: where a request's content comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Locator {
    pub registry: RegistryHost,
    pub repo: RepoName,
}

impl std::fmt::Display for Locator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.registry, self.repo)
    }
}

/// A blob ready to be served: its size (when known yet) and a reader.
pub struct Blob {
    pub size: Option<u64>,
    pub outcome: CacheOutcome,
    pub reader: BlobReader,
}

type ManifestResult = Result<(Arc<Manifest>, CacheOutcome), Error>;

/// Cheap to clone: a handle on the shared store.
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

struct Inner {
    root: std::path::PathBuf,
    store: Arc<dyn Store>,
    index: Index,
    bodies: Bodies,
    read_ahead: ReadAhead,
    links: Links,
    pulls: Pulls,
    upstreams: Upstreams,
    fills: Arc<Fills>,
    /// Manifest fetches and tag re-checks in flight, by `registry/repo@reference`.
    flights: Arc<Flights<String, ManifestResult>>,
    tag_policy: TagPolicy,
    revalidate: Revalidate,
    resume_attempts: u32,
    max_background_fills: usize,
    metrics: Arc<Metrics>,
    /// Downloads that go on after all their clients left.
    background_fills: Arc<Semaphore>,
    /// Replicas share the store (a bucket): fills take a lease, and those
    /// of other replicas are streamed from their peer port when it is set.
    sharing: Option<Option<Arc<shared::PeerLink>>>,
    /// `storage.s3.redirect`: cached blobs are fetched by clients from the bucket.
    redirects: bool,
    /// Blobs on disk: counted by the index load, added to on each commit.
    blob_count: AtomicU64,
    blob_bytes: AtomicU64,
    capacity: capacity::Capacity,
    prune: Option<capacity::PruneSchedule>,
    /// One eviction at a time.
    evicting: tokio::sync::Mutex<()>,
    /// Bytes downloads in progress have been promised (see `capacity`).
    reserved: AtomicU64,
    /// Over the limits with nothing to evict (said once, not every second).
    stuck: std::sync::atomic::AtomicBool,
    /// Pinned through the admin API.
    pins: std::sync::RwLock<capacity::Pinned>,
    /// The store's generation as this process last saw or made it.
    generation: AtomicU64,
    /// What the cluster runs (`pinRunningImages`); `None` until first known.
    running: std::sync::RwLock<Option<capacity::Running>>,
}

/// What the cache holds right now, for metrics.
#[derive(Debug, Clone, Copy)]
pub struct CacheStats {
    pub manifests: usize,
    pub manifest_bytes: u64,
    pub blobs: u64,
    pub blob_bytes: u64,
    pub fills_in_flight: usize,
}

impl Cache {
    /// Opens (creating if needed) the cache at `settings.root`. It serves at
    /// once; [`Cache::load_index`] reads the whole index (until then each
    /// repository is read on its first lookup).
    pub async fn open(
        settings: Settings,
        upstreams: Upstreams,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Cache> {
        let store = store::open(&settings.backend, &settings.root)?;
        let sharing = match &settings.backend {
            store::Backend::Fs => None,
            store::Backend::S3(s3) => {
                Some(s3.peers.as_ref().map(|p| shared::PeerLink::new(&p.token).map(Arc::new)).transpose()?)
            }
        };
        let s = store.clone();
        let pins = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            s.prepare()?;
            Ok(capacity::Pinned::new(&s.pins()).unwrap_or_else(|e| {
                warn!(error = %e, "ignoring the pins saved in the cache directory");
                capacity::Pinned::default()
            }))
        })
        .await??;
        let inner = Inner {
            root: settings.root.clone(),
            capacity: settings.capacity,
            prune: settings.prune,
            evicting: tokio::sync::Mutex::new(()),
            reserved: AtomicU64::new(0),
            stuck: std::sync::atomic::AtomicBool::new(false),
            pins: std::sync::RwLock::new(pins),
            running: std::sync::RwLock::default(),
            generation: AtomicU64::new(store.generation()),
            fills: Arc::new(Fills::new(store.clone())),
            store,
            index: Index::default(),
            bodies: Bodies::new(settings.manifest_cache_bytes),
            read_ahead: ReadAhead::default(),
            links: Links::default(),
            pulls: Pulls::default(),
            upstreams,
            flights: Arc::default(),
            tag_policy: settings.tag_policy,
            revalidate: settings.revalidate,
            resume_attempts: settings.resume_attempts,
            max_background_fills: settings.max_background_fills,
            metrics,
            background_fills: Arc::new(Semaphore::new(settings.max_background_fills)),
            sharing,
            redirects: matches!(&settings.backend, store::Backend::S3(s) if s.redirect),
            blob_count: AtomicU64::new(0),
            blob_bytes: AtomicU64::new(0),
        };
        Ok(Cache { inner: Arc::new(inner) })
    }

    /// Reads the whole index from the store (what start-up used to wait
    /// for), keeping whatever was cached or read ahead meanwhile.
    pub async fn load_index(&self) -> Result<LoadReport, Error> {
        let report = self.reload().await?;
        self.inner.index.set_loaded();
        self.inner.read_ahead.forget();
        Ok(report)
    }

    /// Puts a built-in image (`--hello-world`) into the cache as if pulled.
    pub async fn install(&self, img: Seed) -> Result<(), Error> {
        let inner = self.inner.clone();
        let digest = Digest::of(crate::oci::Algorithm::Sha256, &img.manifest);
        let view = ManifestView::parse(&img.manifest, Some(img.media_type))
            .map_err(|source| Error::InvalidManifest { registry: img.registry.clone(), source })?;
        let manifest = Arc::new(Manifest::new(digest.clone(), view, img.manifest.len() as u64));
        let stored = store::StoredManifest {
            digest: digest.clone(),
            media_type: manifest.media_type.to_string(),
            bytes: img.manifest.into(),
        };
        let (registry, repo, tag) = (img.registry.clone(), img.repo.clone(), img.tag.clone());
        let blobs = img.blobs;
        let this = inner.clone();
        blocking("installing the built-in image", move || {
            for (d, bytes) in &blobs {
                this.store.put_blob(d, bytes)?;
            }
            this.store.put_manifest(&stored)?;
            this.store.put_tag(&registry, &repo, &tag, &stored.digest)
        })
        .await?
        .map_err(|e| Error::io("installing the built-in image".into(), e))?;
        let size = Some(manifest.len);
        inner.index.insert_manifest(manifest);
        let loc = Locator { registry: img.registry.clone(), repo: img.repo.clone() };
        inner.links.insert_manifest_tree(&inner.index, &loc, &digest, size);
        let entry = TagEntry { digest, checked: SystemTime::now() };
        inner.index.insert_tag(&img.registry, &img.repo, &img.tag, entry);
        info!(repo = %format!("{}/{}", img.registry, img.repo), tag = %img.tag, "installed the built-in hello-world image");
        Ok(())
    }

    /// Called on SIGTERM: downloads cut short by the exit stay resumable.
    pub fn begin_shutdown(&self) {
        self.inner.fills.begin_shutdown();
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.pulls.flush(&*inner.store));
    }

    pub fn stats(&self) -> CacheStats {
        let (manifests, manifest_bytes) = self.inner.index.manifest_totals();
        CacheStats {
            manifests,
            manifest_bytes,
            blobs: self.inner.blob_count.load(Ordering::Relaxed),
            blob_bytes: self.inner.blob_bytes.load(Ordering::Relaxed),
            fills_in_flight: self.inner.fills.in_flight(),
        }
    }

    /// A manifest by tag or digest: from the index (re-checking a tag upstream
    /// when the tag policy says it is stale), else fetched once from the
    /// upstream however many clients ask at the same time.
    /// A client's pull: recorded (in memory) for eviction and pruning by
    /// access time, once served (a miss for what does not exist leaves no trace).
    pub async fn manifest(&self, loc: &Locator, reference: &Reference) -> ManifestResult {
        let found = self.lookup_manifest(loc, reference).await?;
        self.inner.pulls.record(loc, reference);
        Ok(found)
    }

    async fn lookup_manifest(&self, loc: &Locator, reference: &Reference) -> ManifestResult {
        self.lookup_manifest_once(loc, reference, false).await
    }

    /// `refreshed`: the repository was just read again from a shared store.
    async fn lookup_manifest_once(
        &self,
        loc: &Locator,
        reference: &Reference,
        refreshed: bool,
    ) -> ManifestResult {
        let inner = &self.inner;
        inner.read_ahead(loc).await?;
        match reference {
            Reference::Digest(d) => {
                if let Some(m) = inner.index.manifest(d) {
                    if inner.links.get(loc, d).is_some() {
                        // The access line says it (outcome=hit); one line per request.
                        debug!(repo = %loc, %reference, "serving manifest from cache");
                        return Ok((m, CacheOutcome::Hit));
                    }
                    // Cached for another repository: served here only once the
                    // upstream confirms this repository has it.
                    let (this, l, d) = (inner.clone(), loc.clone(), d.clone());
                    let work = async move {
                        this.link_checked(&l, &d, Some(m.len), blobs::Checked::Manifest).await?;
                        info!(repo = %l, reference = %d, "upstream confirmed the repository has it; serving manifest from cache");
                        Ok((m, CacheOutcome::Revalidated))
                    };
                    return self.flight(format!("{loc}@{reference}?link"), work).await;
                }
            }
            Reference::Tag(tag) => {
                let cached = inner.index.tag(&loc.registry, &loc.repo, tag);
                if let Some((entry, m)) = cached.and_then(|e| inner.index.manifest(&e.digest).map(|m| (e, m)))
                {
                    if !inner.is_stale(loc, tag, &entry) {
                        // The access line says it (outcome=hit); one line per request.
                        debug!(repo = %loc, %reference, "serving manifest from cache");
                        return Ok((m, CacheOutcome::Hit));
                    }
                    return self.revalidate(loc, tag, m).await;
                }
            }
        }
        // Another replica may have cached it since this one read the store.
        if !refreshed && inner.refresh(loc).await? {
            return Box::pin(self.lookup_manifest_once(loc, reference, true)).await;
        }
        let (this, l, r) = (inner.clone(), loc.clone(), reference.clone());
        self.flight(format!("{loc}@{reference}"), async move { this.fetch_manifest(&l, &r).await }).await
    }

    /// A manifest's body: from memory, else read from the store and checked
    /// against its digest. One that is gone or corrupt is dropped from the
    /// index (and quarantined), so the next request fetches it again.
    pub async fn manifest_body(&self, m: &Manifest) -> Result<Bytes, Error> {
        if let Some(body) = self.inner.bodies.get(&m.digest) {
            return Ok(body);
        }
        let (store, d) = (self.inner.store.clone(), m.digest.clone());
        match blocking("reading a cached manifest", move || store.manifest(&d)).await? {
            Ok(Some(stored)) => {
                self.inner.bodies.insert(&m.digest, stored.bytes.clone());
                Ok(stored.bytes)
            }
            found => {
                self.inner.index.remove_manifest(&m.digest);
                let why = match found {
                    Err(skipped) => {
                        warn!(digest = %m.digest, file = %skipped.what, error = %skipped.why, "cached manifest is unreadable or corrupt; quarantined, it is fetched again on the next request");
                        let (store, d) = (self.inner.store.clone(), m.digest.clone());
                        let _ =
                            blocking("quarantining a manifest", move || store.quarantine_manifest(&d)).await;
                        skipped.why
                    }
                    _ => "removed from the cache meanwhile".to_owned(),
                };
                Err(Error::io(format!("reading cached manifest {}", m.digest), std::io::Error::other(why)))
            }
        }
    }

    /// The repository's tag list: the upstream's when it answers, else the
    /// tags in the cache (so listing works offline). `query` is the client's
    /// `n`/`last` pagination, passed through.
    pub async fn tags(&self, loc: &Locator, query: Option<&str>) -> Result<(Bytes, CacheOutcome), Error> {
        self.inner.read_ahead(loc).await?;
        let upstream_error = match self.inner.upstreams.get(&loc.registry) {
            Ok(registry) => match registry.tags(&loc.repo, query).await {
                Ok(body) => return Ok((body, CacheOutcome::Passthrough)),
                Err(e) if matches!(e.kind, ErrorKind::NotFound | ErrorKind::Denied) => return Err(e.into()),
                Err(e) => e,
            },
            Err(e) => e,
        };
        let tags = self.inner.index.tags_of(&loc.registry, &loc.repo);
        if tags.is_empty() {
            return Err(upstream_error.into());
        }
        if upstream_error.kind != ErrorKind::AirGapped {
            warn!(repo = %loc, error = %upstream_error, "listing tags from the cache: the upstream could not answer");
        }
        let body = serde_json::json!({ "name": loc.repo.as_str(), "tags": tags });
        Ok((Bytes::from(body.to_string()), CacheOutcome::Stale))
    }
}

/// Runs blocking file work on the blocking pool; a panic there is an error
/// that says what was being done, not a silent abort.
pub(crate) async fn blocking<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        warn!(error = %e, "{what}: the blocking task failed");
        Error::Blocking { what, cause: e.to_string() }
    })
}
