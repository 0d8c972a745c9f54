//! When images were last pulled: recorded in memory on every manifest
//! request (one shard lock, no I/O), persisted in batches by housekeeping.
//! Eviction and `prune --accessed-before` go by them.

use std::collections::HashMap;
use std::time::SystemTime;

use dashmap::DashMap;
use tracing::warn;

use super::Locator;
use super::store::Store;
use crate::oci::Reference;

#[derive(Default)]
pub struct Pulls {
    /// Pulls not yet written, by repository and reference (tag or digest).
    pending: DashMap<(Locator, String), SystemTime>,
}

impl Pulls {
    pub fn record(&self, loc: &Locator, reference: &Reference) {
        self.pending.insert((loc.clone(), reference.to_string()), SystemTime::now());
    }

    /// Writes what was recorded since the last flush.
    pub fn flush(&self, store: &dyn Store) {
        let keys: Vec<(Locator, String)> = self.pending.iter().map(|e| e.key().clone()).collect();
        let mut by_repo: HashMap<Locator, Vec<(String, SystemTime)>> = HashMap::new();
        for key in keys {
            if let Some(((loc, reference), at)) = self.pending.remove(&key) {
                by_repo.entry(loc).or_default().push((reference, at));
            }
        }
        for (loc, pulls) in by_repo {
            if let Err(e) = store.record_pulls(&loc, &pulls) {
                warn!(repo = %loc, error = %e, "could not record pull times; eviction may take recently pulled images for idle ones");
            }
        }
    }
}
