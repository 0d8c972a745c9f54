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
    }
}
