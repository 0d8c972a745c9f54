//! What can go wrong in the cache, each with its cause and the digest or
//! path involved; the server maps each to a status.

use std::sync::Arc;

use crate::oci::{Digest, ManifestError, RegistryHost};
use crate::upstream;

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Upstream(#[from] upstream::Error),
    #[error("upstream {registry} sent an invalid manifest: {source}")]
    InvalidManifest { registry: RegistryHost, source: ManifestError },
    #[error("upstream sent content for {expected} whose digest is {actual}; it was not cached")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("upstream sent more bytes than announced for {digest}")]
    TooLong { digest: Digest },
    #[error("upstream sent {got} of {expected} bytes for {digest}")]
    Truncated { digest: Digest, got: u64, expected: u64 },
    #[error("{context}: {source}")]
    Io { context: String, source: Arc<std::io::Error> },
    /// The task downloading the blob ended without finishing (cancelled or panicked).
    #[error("the download of {digest} ended without finishing")]
    FillDropped { digest: Digest },
    /// The download a response was following ended without a verdict.
    #[error("the download this response followed ended without finishing")]
    FillLost,
    /// A blocking task (file I/O, hashing) panicked or was cancelled.
    #[error("{what}: the blocking task failed: {cause}")]
    Blocking { what: &'static str, cause: String },
    /// A manifest fetch or tag re-check panicked.
    #[error("fetching {key} failed unexpectedly (the task panicked)")]
    Panicked { key: String },
    /// A cached blob file ended before the length it had when opened.
    #[error("a cached blob file ended early (at byte {at})")]
    ShortBlobFile { at: u64 },
    #[error("download abandoned: its clients left and {0} background downloads are already running")]
    TooManyBackgroundFills(usize),
    #[error("the cache is full ({usage} bytes cached{}) and nothing more can be evicted; not downloading", max.map(|m| format!(", cacheSize.max {m}")).unwrap_or_default())]
    CacheFull { usage: u64, max: Option<u64> },
    #[error("'{pattern}' is not a valid pattern: {why}")]
    BadPattern { pattern: String, why: String },
    #[error("{image} has no manifest for {wanted} (it has: {offered})")]
    NoPlatform { image: String, wanted: String, offered: String },
    #[error("cached blob {digest} is {actual} bytes but its descriptor says {expected}; not served")]
    SizeMismatch { digest: Digest, expected: u64, actual: u64 },
}

impl Error {
    pub(crate) fn io(context: String, source: std::io::Error) -> Error {
        Error::Io { context, source: Arc::new(source) }
    }
}
