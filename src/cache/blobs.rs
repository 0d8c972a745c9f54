//! Blobs: served from the cache when linked to the repository, else after
//! an upstream check, else through a fill (started or joined) streamed as it grows.

use std::sync::atomic::Ordering;

use tracing::{debug, info, warn};

use super::download::{FillJob, wait_started};
use super::fill::Joined;
use super::reader::{BlobReader, Progress, SMALL_BLOB, read_whole};
use super::{Blob, Cache, CacheOutcome, Error, Inner, Locator, blocking, verify};
use crate::oci::{Digest, Reference};
use crate::upstream::Class;

impl Cache {
    /// A blob: the cached file, or a fill (started or joined) streamed as it grows.
    /// Served for `loc` only when linked to it (see the `links` module).
    pub async fn blob(&self, loc: &Locator, digest: &Digest) -> Result<Blob, Error> {
        self.blob_as(loc, digest, Class::Interactive).await
    }

    /// A blob for a client (`Interactive`) or a preload (`Background`: its
    /// download yields the link to clients').
    pub(super) async fn blob_as(&self, loc: &Locator, digest: &Digest, class: Class) -> Result<Blob, Error> {
        // A blob committed and then removed (quarantined) between our look and
        // the join lost a race, not the request: look again, once.
        match self.blob_once(loc, digest, class).await? {
            Some(blob) => Ok(blob),
            None => self
                .blob_once(loc, digest, class)
                .await?
                .ok_or_else(|| Error::FillDropped { digest: digest.clone() }),
        }
    }

    async fn blob_once(&self, loc: &Locator, digest: &Digest, class: Class) -> Result<Option<Blob>, Error> {
        let inner = &self.inner;
        match inner.linked(loc, digest).await? {
            Some(expected) => {
                if let Some(blob) = self.open_cached(digest, expected).await? {
                    debug!(repo = %loc, %digest, "serving blob from cache");
                    return Ok(Some(blob));
                }
            }
            None if self.cached_len(digest).await?.is_some() => {
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
        let key = (loc.registry.clone(), digest.clone());
        // Room under the size cap before a download starts (a partial it
        // would adopt stays for later when there is none); one following a
        // download under way needs none.
        let mut room = match inner.fills.in_flight_for(digest) {
            true => None,
            false => self.make_room(inner.links.get(loc, digest).flatten()).await?,
        };
        let (handle, outcome) = match inner.fills.join(&key, &loc.repo).await? {
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
                let source: std::sync::Arc<dyn super::download::BlobSource> = match &inner.sharing {
                    None => registry,
                    Some(peers) => std::sync::Arc::new(super::shared::Shared::new(
                        inner.store.clone(),
                        registry,
                        loc.registry.clone(),
                        peers.clone(),
                    )),
                };
                let job = FillJob {
                    cache: inner.clone(),
                    source,
                    loc: loc.clone(),
                    digest: digest.clone(),
                    resume_attempts: inner.resume_attempts,
                    background: inner.background_fills.clone(),
                    interactive: h.interactive.clone(),
                    _room: room.take(),
                };
                tokio::spawn(job.run(*writer));
                (h, CacheOutcome::Miss)
            }
        };
        if class == Class::Interactive {
            handle.interactive.store(true, Ordering::Relaxed);
        }
        let size = wait_started(&handle, digest).await?;
        Ok(Some(Blob {
            size,
            outcome,
            reader: BlobReader::new(handle.file, Progress::Filling(handle.progress)),
        }))
    }

    /// Where the client may fetch a cached blob itself (`storage.s3.redirect`):
    /// a presigned bucket URL, when the blob is linked to `loc` and committed
    /// with the size expected. `None`: serve it as usual (a fill if need be).
    pub async fn blob_redirect(&self, loc: &Locator, digest: &Digest) -> Result<Option<String>, Error> {
        if !self.inner.redirects {
            return Ok(None);
        }
        let Some(expected) = self.inner.linked(loc, digest).await? else { return Ok(None) };
        let (store, d) = (self.inner.store.clone(), digest.clone());
        let url = blocking("presigning a blob URL", move || -> std::io::Result<Option<String>> {
            match store.blob_len(&d)? {
                Some(len) if expected.is_none_or(|e| e == len) => store.blob_url(&d),
                _ => Ok(None),
            }
        })
        .await?
        .map_err(|e| Error::io(format!("presigning a URL for blob {digest}"), e))?;
        Ok(url)
    }

    /// A blob for another replica (`storage.s3.peers`): the download of it
    /// under way here, or the committed blob; `None` when neither (the asker
    /// then fetches it itself). No repository: replicas share one cache.
    pub async fn peer_blob(
        &self,
        registry: &crate::oci::RegistryHost,
        digest: &Digest,
    ) -> Result<Option<Blob>, Error> {
        if let Some(h) = self.inner.fills.following(&(registry.clone(), digest.clone())).await? {
            let size = wait_started(&h, digest).await?;
            let reader = BlobReader::new(h.file, Progress::Filling(h.progress));
            return Ok(Some(Blob { size, outcome: CacheOutcome::Joined, reader }));
        }
        self.open_cached(digest, None).await
    }

    /// A blob's size without fetching it: from the cache when linked, else the
    /// upstream's HEAD (which links it when cached).
    pub async fn blob_size(
        &self,
        loc: &Locator,
        digest: &Digest,
    ) -> Result<(Option<u64>, CacheOutcome), Error> {
        let linked = self.inner.linked(loc, digest).await?;
        let cached = self.cached_len(digest).await?;
        if let (Some(expected), Some(len)) = (linked, cached)
            && expected.is_none_or(|e| e == len)
        {
            return Ok((Some(len), CacheOutcome::Hit));
        }
        let registry = self.inner.upstreams.get(&loc.registry)?;
        let size = registry.blob_size(&loc.repo, digest).await?;
        if cached.is_some() {
            self.inner.add_root_link(loc, digest, size);
        }
        Ok((size, CacheOutcome::Passthrough))
    }

    /// The committed blob's length, if there is one.
    async fn cached_len(&self, digest: &Digest) -> Result<Option<u64>, Error> {
        let (store, d) = (self.inner.store.clone(), digest.clone());
        blocking("looking up a cached blob", move || store.blob_len(&d))
            .await?
            .map_err(|e| Error::io(format!("looking up cached blob {digest}"), e))
    }

    /// Opens the cached blob, checking its size against what its descriptor
    /// said. A file of the wrong size is re-hashed: corrupt, it is quarantined
    /// and `None` returned (so it is fetched again); intact, the descriptor
    /// is wrong and the blob is not served.
    async fn open_cached(&self, digest: &Digest, expected: Option<u64>) -> Result<Option<Blob>, Error> {
        // Warm and small: read right here, no hop to the blocking pool.
        if let Some((file, whole)) =
            self.inner.store.read_small_now(digest, expected.unwrap_or(SMALL_BLOB).min(SMALL_BLOB))
            && expected.is_none_or(|e| e == whole.len() as u64)
        {
            let size = Some(whole.len() as u64);
            return Ok(Some(Blob {
                size,
                outcome: CacheOutcome::Hit,
                reader: BlobReader::new(file, Progress::Whole(whole)),
            }));
        }
        let (store, d) = (self.inner.store.clone(), digest.clone());
        // A small blob of the expected size is read in the same hop that opens it.
        let opened = blocking("opening a cached blob", move || {
            let (file, len) = match store.open_blob(&d)? {
                Some(opened) => opened,
                None => return Ok(None),
            };
            let whole = match len <= SMALL_BLOB && expected.is_none_or(|e| e == len) {
                true => Some(read_whole(&*file, len)?),
                false => None,
            };
            Ok(Some((file, len, whole)))
        })
        .await?;
        match opened {
            Ok(Some((file, len, whole))) if expected.is_none_or(|e| e == len) => Ok(Some(Blob {
                size: Some(len),
                outcome: CacheOutcome::Hit,
                reader: BlobReader::new(file, whole.map_or(Progress::Complete(len), Progress::Whole)),
            })),
            Ok(Some((file, actual, _))) => {
                let expected = expected.unwrap_or_default();
                let (inner, d) = (self.inner.clone(), digest.clone());
                let intact = blocking("verifying a cached blob", move || {
                    verify::check_blob(&*inner.store, &d, &*file, &inner.metrics)
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
            Ok(None) => Ok(None),
            Err(e) => Err(Error::io(format!("opening cached blob {digest}"), e)),
        }
    }
}

/// What an upstream check confirms for a repository.
#[derive(Debug, Clone, Copy)]
pub(super) enum Checked {
    Manifest,
    Blob,
}

impl Inner {
    /// Asks the upstream whether `loc`'s repository has `digest` (a HEAD) and
    /// links it when it does. Returns the size to expect.
    pub(super) async fn link_checked(
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
    pub(super) fn add_root_link(&self, loc: &Locator, digest: &Digest, size: Option<u64>) {
        if !self.links.insert(loc, digest, size) {
            return;
        }
        let (store, l, d) = (self.store.clone(), loc.clone(), digest.clone());
        tokio::task::spawn_blocking(move || {
            if let Err(e) = store.add_links(&l, &[(d.clone(), size)]) {
                warn!(repo = %l, digest = %d, error = %e, "could not record the link on disk; it holds until restart");
            }
        });
    }
}
