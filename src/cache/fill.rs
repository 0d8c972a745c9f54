//! Single-flight blob fills: one upstream download per (registry, digest),
//! streamed to every waiting client while it is still running. Per registry,
//! not per digest alone: a client of one registry must never make clients of
//! another wait on (or depend on) its download. Two registries filling the
//! same digest race; the first verified commit wins.
//!
//! The first miss becomes the leader and owns a [`FillWriter`]: it writes to a
//! file in `tmp/`, hashing as it goes, and publishes how many bytes are
//! safely on disk through a `watch` channel. Followers read the same file up
//! to that mark. Only a verified file is renamed into `blobs/`; anything else
//! is reported as [`FillState::Failed`] so followers abort instead of
//! completing with wrong bytes.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::watch;

use super::store::{Partial, Store};
use super::{Error, blocking};
use crate::oci::{Digest, Hasher, RegistryHost, RepoName};

/// What a fill is single-flight on.
pub type FillKey = (RegistryHost, Digest);

/// Progress of a fill, as followers see it.
#[derive(Debug, Clone)]
pub enum FillState {
    /// Waiting for the upstream's answer.
    Pending,
    /// `written` bytes are on disk and readable; `total` is the size the upstream announced.
    Growing {
        written: u64,
        total: Option<u64>,
    },
    /// Every byte is written and the digest verified: readers may send the
    /// last byte while the file is made durable and renamed into place.
    Verified {
        len: u64,
    },
    /// Verified and renamed into place.
    Complete {
        len: u64,
    },
    Failed(Arc<Error>),
}

/// A fill a follower can read: the temp file (kept open, so the data stays
/// reachable after the rename) and its progress.
#[derive(Clone)]
pub struct FillHandle {
    pub file: Arc<File>,
    pub progress: watch::Receiver<FillState>,
    /// The repository the download was asked for: a follower asking for
    /// another repository must be linked to the blob before it reads.
    pub repo: RepoName,
    /// Whether a client (not a preload) waits for it: its bytes go first on a capped link.
    pub interactive: Arc<AtomicBool>,
}

/// Fills in flight, by digest. std `Mutex`: held only to look up or insert,
/// never across `.await`, and only on the miss path (hits never touch it).
pub struct Fills {
    store: Arc<dyn Store>,
    /// A slot per fill: empty while its leader opens files, then the handle.
    inflight: Mutex<HashMap<FillKey, watch::Receiver<Option<FillHandle>>>>,
    /// Set on SIGTERM: a download cut short by the exit keeps its partial file.
    shutting_down: AtomicBool,
}

pub enum Joined {
    /// Nothing to fill: the blob is in the cache (or the leader gave up before starting).
    Cached,
    Leader(Box<FillWriter>, FillHandle),
    Follower(FillHandle),
}

/// A leader's slot until its handle is published: if the leader fails or is
/// dropped first, the slot goes, and its followers look in the cache again.
struct Unpublished {
    fills: Arc<Fills>,
    key: Option<FillKey>,
}

impl Drop for Unpublished {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.fills.remove(&key);
        }
    }
}

/// Waits for the leader to publish its handle.
async fn follow(mut slot: watch::Receiver<Option<FillHandle>>) -> Result<Joined, Error> {
    loop {
        if let Some(h) = slot.borrow_and_update().clone() {
            return Ok(Joined::Follower(h));
        }
        if slot.changed().await.is_err() {
            return Ok(Joined::Cached);
        }
    }
}

impl Fills {
    pub fn new(store: Arc<dyn Store>) -> Fills {
        Fills { store, inflight: Mutex::default(), shutting_down: AtomicBool::new(false) }
    }

    /// Joins the fill for `key`, or starts one. The map lock is held only to
    /// look up or insert a slot: the leader opens its files afterwards, on the
    /// blocking pool, and publishes the handle to followers waiting on the slot.
    ///
    /// The leader writes to the digest's partial file, adopting what an
    /// interrupted download left there; if another download holds that file
    /// (another registry's, or another process sharing the directory), it
    /// writes to a fresh file of its own. [`Joined::Cached`]: the blob is
    /// committed (or the leader could not start): look in the cache again.
    pub async fn join(self: &Arc<Self>, key: &FillKey, repo: &RepoName) -> Result<Joined, Error> {
        let role = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            match inflight.get(key) {
                Some(slot) => Err(slot.clone()),
                None => {
                    let (tx, rx) = watch::channel(None);
                    inflight.insert(key.clone(), rx);
                    Ok(tx)
                }
            }
        };
        match role {
            Ok(tx) => {
                let guard = Unpublished { fills: self.clone(), key: Some(key.clone()) };
                self.lead(key, repo, tx, guard).await
            }
            Err(slot) => follow(slot).await,
        }
    }

    async fn lead(
        self: &Arc<Self>,
        key: &FillKey,
        repo: &RepoName,
        slot: watch::Sender<Option<FillHandle>>,
        mut guard: Unpublished,
    ) -> Result<Joined, Error> {
        let digest = key.1.clone();
        let (store, d) = (self.store.clone(), digest.clone());
        let begun = blocking("starting a download", move || store.begin_blob(&d))
            .await?
            .map_err(|e| Error::io(format!("starting the download of {digest}"), e))?;
        let Some(partial) = begun else {
            return Ok(Joined::Cached);
        };
        let (tx, rx) = watch::channel(FillState::Pending);
        let handle = FillHandle {
            file: partial.file.clone(),
            progress: rx,
            repo: repo.clone(),
            interactive: Arc::new(AtomicBool::new(false)),
        };
        // Published: from here the writer owns the slot and removes it when done.
        slot.send_replace(Some(handle.clone()));
        guard.key = None;
        let writer = FillWriter {
            fills: self.clone(),
            key: key.clone(),
            hasher: Some(digest.algorithm().hasher()),
            digest,
            adopted: partial.adopted,
            partial,
            tx,
            written: 0,
            total: None,
            started: false,
            done: false,
        };
        Ok(Joined::Leader(Box::new(writer), handle))
    }

    /// The fill of `key` under way in this process, if any; never starts one.
    pub async fn following(&self, key: &FillKey) -> Result<Option<FillHandle>, Error> {
        let slot = self.inflight.lock().unwrap_or_else(|p| p.into_inner()).get(key).cloned();
        let Some(slot) = slot else { return Ok(None) };
        match follow(slot).await? {
            Joined::Follower(h) => Ok(Some(h)),
            Joined::Cached | Joined::Leader(..) => Ok(None),
        }
    }

    /// From now on, downloads cut short keep their partial files.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    pub fn in_flight(&self) -> usize {
        self.inflight.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether this process is downloading `d` (from any registry).
    pub fn in_flight_for(&self, d: &Digest) -> bool {
        self.inflight.lock().unwrap_or_else(|p| p.into_inner()).keys().any(|(_, k)| k == d)
    }

    fn remove(&self, key: &FillKey) {
        self.inflight.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }
}

/// The leader's side of a fill. Dropped without [`commit`](Self::commit), it
/// publishes `Failed` and removes its temp file.
pub struct FillWriter {
    fills: Arc<Fills>,
    key: FillKey,
    digest: Digest,
    hasher: Option<Hasher>,
    partial: Partial,
    tx: watch::Sender<FillState>,
    written: u64,
    /// Bytes an interrupted download left in the partial file, not yet re-hashed.
    adopted: u64,
    total: Option<u64>,
    started: bool,
    done: bool,
}

impl FillWriter {
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Takes over what an interrupted download left: re-hashes those bytes
    /// (local disk reads, far cheaper than the link) so the download goes on
    /// from there. Returns how many bytes were adopted.
    pub async fn adopt(&mut self) -> Result<u64, Error> {
        let len = std::mem::take(&mut self.adopted);
        if len == 0 {
            return Ok(0);
        }
        let file = self.partial.file.clone();
        let mut hasher = self.take_hasher()?;
        let (hasher, read) = blocking("re-reading an interrupted download", move || {
            let mut buf = vec![0u8; 1 << 20];
            let mut pos = 0u64;
            while pos < len {
                let want = buf.len().min((len - pos) as usize);
                match file.read_at(&mut buf[..want], pos) {
                    Ok(0) => break,
                    Ok(n) => {
                        hasher.update(&buf[..n]);
                        pos += n as u64;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return (hasher, Err(e)),
                }
            }
            (hasher, Ok(pos))
        })
        .await?;
        self.hasher = Some(hasher);
        let n = read.map_err(|e| Error::io(format!("re-reading {}", self.partial.path.display()), e))?;
        self.written = n;
        Ok(n)
    }

    /// The upstream answered: the blob is `total` bytes long (if it said).
    /// A resumed download keeps the size it first learnt.
    pub fn start(&mut self, total: Option<u64>) {
        self.started = true;
        self.total = self.total.or(total);
        self.tx.send_replace(FillState::Growing { written: self.written, total: self.total });
    }

    /// Whether the upstream has answered at least once: only a started
    /// download is resumed; a first request that fails fails its clients at once.
    /// The blob's size, once the upstream said.
    pub fn total(&self) -> Option<u64> {
        self.total
    }

    pub fn is_started(&self) -> bool {
        self.started
    }

    /// Whether any client is still reading this fill (the in-flight map holds
    /// one receiver of its own).
    pub fn has_clients(&self) -> bool {
        self.tx.receiver_count() > 1
    }

    /// Appends a chunk and publishes it. The write and the hashing run on the
    /// blocking pool so a fast upstream does not stall the request threads.
    pub async fn write(&mut self, chunk: Bytes) -> Result<(), Error> {
        if self.total.is_some_and(|t| self.written + chunk.len() as u64 > t) {
            return Err(Error::TooLong { digest: self.digest.clone() });
        }
        let file = self.partial.file.clone();
        let mut hasher = self.take_hasher()?;
        let offset = self.written;
        let (hasher, result) = blocking("writing a download", move || {
            let r = file.write_all_at(&chunk, offset).map(|()| chunk.len());
            hasher.update(&chunk);
            (hasher, r)
        })
        .await?;
        self.hasher = Some(hasher);
        let n = result.map_err(|e| Error::io(format!("writing {}", self.partial.path.display()), e))?;
        self.written += n as u64;
        self.tx.send_replace(FillState::Growing { written: self.written, total: self.total });
        Ok(())
    }

    /// Verifies the digest, makes the file durable and renames it into place.
    /// On failure every follower is told why.
    pub async fn commit(mut self) -> Result<u64, Error> {
        match self.verify_and_publish().await {
            Ok(len) => {
                self.done = true;
                self.tx.send_replace(FillState::Complete { len });
                self.fills.remove(&self.key);
                Ok(len)
            }
            Err(e) => {
                self.finish_failed(Arc::new(e.clone()));
                Err(e)
            }
        }
    }

    async fn verify_and_publish(&mut self) -> Result<u64, Error> {
        let actual = self.take_hasher()?.finish();
        if actual != self.digest {
            return Err(Error::DigestMismatch { expected: self.digest.clone(), actual });
        }
        if let Some(total) = self.total.filter(|t| *t != self.written) {
            return Err(Error::Truncated { digest: self.digest.clone(), got: self.written, expected: total });
        }
        // Clients finish now; the fsyncs of the commit are the cache's
        // business, not on their critical path (a cold pull waited on them).
        self.tx.send_replace(FillState::Verified { len: self.written });
        let (store, digest, len) = (self.fills.store.clone(), self.digest.clone(), self.written);
        let partial =
            Partial { file: self.partial.file.clone(), adopted: 0, path: self.partial.path.clone() };
        blocking("committing a download", move || store.commit_blob(&partial, &digest, len))
            .await?
            .map_err(|e| Error::io(format!("committing {}", self.partial.path.display()), e))?;
        Ok(self.written)
    }

    /// Ends the fill with `error`, which every follower receives.
    pub fn fail(mut self, error: Error) {
        self.finish_failed(Arc::new(error));
    }

    fn finish_failed(&mut self, error: Arc<Error>) {
        if self.done {
            return;
        }
        self.done = true;
        self.fills.remove(&self.key);
        // Cut short by the exit: keep the bytes for the next start to resume.
        // Failed for any other reason (wrong bytes, given up): start afresh next time.
        let keep = self.fills.shutting_down.load(Ordering::SeqCst);
        self.fills.store.abandon_blob(&self.partial, keep);
        self.tx.send_replace(FillState::Failed(error));
    }
}

impl FillWriter {
    /// The running hash; absent only while a blocking write holds it, which
    /// `&mut self` rules out, so its absence is a bug worth a clear error.
    fn take_hasher(&mut self) -> Result<Hasher, Error> {
        self.hasher.take().ok_or_else(|| Error::FillDropped { digest: self.digest.clone() })
    }
}

impl Drop for FillWriter {
    fn drop(&mut self) {
        let digest = self.digest.clone();
        self.finish_failed(Arc::new(Error::FillDropped { digest }));
    }
}

#[cfg(test)]
#[path = "fill_tests.rs"]
pub(crate) mod tests;
