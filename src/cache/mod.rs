//! The store and its policies: the one face the HTTP handlers call.
//!
//! Content-addressed blobs and manifests, a tag index, verify-before-commit
//! through `tmp/` and a rename, and single-flight fills streamed to every
//! waiting client. On a miss it asks [`crate::upstream`]; it knows nothing of HTTP.

mod fill;
mod flight;
mod index;
mod layout;
mod links;
pub mod policy;
mod reader;
pub mod verify;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, warn};

pub use index::{LoadReport, Manifest};
pub use layout::Layout;
pub use reader::BlobReader;

use fill::{FillHandle, FillPaths, FillState, FillWriter, Fills, Joined};
use flight::Flights;
use index::{Index, TagEntry};
use links::Links;
use policy::{Revalidate, TagPolicy};
use reader::Progress;

use crate::metrics::Metrics;
use crate::oci::{Digest, ManifestError, ManifestView, Reference, RegistryHost, RepoName, Tag};
use crate::upstream::{self, ErrorKind, Upstreams};

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

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Upstream(#[from] upstream::Error),
    #[error("upstream {registry} sent an invalid manifest: {source}")]
    InvalidManifest { registry: RegistryHost, source: ManifestError },
    #[error("upstream sent content for {expected} whose digest is {actual}; it was not cached")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("upstream sent more bytes than announced for {digest}")]
    TooLong { digest: Digest },
    #[error("upstream sent {got} of {expected} bytes for {digest}")]
    Truncated { digest: Digest, got: u64, expected: u64 },
    #[error("{context}: {source}")]
    Io { context: String, source: Arc<std::io::Error> },
    /// The task downloading the blob ended without finishing (cancelled or panicked).
    #[error("the download of {digest} ended without finishing")]
    FillDropped { digest: Digest },
    /// The download a response was following ended without a verdict.
    #[error("the download this response followed ended without finishing")]
    FillLost,
    /// A blocking task (file I/O, hashing) panicked or was cancelled.
    #[error("{what}: the blocking task failed: {cause}")]
    Blocking { what: &'static str, cause: String },
    /// A manifest fetch or tag re-check panicked.
    #[error("fetching {key} failed unexpectedly (the task panicked)")]
    Panicked { key: String },
    /// A cached blob file ended before the length it had when opened.
    #[error("a cached blob file ended early (at byte {at})")]
    ShortBlobFile { at: u64 },
    #[error("download abandoned: its clients left and {0} background downloads are already running")]
    TooManyBackgroundFills(usize),
    #[error("cached blob {digest} is {actual} bytes but its descriptor says {expected}; not served")]
    SizeMismatch { digest: Digest, expected: u64, actual: u64 },
}

impl Error {
    pub(crate) fn io(context: String, source: std::io::Error) -> Error {
        Error::Io { context, source: Arc::new(source) }
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
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
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
    layout: Layout,
    index: Index,
    links: Links,
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
    /// Blobs on disk: counted at load, added to on each commit.
    blob_count: AtomicU64,
    blob_bytes: AtomicU64,
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

/// Temp files older than this are left-overs of a crash, not a live fill of
/// another instance sharing the directory.
const STALE_TEMP_AGE: Duration = Duration::from_secs(3600);
/// Interrupted downloads are kept this long for a later fill to resume.
const STALE_PARTIAL_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

impl Cache {
    /// Opens (creating if needed) the cache at `settings.root` and loads its index.
    pub async fn open(
        settings: Settings,
        upstreams: Upstreams,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<(Cache, LoadReport)> {
        let layout = Layout::new(&settings.root);
        let l = layout.clone();
        let (index, links, report) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            prepare_dirs(&l)?;
            let (index, mut report) = Index::load(&l);
            let (links, skipped) = Links::load(&l, &index);
            report.skipped += skipped;
            Ok((index, links, report))
        })
        .await??;
        let inner = Inner {
            layout,
            index,
            links,
            upstreams,
            fills: Arc::default(),
            flights: Arc::default(),
            tag_policy: settings.tag_policy,
            revalidate: settings.revalidate,
            resume_attempts: settings.resume_attempts,
            max_background_fills: settings.max_background_fills,
            metrics,
            background_fills: Arc::new(Semaphore::new(settings.max_background_fills)),
            blob_count: AtomicU64::new(report.blobs as u64),
            blob_bytes: AtomicU64::new(report.blob_bytes),
        };
        Ok((Cache { inner: Arc::new(inner) }, report))
    }

    /// Puts a built-in image (`--hello-world`) into the cache as if pulled.
    pub async fn install(&self, img: Seed) -> Result<(), Error> {
        let inner = self.inner.clone();
        let digest = Digest::of(crate::oci::Algorithm::Sha256, &img.manifest);
        let view = ManifestView::parse(&img.manifest, Some(img.media_type))
            .map_err(|source| Error::InvalidManifest { registry: img.registry.clone(), source })?;
        let manifest = Arc::new(Manifest::new(digest.clone(), view, img.manifest.into()));
        let m = manifest.clone();
        let (registry, repo, tag) = (img.registry.clone(), img.repo.clone(), img.tag.clone());
        let blobs = img.blobs;
        let this = inner.clone();
        blocking("installing the built-in image", move || {
            for (d, bytes) in &blobs {
                index::store_blob(&this.layout, d, bytes)?;
            }
            index::store_manifest(&this.layout, &m)?;
            index::store_tag(&this.layout, &registry, &repo, &tag, &m.digest)
        })
        .await??;
        let size = Some(manifest.bytes.len() as u64);
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
    pub async fn manifest(&self, loc: &Locator, reference: &Reference) -> ManifestResult {
        let inner = &self.inner;
        match reference {
            Reference::Digest(d) => {
                if let Some(m) = inner.index.manifest(d) {
                    if inner.links.get(loc, d).is_some() {
                        info!(repo = %loc, %reference, "serving manifest from cache");
                        return Ok((m, CacheOutcome::Hit));
                    }
                    // Cached for another repository: served here only once the
                    // upstream confirms this repository has it.
                    let (this, l, d) = (inner.clone(), loc.clone(), d.clone());
                    let work = async move {
                        this.link_checked(&l, &d, Some(m.bytes.len() as u64), Checked::Manifest).await?;
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
                        info!(repo = %loc, %reference, "serving manifest from cache");
                        return Ok((m, CacheOutcome::Hit));
                    }
                    return self.revalidate(loc, tag, m).await;
                }
            }
        }
        let (this, l, r) = (inner.clone(), loc.clone(), reference.clone());
        self.flight(format!("{loc}@{reference}"), async move { this.fetch_manifest(&l, &r).await }).await
    }

    /// A stale tag: re-check it upstream (inline or behind the response).
    async fn revalidate(&self, loc: &Locator, tag: &Tag, cached: Arc<Manifest>) -> ManifestResult {
        let (this, l, t, c) = (self.inner.clone(), loc.clone(), tag.clone(), cached.clone());
        let key = format!("{loc}@{tag}?recheck");
        let work = async move { this.recheck_tag(&l, &t, c).await };
        match self.inner.revalidate {
            Revalidate::Inline => self.flight(key, work).await,
            Revalidate::Background => {
                let this = self.clone();
                tokio::spawn(async move { this.flight(key, work).await });
                info!(repo = %loc, %tag, "serving manifest from cache; re-checking the tag in the background");
                Ok((cached, CacheOutcome::Hit))
            }
        }
    }

    async fn flight(
        &self,
        key: String,
        work: impl Future<Output = ManifestResult> + Send + 'static,
    ) -> ManifestResult {
        match self.inner.flights.run(key.clone(), || work).await {
            (Some(r), true) => r,
            (Some(Ok((m, CacheOutcome::Stale))), false) => Ok((m, CacheOutcome::Stale)),
            (Some(Ok((m, _))), false) => Ok((m, CacheOutcome::Joined)),
            (Some(Err(e)), _) => Err(e),
            (None, _) => {
                warn!(%key, "a manifest fetch panicked");
                Err(Error::Panicked { key })
            }
        }
    }

    /// A blob: the cached file, or a fill (started or joined) streamed as it grows.
    /// Served for `loc` only when linked to it (see [`links`]).
    pub async fn blob(&self, loc: &Locator, digest: &Digest) -> Result<Blob, Error> {
        // A blob committed and then removed (quarantined) between our look and
        // the join lost a race, not the request: look again, once.
        match self.blob_once(loc, digest).await? {
            Some(blob) => Ok(blob),
            None => self
                .blob_once(loc, digest)
                .await?
                .ok_or_else(|| Error::FillDropped { digest: digest.clone() }),
        }
    }

    async fn blob_once(&self, loc: &Locator, digest: &Digest) -> Result<Option<Blob>, Error> {
        let inner = &self.inner;
        match inner.links.get(loc, digest) {
            Some(expected) => {
                if let Some(blob) = self.open_cached(digest, expected).await? {
                    debug!(repo = %loc, %digest, "serving blob from cache");
                    return Ok(Some(blob));
                }
            }
            None if inner.layout.blob(digest).exists() => {
                let size = inner.link_checked(loc, digest, None, Checked::Blob).await?;
                if let Some(mut blob) = self.open_cached(digest, size).await? {
                    debug!(repo = %loc, %digest, "upstream confirmed the repository has it; serving blob from cache");
                    blob.outcome = CacheOutcome::Revalidated;
                    return Ok(Some(blob));
                }
            }
            None => {}
        }
        // Before joining: a forbidden or unreachable upstream must not become a failed fill.
        let registry = inner.upstreams.get(&loc.registry)?;
        let paths = FillPaths {
            partial: inner.layout.partial(digest),
            fallback: inner.layout.temp_file("blob"),
            target: inner.layout.blob(digest),
        };
        let key = (loc.registry.clone(), digest.clone());
        let (handle, outcome) = match inner.fills.join(&key, &loc.repo, paths).await? {
            Joined::Cached => {
                // Committed between our look and the join (by a fill that linked it).
                let expected = inner.links.get(loc, digest).flatten();
                return self.open_cached(digest, expected).await;
            }
            Joined::Follower(h) => {
                if h.repo != loc.repo && inner.links.get(loc, digest).is_none() {
                    inner.link_checked(loc, digest, None, Checked::Blob).await?;
                }
                (h, CacheOutcome::Joined)
            }
            Joined::Leader(writer, h) => {
                info!(repo = %loc, %digest, "pulling blob from upstream");
                let job = FillJob {
                    cache: inner.clone(),
                    registry,
                    loc: loc.clone(),
                    digest: digest.clone(),
                    resume_attempts: inner.resume_attempts,
                    background: inner.background_fills.clone(),
                };
                tokio::spawn(job.run(*writer));
                (h, CacheOutcome::Miss)
            }
        };
        let size = wait_started(&handle, digest).await?;
        Ok(Some(Blob {
            size,
            outcome,
            reader: BlobReader::new(handle.file, Progress::Filling(handle.progress)),
        }))
    }

    /// A blob's size without fetching it: from the cache when linked, else the
    /// upstream's HEAD (which links it when cached).
    pub async fn blob_size(
        &self,
        loc: &Locator,
        digest: &Digest,
    ) -> Result<(Option<u64>, CacheOutcome), Error> {
        let path = self.inner.layout.blob(digest);
        if let Some(expected) = self.inner.links.get(loc, digest)
            && let Ok(meta) = tokio::fs::metadata(&path).await
            && expected.is_none_or(|e| e == meta.len())
        {
            return Ok((Some(meta.len()), CacheOutcome::Hit));
        }
        let registry = self.inner.upstreams.get(&loc.registry)?;
        let size = registry.blob_size(&loc.repo, digest).await?;
        if path.exists() {
            self.inner.add_root_link(loc, digest, size);
        }
        Ok((size, CacheOutcome::Passthrough))
    }

    /// The repository's tag list: the upstream's when it answers, else the
    /// tags in the cache (so listing works offline). `query` is the client's
    /// `n`/`last` pagination, passed through.
    pub async fn tags(&self, loc: &Locator, query: Option<&str>) -> Result<(Bytes, CacheOutcome), Error> {
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

    /// Opens the cached blob, checking its size against what its descriptor
    /// said. A file of the wrong size is re-hashed: corrupt, it is quarantined
    /// and `None` returned (so it is fetched again); intact, the descriptor
    /// is wrong and the blob is not served.
    async fn open_cached(&self, digest: &Digest, expected: Option<u64>) -> Result<Option<Blob>, Error> {
        let path = self.inner.layout.blob(digest);
        let opened = blocking("opening a cached blob", move || {
            let file = std::fs::File::open(&path)?;
            let len = file.metadata()?.len();
            Ok::<_, std::io::Error>((file, len))
        })
        .await?;
        match opened {
            Ok((file, len)) if expected.is_none_or(|e| e == len) => Ok(Some(Blob {
                size: Some(len),
                outcome: CacheOutcome::Hit,
                reader: BlobReader::new(Arc::new(file), Progress::Complete(len)),
            })),
            Ok((file, actual)) => {
                let expected = expected.unwrap_or_default();
                let (inner, d) = (self.inner.clone(), digest.clone());
                let intact = blocking("verifying a cached blob", move || {
                    verify::check_blob(&inner.layout, &d, file, &inner.metrics)
                })
                .await?
                .map_err(|e| Error::io(format!("verifying cached blob {digest}"), e))?;
                if intact {
                    return Err(Error::SizeMismatch { digest: digest.clone(), expected, actual });
                }
                warn!(%digest, expected, actual, "cached blob is corrupt (wrong size and digest); quarantined, fetching it again");
                self.inner.blob_count.fetch_sub(1, Ordering::Relaxed);
                self.inner
                    .blob_bytes
                    .fetch_sub(actual.min(self.inner.blob_bytes.load(Ordering::Relaxed)), Ordering::Relaxed);
                Ok(None)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("opening cached blob {digest}"), e)),
        }
    }
}

/// What an upstream check confirms for a repository.
#[derive(Debug, Clone, Copy)]
enum Checked {
    Manifest,
    Blob,
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

impl Inner {
    /// Asks the upstream whether `loc`'s repository has `digest` (a HEAD) and
    /// links it when it does. Returns the size to expect.
    async fn link_checked(
        &self,
        loc: &Locator,
        digest: &Digest,
        known: Option<u64>,
        what: Checked,
    ) -> Result<Option<u64>, Error> {
        let registry = self.upstreams.get(&loc.registry)?;
        let size = match what {
            Checked::Manifest => {
                registry.manifest_digest(&loc.repo, &Reference::Digest(digest.clone())).await?;
                known
            }
            Checked::Blob => registry.blob_size(&loc.repo, digest).await?.or(known),
        };
        self.add_root_link(loc, digest, size);
        Ok(size)
    }

    /// Links `digest` to `loc` in memory and appends it to the repository's link file.
    fn add_root_link(&self, loc: &Locator, digest: &Digest, size: Option<u64>) {
        if !self.links.insert(loc, digest, size) {
            return;
        }
        let (layout, l, d) = (self.layout.clone(), loc.clone(), digest.clone());
        tokio::task::spawn_blocking(move || {
            if let Err(e) = links::persist(&layout, &l, &[(d.clone(), size)]) {
                warn!(repo = %l, digest = %d, error = %e, "could not record the link on disk; it holds until restart");
            }
        });
    }

    fn is_stale(&self, loc: &Locator, tag: &Tag, entry: &TagEntry) -> bool {
        if self.upstreams.is_air_gapped() {
            return false;
        }
        let age = entry.checked.elapsed().unwrap_or_default();
        self.tag_policy.is_stale(loc.registry.as_str(), loc.repo.as_str(), tag.as_str(), age)
    }

    /// Asks the upstream (HEAD) where a stale tag points now. Unchanged: the
    /// cached manifest, marked fresh. Moved: the new manifest. Any failure:
    /// the cached manifest (stale-if-error), logged.
    async fn recheck_tag(
        self: &Arc<Self>,
        loc: &Locator,
        tag: &Tag,
        cached: Arc<Manifest>,
    ) -> ManifestResult {
        let checked = async {
            let registry = self.upstreams.get(&loc.registry)?;
            registry.manifest_digest(&loc.repo, &Reference::Tag(tag.clone())).await.map_err(Error::from)
        }
        .await;
        let reference = Reference::Tag(tag.clone());
        let result = match checked {
            Ok(Some(d)) if d == cached.digest => {
                self.confirm_tag(loc, tag, &cached.digest);
                info!(repo = %loc, %tag, digest = %d, "tag unchanged upstream; serving manifest from cache");
                return Ok((cached, CacheOutcome::Revalidated));
            }
            Ok(now) => {
                info!(repo = %loc, %tag, was = %cached.digest, now = now.map_or("?".into(), |d| d.to_string()), "tag moved upstream; pulling manifest from upstream");
                self.fetch_manifest(loc, &reference).await
            }
            Err(e) => Err(e),
        };
        result.or_else(|e| {
            self.metrics.stale_serves.inc();
            warn!(repo = %loc, %tag, digest = %cached.digest, error = %e, "tag re-check failed; serving the cached manifest (stale-if-error)");
            Ok((cached, CacheOutcome::Stale))
        })
    }

    fn confirm_tag(self: &Arc<Self>, loc: &Locator, tag: &Tag, digest: &Digest) {
        let now = SystemTime::now();
        self.index.insert_tag(
            &loc.registry,
            &loc.repo,
            tag,
            TagEntry { digest: digest.clone(), checked: now },
        );
        let (this, l, t) = (self.clone(), loc.clone(), tag.clone());
        tokio::task::spawn_blocking(move || index::touch_tag(&this.layout, &l.registry, &l.repo, &t, now));
    }

    async fn fetch_manifest(self: &Arc<Self>, loc: &Locator, reference: &Reference) -> ManifestResult {
        let registry = self.upstreams.get(&loc.registry)?;
        info!(repo = %loc, %reference, upstream = %registry.endpoint(), "pulling manifest from upstream");
        let fetched = registry.manifest(&loc.repo, reference).await?;
        let invalid = |source| Error::InvalidManifest { registry: loc.registry.clone(), source };
        let view = ManifestView::parse(&fetched.bytes, fetched.content_type.as_deref()).map_err(invalid)?;

        // Verify against what was asked for (a digest) or what the upstream claimed.
        let claimed = match reference {
            Reference::Digest(d) => Some(d.clone()),
            Reference::Tag(_) => fetched.digest.clone(),
        };
        let algorithm = claimed.as_ref().map_or(crate::oci::Algorithm::Sha256, Digest::algorithm);
        let digest = Digest::of(algorithm, &fetched.bytes);
        if let Some(expected) = claimed.filter(|c| *c != digest) {
            return Err(Error::DigestMismatch { expected, actual: digest });
        }

        if let Some(served) =
            fetched.content_type.as_deref().filter(|t| !t.starts_with(view.media_type.as_str()))
        {
            debug!(repo = %loc, %reference, served, media_type = %view.media_type, "upstream's Content-Type differs from the manifest's own media type; using the manifest's");
        }
        let size = Some(fetched.bytes.len() as u64);
        // A manifest cached by digest is never replaced: the first copy (and
        // the media type it is served with) stays, whoever fetches it again.
        let (manifest, new) = match self.index.manifest(&digest) {
            Some(cached) => {
                if cached.media_type != view.media_type {
                    warn!(repo = %loc, %digest, cached = %cached.media_type, upstream = %view.media_type, "upstream serves a cached manifest with another media type; keeping the cached one");
                }
                (cached, false)
            }
            None => (Arc::new(Manifest::new(digest.clone(), view, fetched.bytes)), true),
        };
        let (this, m, l, r) = (self.clone(), manifest.clone(), loc.clone(), reference.clone());
        blocking("storing a manifest", move || {
            if new {
                index::store_manifest(&this.layout, &m)?;
            }
            match &r {
                Reference::Tag(t) => index::store_tag(&this.layout, &l.registry, &l.repo, t, &m.digest)?,
                // A tag's links are derived from the tag file; a digest pull needs its own.
                Reference::Digest(d) => links::persist(&this.layout, &l, &[(d.clone(), size)])
                    .map_err(|e| Error::io(format!("recording a link for {l}"), e))?,
            }
            Ok::<_, Error>(())
        })
        .await??;
        let manifest = self.index.insert_manifest(manifest);
        self.links.insert_manifest_tree(&self.index, loc, &digest, size);
        if let Reference::Tag(t) = reference {
            let entry = TagEntry { digest: digest.clone(), checked: SystemTime::now() };
            self.index.insert_tag(&loc.registry, &loc.repo, t, entry);
        }
        info!(repo = %loc, %reference, %digest, media_type = %manifest.media_type, bytes = manifest.bytes.len(), "cached manifest");
        Ok((manifest, CacheOutcome::Miss))
    }
}

/// Downloads one blob into its fill, resuming with `Range` requests when the
/// connection breaks. Runs on its own task, so the blob is cached even when
/// every client that asked for it has gone (within the background bound).
struct FillJob {
    cache: Arc<Inner>,
    registry: Arc<upstream::Registry>,
    loc: Locator,
    digest: Digest,
    resume_attempts: u32,
    background: Arc<Semaphore>,
}

impl FillJob {
    async fn run(self, mut writer: FillWriter) {
        let (repo, digest) = (&self.loc, &self.digest);
        match writer.adopt().await {
            Ok(0) => {}
            Ok(n) => {
                info!(%repo, %digest, from_byte = n, "resuming an interrupted download left by an earlier run")
            }
            Err(e) => {
                warn!(%repo, %digest, error = %e, "could not take over an interrupted download");
                writer.fail(e);
                return;
            }
        }
        let mut background = None;
        let mut attempt = 0;
        let result = loop {
            let from = writer.written();
            match self.download(&mut writer, &mut background).await {
                Ok(()) => break Ok(()),
                Err(e) if writer.is_started() && is_resumable(&e) && attempt < self.resume_attempts => {
                    attempt += 1;
                    self.cache.metrics.fill_resumes.inc();
                    let wait = resume_wait(attempt, &e);
                    warn!(
                        %repo, %digest, at_byte = writer.written(), since_byte = from, attempt, error = %e,
                        "blob download interrupted; resuming in {}", humantime::format_duration(wait)
                    );
                    tokio::time::sleep(wait).await;
                }
                Err(e) => break Err(e),
            }
        };
        match result {
            Ok(()) => match writer.commit().await {
                Ok(len) => {
                    self.cache.add_root_link(&self.loc, &self.digest, Some(len));
                    self.cache.blob_count.fetch_add(1, Ordering::Relaxed);
                    self.cache.blob_bytes.fetch_add(len, Ordering::Relaxed);
                    info!(%repo, %digest, bytes = len, resumes = attempt, "cached blob");
                }
                Err(e) => warn!(%repo, %digest, error = %e, "discarded blob download"),
            },
            Err(e) => {
                warn!(%repo, %digest, written = writer.written(), error = %e, "blob download failed");
                writer.fail(e);
            }
        }
    }

    /// One attempt: from what is already written to the end.
    async fn download(
        &self,
        writer: &mut FillWriter,
        background: &mut Option<OwnedSemaphorePermit>,
    ) -> Result<(), Error> {
        let have = writer.written();
        let mut stream = self.registry.blob(&self.loc.repo, &self.digest, have).await?;
        // An upstream that ignores Range restarts at 0: skip what we already have.
        let mut skip = have.saturating_sub(stream.offset);
        if have > 0 {
            if skip > 0 {
                info!(repo = %self.loc, digest = %self.digest, "upstream ignored Range; re-reading the blob from its start");
            } else {
                info!(repo = %self.loc, digest = %self.digest, from_byte = have, "resumed blob download with a Range request");
            }
        }
        writer.start(stream.total);
        while let Some(chunk) = stream.body.next().await {
            let mut chunk = chunk?;
            if skip > 0 {
                let n = skip.min(chunk.len() as u64);
                let _ = chunk.split_to(n as usize);
                skip -= n;
                if chunk.is_empty() {
                    continue;
                }
            }
            writer.write(chunk).await?;
            if background.is_none() && !writer.has_clients() {
                let permit = self
                    .background
                    .clone()
                    .try_acquire_owned()
                    .map_err(|_| Error::TooManyBackgroundFills(self.cache.max_background_fills))?;
                debug!(repo = %self.loc, digest = %self.digest, "all clients left; finishing the download in the background");
                *background = Some(permit);
            }
        }
        Ok(())
    }
}

fn is_resumable(e: &Error) -> bool {
    match e {
        Error::Upstream(u) => u.is_retryable(),
        Error::Truncated { .. } => true,
        _ => false,
    }
}

/// 1 s, 2 s, 4 s … capped at 30 s, and never sooner than the upstream's `Retry-After`.
fn resume_wait(attempt: u32, e: &Error) -> Duration {
    let backoff = Duration::from_secs(1 << attempt.saturating_sub(1).min(5)).min(Duration::from_secs(30));
    match e {
        Error::Upstream(upstream::Error { kind: ErrorKind::RateLimited(Some(after)), .. }) => {
            backoff.max(*after)
        }
        _ => backoff,
    }
}

/// Waits for a fill's upstream to answer; returns the announced size.
async fn wait_started(handle: &FillHandle, digest: &Digest) -> Result<Option<u64>, Error> {
    let mut rx = handle.progress.clone();
    loop {
        match &*rx.borrow_and_update() {
            FillState::Pending => {}
            FillState::Growing { total, .. } => return Ok(*total),
            FillState::Complete { len } => return Ok(Some(*len)),
            FillState::Failed(e) => return Err((**e).clone()),
        }
        if rx.changed().await.is_err() {
            return Err(Error::FillDropped { digest: digest.clone() });
        }
    }
}

fn prepare_dirs(layout: &Layout) -> anyhow::Result<()> {
    use anyhow::Context;
    let root = layout.root();
    for dir in [layout.blobs(), layout.manifests(), layout.tags(), layout.tmp()] {
        std::fs::create_dir_all(&dir).with_context(|| {
            format!("creating cache directory {} (imagePath / --image-path)", dir.display())
        })?;
    }
    let probe = layout.temp_file("probe");
    std::fs::write(&probe, b"").with_context(|| {
        format!("cache directory {} is not writable (imagePath / --image-path)", root.display())
    })?;
    let _ = std::fs::remove_file(&probe);
    remove_stale_temps(layout);
    Ok(())
}

fn remove_stale_temps(layout: &Layout) {
    let Ok(entries) = std::fs::read_dir(layout.tmp()) else {
        return;
    };
    for e in entries.flatten() {
        let partial = e.file_name().to_string_lossy().ends_with(".partial");
        let max_age = if partial { STALE_PARTIAL_AGE } else { STALE_TEMP_AGE };
        let stale = e
            .metadata()
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > max_age);
        if stale {
            debug!(file = %e.path().display(), "removing stale partial download");
            let _ = std::fs::remove_file(e.path());
        }
    }
}
