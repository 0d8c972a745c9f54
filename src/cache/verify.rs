//! Verifying what is on disk, for bit rot and tampering after a commit.
//!
//! What is checked when:
//! - at start-up, every manifest is re-hashed (they are small) and skipped if wrong;
//! - on every blob hit, the file's size is compared with the size its
//!   descriptor (or the upstream) stated; a mismatch re-hashes the blob;
//! - a full re-hash of every blob runs in the background at low priority
//!   (`verify.interval`, `verify.rate`) and on demand (`ociregistry verify`).
//!
//! A blob that fails is moved to `quarantine/` (never deleted: the operator
//! may want to look), counted in `ociregistry_quarantined_blobs_total`, and
//! fetched again on the next request.

use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::store::{ReadAt, Store};
use std::sync::Arc;

use crate::metrics::Metrics;
use crate::oci::{Digest, Hasher};

/// What a full verification found.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub blobs: u64,
    pub manifests: u64,
    pub bytes: u64,
    /// Digests moved to quarantine.
    pub quarantined: Vec<Digest>,
    /// Files that could not be read (left in place).
    pub unreadable: u64,
}

/// Re-hashes the open blob `reader` of `d`; a mismatch quarantines it.
/// Returns whether it is intact.
pub fn check_blob(
    store: &dyn Store,
    d: &Digest,
    reader: &dyn ReadAt,
    metrics: &Metrics,
) -> std::io::Result<bool> {
    let ok = hash(d.algorithm().hasher(), reader, None)? == *d;
    if !ok {
        store.quarantine_blob(d)?;
        metrics.quarantined_blobs.inc();
    }
    Ok(ok)
}

/// Re-hashes every blob and manifest, at most `rate` bytes per second if
/// given; what fails is quarantined.
pub fn verify_all(store: &dyn Store, rate: Option<u64>, metrics: &Metrics) -> Report {
    let mut report = Report::default();
    let mut throttle = rate.map(Throttle::new);
    for (d, len) in store.blobs() {
        let result = store.open_blob(&d).and_then(|opened| match opened {
            Some((reader, _)) => hash(d.algorithm().hasher(), &*reader, throttle.as_mut()).map(Some),
            None => Ok(None), // removed meanwhile
        });
        match result {
            Ok(None) => {}
            Ok(Some(actual)) => {
                report.blobs += 1;
                report.bytes += len;
                if actual != d {
                    warn!(digest = %d, %actual, "cached blob is corrupt; quarantined");
                    match store.quarantine_blob(&d) {
                        Ok(()) => metrics.quarantined_blobs.inc(),
                        Err(e) => {
                            warn!(digest = %d, error = %e, "could not quarantine a corrupt blob");
                            0
                        }
                    };
                    report.quarantined.push(d);
                }
            }
            Err(e) => {
                warn!(digest = %d, error = %e, "could not read a cached blob to verify it");
                report.unreadable += 1;
            }
        }
    }
    for m in store.manifests() {
        match m {
            Ok(_) => report.manifests += 1,
            Err(s) => {
                report.manifests += 1;
                let Some(d) = s.digest else {
                    report.unreadable += 1;
                    continue;
                };
                warn!(digest = %d, error = %s.why, "cached manifest is corrupt; quarantined");
                if let Err(e) = store.quarantine_manifest(&d) {
                    warn!(digest = %d, error = %e, "could not quarantine a corrupt manifest");
                }
                report.quarantined.push(d);
            }
        }
    }
    report
}

/// Runs [`verify_all`] every `interval` on a thread of its own at the lowest
/// CPU priority, so it never competes with serving.
pub fn spawn_background(store: Arc<dyn Store>, interval: Duration, rate: Option<u64>, metrics: Arc<Metrics>) {
    let spawned = std::thread::Builder::new().name("verify".into()).spawn(move || {
        // SAFETY: setpriority on the calling thread (who = 0 means this thread on
        // Linux); no pointers involved. Failure only leaves the default priority.
        unsafe {
            libc::setpriority(libc::PRIO_PROCESS, 0, 19);
        }
        loop {
            std::thread::sleep(interval);
            let started = Instant::now();
            let r = verify_all(&*store, rate, &metrics);
            info!(
                blobs = r.blobs,
                manifests = r.manifests,
                bytes = r.bytes,
                quarantined = r.quarantined.len(),
                unreadable = r.unreadable,
                took = %humantime::format_duration(Duration::from_secs(started.elapsed().as_secs())),
                "background verification of the cache finished"
            );
        }
    });
    if let Err(e) = spawned {
        warn!(error = %e, "could not start background verification");
    }
}

fn hash(mut hasher: Hasher, r: &dyn ReadAt, mut throttle: Option<&mut Throttle>) -> std::io::Result<Digest> {
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    loop {
        let n = match r.read_at(&mut buf, pos) {
            Ok(0) => return Ok(hasher.finish()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        pos += n as u64;
        if let Some(t) = throttle.as_deref_mut() {
            t.spend(n as u64);
        }
    }
}

/// Sleeps so that reading stays under `rate` bytes per second.
struct Throttle {
    rate: u64,
    started: Instant,
    spent: u64,
}

impl Throttle {
    fn new(rate: u64) -> Throttle {
        Throttle { rate: rate.max(1), started: Instant::now(), spent: 0 }
    }

    fn spend(&mut self, n: u64) {
        self.spent += n;
        let due = Duration::from_secs_f64(self.spent as f64 / self.rate as f64);
        if let Some(wait) = due.checked_sub(self.started.elapsed()) {
            std::thread::sleep(wait);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::store::fs::FsStore;

    #[test]
    fn quarantines_what_fails_and_keeps_what_passes() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::new(dir.path());
        store.prepare().unwrap();
        let good = Digest::of(crate::oci::Algorithm::Sha256, b"good");
        let bad = Digest::of(crate::oci::Algorithm::Sha256, b"bad");
        store.put_blob(&good, b"good").unwrap();
        store.put_blob(&bad, b"bXd").unwrap();
        let r = verify_all(&store, None, &Metrics::new());
        assert_eq!((r.blobs, r.quarantined.clone()), (2, vec![bad.clone()]));
        assert!(store.open_blob(&good).unwrap().is_some());
        assert!(store.open_blob(&bad).unwrap().is_none());
        assert!(dir.path().join("quarantine").join(format!("sha256-{}", bad.hex())).exists());
        let (reader, _) = store.open_blob(&good).unwrap().unwrap();
        assert!(check_blob(&store, &good, &*reader, &Metrics::new()).unwrap());
    }
}
