//! Manifest bodies: kept in the store, with the most used held in memory up
//! to `manifestCacheBytes`, so memory does not grow with what is cached (60
//! cached 4 MiB manifests once cost 240 MiB of RSS, at every start).
//!
//! A body read back is checked against its digest once, when it enters
//! memory: a manifest corrupted on disk is never served.

use bytes::Bytes;

use crate::oci::Digest;

pub struct Bodies {
    memory: moka::sync::Cache<Digest, Bytes>,
}

impl Bodies {
    pub fn new(max_bytes: u64) -> Bodies {
        let memory = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_, body: &Bytes| u32::try_from(body.len()).unwrap_or(u32::MAX))
            .build();
        Bodies { memory }
    }

    pub fn get(&self, d: &Digest) -> Option<Bytes> {
        self.memory.get(d)
    }

    /// A body known to match `d` (fetched and verified, or read and checked).
    pub fn insert(&self, d: &Digest, body: Bytes) {
        self.memory.insert(d.clone(), body);
        // moka evicts in batches, after dozens of writes: 64 manifests of
        // 4 MiB could be held past the bound. Inserts follow a disk read or
        // an upstream fetch, so evicting at once costs little.
        self.memory.run_pending_tasks();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Algorithm;

    #[test]
    fn bodies_held_stay_under_the_bound_whatever_is_inserted() {
        let bodies = Bodies::new(4 << 20);
        let digests: Vec<Digest> =
            (0..40u32).map(|i| Digest::of(Algorithm::Sha256, &i.to_le_bytes())).collect();
        for d in &digests {
            bodies.insert(d, Bytes::from(vec![0u8; 1 << 20]));
            let held: u64 = digests.iter().filter_map(|d| bodies.get(d)).map(|b| b.len() as u64).sum();
            assert!(held <= 4 << 20, "{held} bytes held, over the 4 MiB bound");
        }
        assert!(digests.iter().any(|d| bodies.get(d).is_some()), "recent bodies are kept");
    }
}
