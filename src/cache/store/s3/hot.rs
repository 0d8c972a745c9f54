//! The local disk tier of a bucket-backed cache (`storage.s3.localCacheSize`):
//! blobs this replica fetched or served lately, kept in `imagePath` so a hit
//! is a read from the page cache, not a request to the bucket, and so hot
//! blobs are still served while the bucket does not answer.
//!
//! The tier is the staging directory's own `blobs/`: a download this replica
//! verified is renamed there after its upload, and a blob first read from the
//! bucket is copied there in the background. Least recently opened goes first
//! once the tier is over its size. Blobs never change, so a copy here is
//! never stale; removing one from the bucket removes it here too.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use crate::cache::store::fs::FsStore;
use crate::cache::store::{ReadAt, Store};
use crate::oci::Digest;

#[derive(Default)]
struct Lru {
    /// Each blob's length and when it was last opened (a counter).
    entries: HashMap<Digest, (u64, u64)>,
    by_use: BTreeMap<u64, Digest>,
    total: u64,
    tick: u64,
}

impl Lru {
    fn touch(&mut self, d: &Digest, len: u64) {
        self.tick += 1;
        if let Some((_, old)) = self.entries.insert(d.clone(), (len, self.tick)) {
            self.by_use.remove(&old);
        } else {
            self.total += len;
        }
        self.by_use.insert(self.tick, d.clone());
    }

    fn forget(&mut self, d: &Digest) {
        if let Some((len, tick)) = self.entries.remove(d) {
            self.by_use.remove(&tick);
            self.total -= len;
        }
    }

    /// The least recently opened blob while over `max`.
    fn over(&mut self, max: u64) -> Option<Digest> {
        if self.total <= max {
            return None;
        }
        let (_, d) = self.by_use.pop_first()?;
        if let Some((len, _)) = self.entries.remove(&d) {
            self.total -= len;
        }
        Some(d)
    }
}

pub struct Hot {
    max: u64,
    lru: Mutex<Lru>,
    /// Blobs being copied in from the bucket now.
    copying: Mutex<HashSet<Digest>>,
}

impl Hot {
    pub fn new(max: u64) -> Arc<Hot> {
        Arc::new(Hot { max, lru: Mutex::default(), copying: Mutex::default() })
    }

    fn lru(&self) -> std::sync::MutexGuard<'_, Lru> {
        self.lru.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts what an earlier run left in the tier.
    pub fn load(&self, tier: &FsStore) {
        let mut lru = self.lru();
        for (d, len) in tier.blobs() {
            lru.touch(&d, len);
        }
    }

    /// The blob from the tier, if it is there.
    pub fn open(&self, tier: &FsStore, d: &Digest) -> Option<(Arc<dyn ReadAt>, u64)> {
        let (file, len) = tier.open_blob(d).ok()??;
        self.lru().touch(d, len);
        Some((file, len))
    }

    /// Records a blob just put in the tier, evicting what no longer fits.
    pub fn added(&self, tier: &FsStore, d: &Digest, len: u64) {
        let evicted: Vec<Digest> = {
            let mut lru = self.lru();
            lru.touch(d, len);
            std::iter::from_fn(|| lru.over(self.max)).collect()
        };
        for e in evicted {
            // An open reader keeps its copy: removal is an unlink.
            let _ = tier.remove_blob(&e);
        }
    }

    pub fn remove(&self, tier: &FsStore, d: &Digest) {
        self.lru().forget(d);
        let _ = tier.remove_blob(d);
    }

    /// Whether a copy of `d` may start now (none is under way); call
    /// [`Hot::copied`] when it ends, however it ends.
    pub fn start_copy(&self, d: &Digest) -> bool {
        self.copying.lock().unwrap_or_else(|p| p.into_inner()).insert(d.clone())
    }

    pub fn copied(&self, d: &Digest) {
        self.copying.lock().unwrap_or_else(|p| p.into_inner()).remove(d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Algorithm;

    #[test]
    fn the_least_recently_opened_go_first_once_over_the_size() {
        let dir = tempfile::tempdir().unwrap();
        let tier = FsStore::new(dir.path());
        tier.prepare().unwrap();
        let hot = Hot::new(25);
        let blobs: Vec<(Digest, Vec<u8>)> =
            (0..3u8).map(|i| vec![i; 10]).map(|b| (Digest::of(Algorithm::Sha256, &b), b)).collect();
        for (d, b) in &blobs[..2] {
            tier.put_blob(d, b).unwrap();
            hot.added(&tier, d, 10);
        }
        assert!(hot.open(&tier, &blobs[0].0).is_some(), "the first is opened again: now the most recent");
        let (d, b) = &blobs[2];
        tier.put_blob(d, b).unwrap();
        hot.added(&tier, d, 10);
        assert!(hot.open(&tier, &blobs[1].0).is_none(), "the least recently opened was evicted");
        assert!(hot.open(&tier, &blobs[0].0).is_some());
        assert!(hot.open(&tier, &blobs[2].0).is_some());
        assert_eq!(hot.lru().total, 20);
    }
}
