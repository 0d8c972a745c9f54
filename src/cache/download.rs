//! The download loop: one blob from the upstream into its fill, resuming
//! with `Range` requests when the connection breaks.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, warn};

use super::fill::{FillHandle, FillState, FillWriter};
use super::{Error, Inner, Locator};
use crate::oci::{Digest, RepoName};
use crate::upstream::{self, BlobStream, Class, ErrorKind};

/// Where a fill's bytes come from: an upstream registry, or a test's
/// scripted source (cut, wrong, ignoring `Range`).
pub(super) trait BlobSource: Send + Sync + 'static {
    /// The blob from `offset` on, up to `end` inclusive when given (a
    /// `Range` request when either is set).
    fn fetch<'a>(
        &'a self,
        repo: &'a RepoName,
        digest: &'a Digest,
        offset: u64,
        end: Option<u64>,
    ) -> BoxFuture<'a, Result<BlobStream, upstream::Error>>;

    /// Waits until `bytes` more may come over the link (bandwidth caps).
    fn pace(&self, _bytes: usize, _class: Class) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    /// Under a bandwidth cap, how many bytes to ask for at once: the link
    /// carries only what was asked for, however large the TCP buffers grow.
    fn window(&self) -> Option<u64> {
        None
    }
}

impl BlobSource for upstream::Registry {
    fn fetch<'a>(
        &'a self,
        repo: &'a RepoName,
        digest: &'a Digest,
        offset: u64,
        end: Option<u64>,
    ) -> BoxFuture<'a, Result<BlobStream, upstream::Error>> {
        Box::pin(self.blob(repo, digest, offset, end))
    }

    fn pace(&self, bytes: usize, class: Class) -> BoxFuture<'_, ()> {
        Box::pin(upstream::Registry::pace(self, bytes, class))
    }

    fn window(&self) -> Option<u64> {
        upstream::Registry::window(self)
    }
}

/// Downloads one blob into its fill, resuming with `Range` requests when the
/// connection breaks. Runs on its own task, so the blob is cached even when
/// every client that asked for it has gone (within the background bound).
pub(super) struct FillJob {
    pub(super) cache: Arc<Inner>,
    pub(super) source: Arc<dyn BlobSource>,
    pub(super) loc: Locator,
    pub(super) digest: Digest,
    pub(super) resume_attempts: u32,
    pub(super) background: Arc<Semaphore>,
    /// Set once a client (not a preload) waits for the blob.
    pub(super) interactive: Arc<std::sync::atomic::AtomicBool>,
    /// Room under the size cap, held until the download ends.
    pub(super) _room: Option<super::capacity::Reservation>,
}

impl FillJob {
    pub(super) async fn run(self, mut writer: FillWriter) {
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
        let window = self.source.window();
        let result = loop {
            let from = writer.written();
            match self.download(&mut writer, &mut background, window).await {
                // A window of a paced download: ask for the next one (a window
                // that brought nothing is a failure, counted against the attempts).
                Ok(())
                    if window.is_some_and(|w| more_to_fetch(&writer, from, w)) && writer.written() > from => {
                }
                Ok(())
                    if window.is_some()
                        && writer.written() == from
                        && writer.total().is_some_and(|t| from < t) =>
                {
                    let expected = writer.total().unwrap_or_default();
                    let e = Error::Truncated { digest: self.digest.clone(), got: from, expected };
                    if attempt >= self.resume_attempts {
                        break Err(e);
                    }
                    attempt += 1;
                    tokio::time::sleep(resume_wait(attempt, &e)).await;
                }
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
        window: Option<u64>,
    ) -> Result<(), Error> {
        let have = writer.written();
        // Paced: the window's bytes are taken from the bucket before they are asked for.
        let end = match window {
            Some(w) => {
                let stop = writer.total().map_or(have + w, |t| t.min(have + w));
                if stop <= have && writer.total().is_some() {
                    return Ok(()); // all there: the commit checks it
                }
                self.source.pace(stop.saturating_sub(have) as usize, self.class(writer)).await;
                Some(stop.max(have + 1) - 1)
            }
            None => None,
        };
        let mut stream = self.source.fetch(&self.loc.repo, &self.digest, have, end).await?;
        // An upstream that ignores Range restarts at 0: skip what we already have.
        let mut skip = have.saturating_sub(stream.offset);
        if have > 0 && window.is_none() {
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
            // Unpaced windows (an upstream that ignored Range) are paced as read.
            if window.is_none() || !stream.ranged {
                self.source.pace(chunk.len(), self.class(writer)).await;
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

impl FillJob {
    /// A client's download goes first; a preload's, or one all clients left, yields.
    fn class(&self, writer: &FillWriter) -> Class {
        if self.interactive.load(Ordering::Relaxed) && writer.has_clients() {
            Class::Interactive
        } else {
            Class::Background
        }
    }
}

/// After a window that started at `from`: whether the blob goes on.
fn more_to_fetch(writer: &FillWriter, from: u64, window: u64) -> bool {
    match writer.total() {
        Some(total) => writer.written() < total,
        // No size given: a full window means there may be more.
        None => writer.written() - from >= window,
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
pub(super) async fn wait_started(handle: &FillHandle, digest: &Digest) -> Result<Option<u64>, Error> {
    let mut rx = handle.progress.clone();
    loop {
        match &*rx.borrow_and_update() {
            FillState::Pending => {}
            FillState::Growing { total, .. } => return Ok(*total),
            FillState::Verified { len } | FillState::Complete { len } => return Ok(Some(*len)),
            FillState::Failed(e) => return Err((**e).clone()),
        }
        if rx.changed().await.is_err() {
            return Err(Error::FillDropped { digest: digest.clone() });
        }
    }
}

#[cfg(test)]
#[path = "download_tests.rs"]
mod tests;
