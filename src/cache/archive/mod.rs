//! Image archives in and out of the [`Store`]: what `docker save`, `skopeo
//! copy … oci-archive:` and `oci:` directories hold, for sites that are
//! seeded by hand.
//!
//! - [`import`]: a docker-save tarball (legacy or docker ≥ 25), an
//!   oci-archive (OCI image layout in a tar), either gzip-compressed, or an
//!   OCI image layout directory. Recognised by content, never by name. Blobs
//!   are streamed into the store and committed only once their digest is
//!   verified; nothing is ever written at a path an entry names.
//! - [`export`]: an oci-archive of images already in the store.
//!
//! - `read`: the single pass over a tar, the layout directory, and resolving
//!   what was read into images;
//! - `write`: the oci-archive writer.
//!
//! Both are synchronous (they stream gigabytes through `std::io`); call them
//! from a blocking thread.

mod read;
#[cfg(test)]
mod tests;
mod write;

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use anyhow::Context;
use serde::Serialize;

use super::store::{Partial, ReadAt, Store, StoredManifest};
use crate::oci::{Algorithm, Digest, Hasher};

pub use read::import;
pub use write::export;

/// An image found in an archive, its blobs already committed to the store.
pub struct ArchivedImage {
    /// The names the archive gives it, as written (docker-save `RepoTags`; an
    /// OCI layout's `io.containerd.image.name` annotation, else
    /// `org.opencontainers.image.ref.name`). May be empty.
    pub names: Vec<String>,
    /// The root manifest first, then every manifest under it (children of an
    /// index, recursively), exact bytes, each with its media type (its own
    /// `mediaType`, else the one of the descriptor that pointed at it).
    pub manifests: Vec<StoredManifest>,
}

/// An image to write with [`export`].
pub struct ExportImage {
    /// Full reference, e.g. "docker.io/library/alpine:3.20", written to the index annotations.
    pub name: String,
    /// Root manifest first, then child manifests.
    pub manifests: Vec<StoredManifest>,
    /// Every config and layer blob of those manifests, with its length.
    pub blobs: Vec<(Digest, u64)>,
}

const OCI_LAYOUT_FILE: &str = "oci-layout";
const INDEX_FILE: &str = "index.json";
const DOCKER_MANIFEST_FILE: &str = "manifest.json";
const BLOBS_DIR: &str = "blobs";

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// The name annotations, in the order they are preferred on import.
const NAME_ANNOTATIONS: [&str; 2] = ["io.containerd.image.name", "org.opencontainers.image.ref.name"];

/// Size of the copy buffer, and so of the chunks `on_bytes` reports.
const CHUNK: usize = 1024 * 1024;

/// A descriptor as this module writes them (index entries, synthesised manifests).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor<'a> {
    media_type: &'a str,
    digest: String,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    annotations: Option<NameAnnotations<'a>>,
}

/// An exported image's name, under both annotations readers look for.
#[derive(Serialize)]
struct NameAnnotations<'a> {
    #[serde(rename = "io.containerd.image.name")]
    containerd: &'a str,
    #[serde(rename = "org.opencontainers.image.ref.name")]
    ref_name: &'a str,
}

/// The layer media type its first bytes say it is.
fn layer_media_type(head: &[u8]) -> &'static str {
    if head.starts_with(&[0x1f, 0x8b]) {
        OCI_LAYER_GZIP
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        OCI_LAYER_ZSTD
    } else {
        OCI_LAYER_TAR
    }
}

/// A partial blob that is abandoned unless committed: an error or a panic
/// on the way never leaves a temp file behind, nor commits unverified bytes.
struct PartialGuard<'a> {
    store: &'a dyn Store,
    partial: Partial,
    /// Cleared once `commit` has handed the partial to the store.
    armed: bool,
}

impl<'a> PartialGuard<'a> {
    fn new(store: &'a dyn Store, partial: Partial) -> PartialGuard<'a> {
        PartialGuard { store, partial, armed: true }
    }

    fn file(&self) -> &std::fs::File {
        &self.partial.file
    }

    fn commit(mut self, d: &Digest, len: u64) -> std::io::Result<()> {
        self.armed = false;
        match self.store.commit_blob(&self.partial, d, len) {
            Ok(_) => Ok(()),
            Err(e) => {
                self.store.abandon_blob(&self.partial, false);
                Err(e)
            }
        }
    }
}

impl Drop for PartialGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.store.abandon_blob(&self.partial, false);
        }
    }
}

/// What streaming a blob into a partial found.
struct Received {
    digest: Digest,
    len: u64,
}

/// Copies `src` into the partial from offset 0, hashing with `algorithm`.
fn receive(
    guard: &PartialGuard<'_>,
    algorithm: Algorithm,
    src: &mut dyn Read,
    buf: &mut [u8],
) -> std::io::Result<Received> {
    let file = guard.file();
    file.set_len(0)?;
    let mut hasher: Hasher = algorithm.hasher();
    let mut len = 0u64;
    loop {
        let n = match src.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        file.write_all_at(&buf[..n], len)?;
        len += n as u64;
    }
    Ok(Received { digest: hasher.finish(), len })
}

/// Streams `src` into the store as `expected`, committing it only if its
/// bytes hash to `expected`. `Ok(None)` when the store already has it (then
/// `src` is left unread). `what` names the source in errors.
pub(super) fn import_named_blob(
    store: &dyn Store,
    expected: &Digest,
    src: &mut dyn Read,
    buf: &mut [u8],
    what: &str,
) -> anyhow::Result<Option<u64>> {
    let Some(partial) =
        store.begin_blob(expected).with_context(|| format!("{what}: starting blob {expected}"))?
    else {
        return Ok(None);
    };
    let guard = PartialGuard::new(store, partial);
    let got = receive(&guard, expected.algorithm(), src, buf).with_context(|| format!("{what}: copying"))?;
    if got.digest != *expected {
        // The guard abandons the partial.
        anyhow::bail!("{what}: content digest is {}, but the entry is named {expected}", got.digest);
    }
    guard.commit(expected, got.len).with_context(|| format!("{what}: committing blob {expected}"))?;
    Ok(Some(got.len))
}

/// Streams `src` into the store under the sha256 of its bytes.
fn import_anonymous_blob(
    store: &dyn Store,
    src: &mut dyn Read,
    buf: &mut [u8],
    what: &str,
) -> anyhow::Result<Received> {
    let partial = store.begin_anonymous().with_context(|| format!("{what}: starting a blob"))?;
    let guard = PartialGuard::new(store, partial);
    let got = receive(&guard, Algorithm::Sha256, src, buf).with_context(|| format!("{what}: copying"))?;
    guard.commit(&got.digest, got.len).with_context(|| format!("{what}: committing blob {}", got.digest))?;
    Ok(got)
}

/// Fills `buf` from `src` at `pos`; an early end is an error.
fn read_exact_at(src: &dyn ReadAt, mut buf: &mut [u8], mut pos: u64) -> std::io::Result<()> {
    while !buf.is_empty() {
        match src.read_at(buf, pos) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buf = &mut buf[n..];
                pos += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A committed blob as a stream: the first `len` bytes, reporting each read
/// to `on_bytes`. Ends early only with an error, so a tar entry written from
/// it is never shorter than its header says.
struct BlobReader<'a> {
    src: Arc<dyn ReadAt>,
    pos: u64,
    len: u64,
    on_bytes: &'a (dyn Fn(u64) + Sync),
}

impl Read for BlobReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.len - self.pos;
        if left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.src.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("blob ended at byte {} of {}", self.pos, self.len),
            ));
        }
        self.pos += n as u64;
        (self.on_bytes)(n as u64);
        Ok(n)
    }
}

/// A reader that reports how many bytes pass through it.
pub(super) struct Counting<'a, R> {
    pub(super) inner: R,
    pub(super) on_bytes: &'a (dyn Fn(u64) + Sync),
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 {
            (self.on_bytes)(n as u64);
        }
        Ok(n)
    }
}
