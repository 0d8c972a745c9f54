//! The store and its policies: the one face the HTTP handlers call.
//!
//! Content-addressed blobs and manifests, a tag index, verify-before-commit
//! through `tmp/` and a rename, and single-flight fills streamed to every
//! waiting client. On a miss it asks [`crate::upstream`]; it knows nothing of HTTP.

mod fill;
mod index;
mod layout;
pub mod policy;
mod reader;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use tracing::{debug, info, warn};

pub use index::{LoadReport, Manifest};
pub use layout::Layout;
pub use reader::BlobReader;

use fill::{FillHandle, FillState, Fills, Joined};
use index::Index;
use reader::Progress;

use crate::oci::{Digest, ManifestError, ManifestView, Reference, RegistryHost, RepoName};
use crate::upstream::{self, Upstreams};

/// How a request was answered; the same words in logs and (later) metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Served from the cache.
    Hit,
    /// Fetched from the upstream by this request.
    Miss,
    /// Followed a fetch another request had already started.
    Joined,
    /// Answered by asking the upstream without caching (blob HEAD).
    Passthrough,
}

impl CacheOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheOutcome::Hit => "hit",
            CacheOutcome::Miss => "miss",
            CacheOutcome::Joined => "joined",
            CacheOutcome::Passthrough => "passthrough",
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
    #[error("the download was abandoned")]
    Aborted,
}

impl Error {
    pub(crate) fn io(context: String, source: std::io::Error) -> Error {
        Error::Io { context, source: Arc::new(source) }
    }
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

type ManifestFlight = Shared<BoxFuture<'static, Result<Arc<Manifest>, Error>>>;

pub struct Cache {
    inner: Arc<Inner>,
}

struct Inner {
    layout: Layout,
    index: Index,
    upstreams: Upstreams,
    fills: Arc<Fills>,
    /// Manifest fetches in flight by `registry/repo@reference`. std `Mutex`:
    /// held for one map operation on the miss path, never across `.await`.
    manifest_flights: Mutex<HashMap<String, ManifestFlight>>,
}

/// Partial downloads older than this are left-overs of a crash, not a live
/// fill of another instance sharing the directory.
const STALE_TEMP_AGE: Duration = Duration::from_secs(3600);

impl Cache {
    /// Opens (creating if needed) the cache at `root` and loads its index.
    pub async fn open(root: &std::path::Path, upstreams: Upstreams) -> anyhow::Result<(Cache, LoadReport)> {
        let layout = Layout::new(root);
        let l = layout.clone();
        let (index, report) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            prepare_dirs(&l)?;
            Ok(Index::load(&l))
        })
        .await??;
        let inner =
            Inner { layout, index, upstreams, fills: Arc::default(), manifest_flights: Mutex::default() };
        Ok((Cache { inner: Arc::new(inner) }, report))
    }

    pub fn layout(&self) -> &Layout {
        &self.inner.layout
    }

    pub fn fills_in_flight(&self) -> usize {
        self.inner.fills.in_flight()
    }

    /// A manifest by tag or digest: from the index, else fetched once from the
    /// upstream however many clients ask at the same time.
    pub async fn manifest(
        &self,
        loc: &Locator,
        reference: &Reference,
    ) -> Result<(Arc<Manifest>, CacheOutcome), Error> {
        let index = &self.inner.index;
        let cached = match reference {
            Reference::Tag(t) => index.tag(&loc.registry, &loc.repo, t).and_then(|d| index.manifest(&d)),
            Reference::Digest(d) => index.manifest(d),
        };
        if let Some(m) = cached {
            info!(repo = %loc, reference = %reference, "serving manifest from cache");
            return Ok((m, CacheOutcome::Hit));
        }
        let key = format!("{loc}@{reference}");
        let (flight, outcome) = {
            let mut flights = self.inner.manifest_flights.lock().unwrap_or_else(|p| p.into_inner());
            match flights.get(&key) {
                Some(f) => (f.clone(), CacheOutcome::Joined),
                None => {
                    let inner = self.inner.clone();
                    let (loc, reference, k) = (loc.clone(), reference.clone(), key.clone());
                    // Spawned, so the fetch completes (and is cached) even if
                    // every client that asked for it disconnects.
                    let task = tokio::spawn(async move {
                        let r = inner.fetch_manifest(&loc, &reference).await;
                        inner.manifest_flights.lock().unwrap_or_else(|p| p.into_inner()).remove(&k);
                        r
                    });
                    let f = task.map(|r| r.unwrap_or(Err(Error::Aborted))).boxed().shared();
                    flights.insert(key, f.clone());
                    (f, CacheOutcome::Miss)
                }
            }
        };
        Ok((flight.await?, outcome))
    }

    /// A blob: the cached file, or a fill (started or joined) streamed as it grows.
    pub async fn blob(&self, loc: &Locator, digest: &Digest) -> Result<Blob, Error> {
        if let Some(blob) = self.open_cached(digest).await? {
            debug!(repo = %loc, %digest, "serving blob from cache");
            return Ok(blob);
        }
        let inner = &self.inner;
        // Before joining: a forbidden upstream must not become a failed fill.
        let registry = inner.upstreams.get(&loc.registry)?;
        let target = inner.layout.blob(digest);
        let temp = inner.layout.temp_file("blob");
        let joined = inner.fills.join(digest, temp, target.clone(), || target.exists())?;
        let (handle, outcome) = match joined {
            None => {
                // Committed between our look and the join.
                return self.open_cached(digest).await?.ok_or(Error::Aborted);
            }
            Some(Joined::Follower(h)) => (h, CacheOutcome::Joined),
            Some(Joined::Leader(writer, h)) => {
                info!(repo = %loc, %digest, "pulling blob from upstream");
                tokio::spawn(run_fill(registry, loc.repo.clone(), digest.clone(), *writer));
                (h, CacheOutcome::Miss)
            }
        };
        let size = wait_started(&handle).await?;
        Ok(Blob { size, outcome, reader: BlobReader::new(handle.file, Progress::Filling(handle.progress)) })
    }

    /// A blob's size without fetching it: from the cache, else the upstream's HEAD.
    pub async fn blob_size(
        &self,
        loc: &Locator,
        digest: &Digest,
    ) -> Result<(Option<u64>, CacheOutcome), Error> {
        let path = self.inner.layout.blob(digest);
        if let Ok(meta) = tokio::fs::metadata(&path).await {
            return Ok((Some(meta.len()), CacheOutcome::Hit));
        }
        let registry = self.inner.upstreams.get(&loc.registry)?;
        Ok((registry.blob_size(&loc.repo, digest).await?, CacheOutcome::Passthrough))
    }

    async fn open_cached(&self, digest: &Digest) -> Result<Option<Blob>, Error> {
        let path = self.inner.layout.blob(digest);
        let opened = tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(&path)?;
            let len = file.metadata()?.len();
            Ok::<_, std::io::Error>((file, len))
        })
        .await
        .map_err(|_| Error::Aborted)?;
        match opened {
            Ok((file, len)) => Ok(Some(Blob {
                size: Some(len),
                outcome: CacheOutcome::Hit,
                reader: BlobReader::new(Arc::new(file), Progress::Complete(len)),
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("opening cached blob {digest}"), e)),
        }
    }
}

impl Inner {
    async fn fetch_manifest(
        self: &Arc<Self>,
        loc: &Locator,
        reference: &Reference,
    ) -> Result<Arc<Manifest>, Error> {
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

        let manifest =
            Arc::new(Manifest { digest: digest.clone(), media_type: view.media_type, bytes: fetched.bytes });
        let (this, m) = (self.clone(), manifest.clone());
        let (loc2, reference2) = (loc.clone(), reference.clone());
        tokio::task::spawn_blocking(move || {
            index::store_manifest(&this.layout, &m)?;
            if let Reference::Tag(t) = &reference2 {
                index::store_tag(&this.layout, &loc2.registry, &loc2.repo, t, &m.digest)?;
            }
            Ok::<_, Error>(())
        })
        .await
        .map_err(|_| Error::Aborted)??;
        self.index.insert_manifest(manifest.clone());
        if let Reference::Tag(t) = reference {
            self.index.insert_tag(&loc.registry, &loc.repo, t, digest.clone());
        }
        info!(repo = %loc, %reference, %digest, media_type = %manifest.media_type, bytes = manifest.bytes.len(), "cached manifest");
        Ok(manifest)
    }
}

/// Downloads a blob into its fill. The task runs on its own, so the blob is
/// cached even when every client that asked for it has gone.
async fn run_fill(
    registry: Arc<upstream::Registry>,
    repo: RepoName,
    digest: Digest,
    mut writer: fill::FillWriter,
) {
    let result = async {
        let mut stream = registry.blob(&repo, &digest, 0).await?;
        writer.start(stream.total);
        while let Some(chunk) = futures_util::StreamExt::next(&mut stream.body).await {
            writer.write(chunk?).await?;
        }
        Ok::<_, Error>(())
    }
    .await;
    match result {
        Ok(()) => match writer.commit().await {
            Ok(len) => info!(repo = %repo, %digest, bytes = len, "cached blob"),
            Err(e) => warn!(repo = %repo, %digest, error = %e, "discarded blob download"),
        },
        Err(e) => {
            warn!(repo = %repo, %digest, written = writer.written(), error = %e, "blob download failed");
            writer.fail(e);
        }
    }
}

/// Waits for a fill's upstream to answer; returns the announced size.
async fn wait_started(handle: &FillHandle) -> Result<Option<u64>, Error> {
    let mut rx = handle.progress.clone();
    loop {
        match &*rx.borrow_and_update() {
            FillState::Pending => {}
            FillState::Growing { total, .. } => return Ok(*total),
            FillState::Complete { len } => return Ok(Some(*len)),
            FillState::Failed(e) => return Err((**e).clone()),
        }
        if rx.changed().await.is_err() {
            return Err(Error::Aborted);
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
        let stale = e
            .metadata()
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > STALE_TEMP_AGE);
        if stale {
            debug!(file = %e.path().display(), "removing stale partial download");
            let _ = std::fs::remove_file(e.path());
        }
    }
}
