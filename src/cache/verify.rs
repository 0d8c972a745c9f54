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

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::layout::Layout;
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

/// Re-hashes the open blob file `file` of `d`; a mismatch quarantines it.
/// Returns whether it is intact.
pub fn check_blob(layout: &Layout, d: &Digest, file: File, metrics: &Metrics) -> std::io::Result<bool> {
    let ok = hash_reader(d.algorithm().hasher(), file, None)? == *d;
    if !ok {
        quarantine(layout, &layout.blob(d), d, "")?;
        metrics.quarantined_blobs.inc();
    }
    Ok(ok)
}

/// Re-hashes every blob and manifest, at most `rate` bytes per second if
/// given; what fails is quarantined.
pub fn verify_all(layout: &Layout, rate: Option<u64>, metrics: &Metrics) -> Report {
    let mut report = Report::default();
    let mut throttle = rate.map(Throttle::new);
    for (path, d) in files(&layout.blobs()) {
        let result =
            File::open(&path).and_then(|f| hash_reader(d.algorithm().hasher(), f, throttle.as_mut()));
        match result {
            Ok(actual) => {
                report.blobs += 1;
                report.bytes += std::fs::metadata(&path).map_or(0, |m| m.len());
                if actual != d {
                    warn!(digest = %d, %actual, "cached blob is corrupt; quarantined");
                    match quarantine(layout, &path, &d, "") {
                        Ok(()) => metrics.quarantined_blobs.inc(),
                        Err(e) => {
                            warn!(file = %path.display(), error = %e, "could not quarantine a corrupt blob");
                            0
                        }
                    };
                    report.quarantined.push(d);
                }
            }
            Err(e) => {
                warn!(file = %path.display(), error = %e, "could not read a cached blob to verify it");
                report.unreadable += 1;
            }
        }
    }
    for (path, d) in files(&layout.manifests()) {
        let Ok(raw) = std::fs::read(&path) else {
            report.unreadable += 1;
            continue;
        };
        report.manifests += 1;
        let body = raw.iter().position(|b| *b == b'\n').map_or(&raw[..0], |n| &raw[n + 1..]);
        if Digest::of(d.algorithm(), body) != d {
            warn!(digest = %d, "cached manifest is corrupt; quarantined");
            if let Err(e) = quarantine(layout, &path, &d, ".manifest") {
                warn!(file = %path.display(), error = %e, "could not quarantine a corrupt manifest");
            }
            report.quarantined.push(d);
        }
    }
    report
}

/// Runs [`verify_all`] every `interval` on a thread of its own at the lowest
/// CPU priority, so it never competes with serving.
pub fn spawn_background(layout: Layout, interval: Duration, rate: Option<u64>, metrics: Arc<Metrics>) {
    let spawned = std::thread::Builder::new().name("verify".into()).spawn(move || {
        // SAFETY: setpriority on the calling thread (who = 0 means this thread on
        // Linux); no pointers involved. Failure only leaves the default priority.
        unsafe {
            libc::setpriority(libc::PRIO_PROCESS, 0, 19);
        }
        loop {
            std::thread::sleep(interval);
            let started = Instant::now();
            let r = verify_all(&layout, rate, &metrics);
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

fn quarantine(layout: &Layout, path: &Path, d: &Digest, suffix: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(layout.quarantine())?;
    let mut target = layout.quarantined(d).into_os_string();
    target.push(suffix);
    std::fs::rename(path, target)
}

fn hash_reader(
    mut hasher: Hasher,
    mut r: impl Read,
    mut throttle: Option<&mut Throttle>,
) -> std::io::Result<Digest> {
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok(hasher.finish()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
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

/// `<dir>/<alg>/<xx>/<hex>` files and the digest their path names.
fn files(dir: &Path) -> impl Iterator<Item = (std::path::PathBuf, Digest)> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .filter_map(|e| {
            let path = e.into_path();
            let hex = path.file_name()?.to_str()?;
            let alg = path.parent()?.parent()?.file_name()?.to_str()?;
            let d = Digest::parse(&format!("{alg}:{hex}")).ok()?;
            Some((path, d))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quarantines_what_fails_and_keeps_what_passes() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let good = Digest::of(crate::oci::Algorithm::Sha256, b"good");
        let bad = Digest::of(crate::oci::Algorithm::Sha256, b"bad");
        for (d, bytes) in [(&good, &b"good"[..]), (&bad, &b"bXd"[..])] {
            let p = layout.blob(d);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, bytes).unwrap();
        }
        let r = verify_all(&layout, None, &Metrics::new());
        assert_eq!((r.blobs, r.quarantined.clone()), (2, vec![bad.clone()]));
        assert!(layout.blob(&good).exists());
        assert!(!layout.blob(&bad).exists());
        assert!(layout.quarantined(&bad).exists());
        assert!(
            check_blob(&layout, &good, File::open(layout.blob(&good)).unwrap(), &Metrics::new()).unwrap()
        );
    }
}
