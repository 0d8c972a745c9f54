//! Leases in the bucket: which replica downloads a blob, so that clients
//! spread over several replicas cost one upstream fetch, not one per replica.
//!
//! A lease is a small JSON object (`leases/<alg>-<hex>`): the holder, the
//! address other replicas stream the download from, and when it expires. It
//! is created with `If-None-Match: *`, renewed every third of [`TTL`] with
//! `If-Match` on the last ETag, taken over (expired, or its holder's peer
//! address not answering) with `If-Match` on the ETag read, and removed when
//! the download ends. Every write carries a fresh expiry, so no two bodies
//! (and, on S3, no two ETags) are the same.
//!
//! A lease saves upstream traffic; it guarantees nothing else. Whatever it
//! gets wrong (a takeover racing a holder that was only slow, a clock off by
//! more than [`TTL`]) costs at worst a second download of the same bytes,
//! which are verified and committed like any other.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};

use super::bucket::Bucket;
use crate::cache::store::Claim;

/// How long a lease holds without renewal: how long the clients of a
/// replica killed mid-download wait before another takes over (sooner when
/// its peer address refuses connections).
pub const TTL: Duration = Duration::from_secs(10);

/// This process, as its leases name it.
#[derive(Debug, Clone)]
pub struct Holder {
    /// Random per process: a restarted replica does not mistake its
    /// predecessor's lease for its own.
    pub owner: String,
    /// Where other replicas stream its downloads from (`storage.s3.peers.advertise`).
    pub peer: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct Lease {
    owner: String,
    peer: Option<String>,
    /// Unix milliseconds.
    expires: u64,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Holder {
    fn body(&self) -> PutPayload {
        let lease = Lease {
            owner: self.owner.clone(),
            peer: self.peer.clone(),
            expires: now_ms() + TTL.as_millis() as u64,
        };
        PutPayload::from(serde_json::to_vec(&lease).unwrap_or_default())
    }
}

enum Outcome {
    Won(Option<String>),
    Lost(Option<String>),
}

/// Claims `key` for `me` (see [`super::Store::claim_fill`]).
pub fn claim(bucket: &Arc<Bucket>, key: &Key, me: &Holder, take_over: bool) -> std::io::Result<Claim> {
    let (b, k, holder) = (bucket.clone(), key.clone(), me.clone());
    let outcome = bucket.run(async move { contend(&b.objects, &k, &holder, take_over).await })?;
    match outcome.map_err(|e| bucket.io(e))? {
        Outcome::Lost(peer) => Ok(Claim::Elsewhere { peer }),
        Outcome::Won(etag) => Ok(Claim::Ours(Box::new(hold(bucket, key.clone(), me.clone(), etag)))),
    }
}

async fn contend(
    objects: &impl ObjectStore,
    key: &Key,
    me: &Holder,
    take_over: bool,
) -> Result<Outcome, object_store::Error> {
    // A few rounds: each loses only to a write that landed in between.
    for _ in 0..4 {
        match objects.put_opts(key, me.body(), PutMode::Create.into()).await {
            Ok(r) => return Ok(Outcome::Won(r.e_tag)),
            Err(object_store::Error::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
        let got = match objects.get(key).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => continue,
            Err(e) => return Err(e),
        };
        let etag = got.meta.e_tag.clone();
        let held: Option<Lease> = serde_json::from_slice(&got.bytes().await?).ok();
        if let Some(l) = &held {
            // Our own address in another owner's lease: our predecessor's, before a restart.
            let live = l.expires > now_ms() && !(l.peer.is_some() && l.peer == me.peer);
            if l.owner != me.owner && live && !take_over {
                return Ok(Outcome::Lost(l.peer.clone()));
            }
        }
        let Some(etag) = etag else { return Ok(Outcome::Lost(None)) };
        let mode = PutMode::Update(UpdateVersion { e_tag: Some(etag), version: None });
        match objects.put_opts(key, me.body(), mode.into()).await {
            Ok(r) => return Ok(Outcome::Won(r.e_tag)),
            Err(object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(Outcome::Lost(None))
}

/// A held lease: renewed until dropped, then removed if still ours.
struct Held {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// A `Mutex` only to make the guard `Sync`; locked once, in `drop`.
    released: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
}

impl Drop for Held {
    /// Off any runtime (a command about to exit), waits for the release:
    /// otherwise the lease would outlive the process until it expires. On a
    /// runtime (the server) it is released in the background.
    fn drop(&mut self) {
        drop(self.stop.take());
        if tokio::runtime::Handle::try_current().is_err()
            && let Ok(released) = self.released.lock()
        {
            let _ = released.recv_timeout(Duration::from_secs(5));
        }
    }
}

fn hold(bucket: &Arc<Bucket>, key: Key, me: Holder, etag: Option<String>) -> Held {
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let (done, released) = std::sync::mpsc::sync_channel(1);
    let b = bucket.clone();
    bucket.runtime.spawn(async move {
        // Said however the task ends.
        let _done = Released(done);
        let mut etag = etag;
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                () = tokio::time::sleep(TTL / 3) => {}
            }
            let Some(current) = etag.clone() else { return };
            let mode = PutMode::Update(UpdateVersion { e_tag: Some(current), version: None });
            match b.objects.put_opts(&key, me.body(), mode.into()).await {
                Ok(r) => etag = r.e_tag,
                // Taken over (we were thought dead): the download goes on,
                // the other replica's may too; the lease is theirs now.
                Err(object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. }) => {
                    return;
                }
                // The bucket did not answer: try again at the next turn.
                Err(_) => {}
            }
        }
        // S3 cannot delete on a condition: look, then delete. A takeover in
        // between loses its lease, which costs at most a second download.
        if let Ok(meta) = b.objects.head(&key).await
            && meta.e_tag.is_some()
            && meta.e_tag == etag
        {
            let _ = b.objects.delete(&key).await;
        }
    });
    Held { stop: Some(stop), released: std::sync::Mutex::new(released) }
}

struct Released(std::sync::mpsc::SyncSender<()>);

impl Drop for Released {
    fn drop(&mut self) {
        let _ = self.0.try_send(());
    }
}
