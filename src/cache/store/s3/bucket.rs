//! The bucket: requests to it, run on a small runtime of the store's own so
//! the blocking [`super::super::Store`] seam can be called from any thread,
//! and the readers and copies built on them.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3;
use object_store::client::{HttpClient, HttpConnector};
use object_store::path::Path as Key;
use object_store::{ClientOptions, ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutPayload};

use super::super::fs::FsStore;
use super::super::{ReadAt, Store};
use crate::oci::Digest;

/// Blobs up to this size are uploaded in one conditional PUT; larger ones in
/// parts of this size.
pub(super) const SINGLE_PUT: u64 = 16 * 1024 * 1024;
/// Objects read or written at once when a listing needs their contents.
const CONCURRENT: usize = 16;

/// One object of several fetched at once: its bytes, `None` if it went away
/// meanwhile, or why it could not be read.
pub(super) type Fetched = Result<Option<Bytes>, String>;

/// The bucket and the runtime its requests run on.
pub struct Bucket {
    pub(super) objects: AmazonS3,
    pub(super) runtime: tokio::runtime::Handle,
    /// `s3://bucket/prefix`, for messages.
    pub(super) name: String,
}

impl Bucket {
    /// Runs `f` on the store's runtime and waits for it, from any thread.
    pub(super) fn run<T: Send + 'static>(
        &self,
        f: impl Future<Output = T> + Send + 'static,
    ) -> std::io::Result<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.runtime.spawn(async move {
            let _ = tx.send(f.await);
        });
        rx.recv().map_err(|_| std::io::Error::other(format!("{}: the request task failed", self.name)))
    }

    pub(super) fn io(&self, e: object_store::Error) -> std::io::Error {
        match e {
            object_store::Error::NotFound { .. } => {
                std::io::Error::new(std::io::ErrorKind::NotFound, e.to_string())
            }
            e => std::io::Error::other(super::super::Unavailable(format!("{}: {e}", self.name))),
        }
    }

    pub(super) fn head(self: &Arc<Self>, key: &Key) -> std::io::Result<Option<ObjectMeta>> {
        let (b, k) = (self.clone(), key.clone());
        let headed = self.run(async move { b.objects.head(&k).await })?;
        self.found(headed)
    }

    /// A request's answer, with a missing object as `None`.
    fn found<T>(&self, answer: Result<T, object_store::Error>) -> std::io::Result<Option<T>> {
        match answer {
            Ok(t) => Ok(Some(t)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.io(e)),
        }
    }

    pub(super) fn get(self: &Arc<Self>, key: &Key) -> std::io::Result<Option<(Bytes, ObjectMeta)>> {
        let (b, k) = (self.clone(), key.clone());
        let got = self.run(async move {
            let r = b.objects.get(&k).await?;
            let meta = r.meta.clone();
            Ok::<_, object_store::Error>((r.bytes().await?, meta))
        })?;
        self.found(got)
    }

    pub(super) fn get_range(
        self: &Arc<Self>,
        key: &Key,
        range: std::ops::Range<u64>,
    ) -> std::io::Result<Bytes> {
        let (b, k) = (self.clone(), key.clone());
        self.run(async move { b.objects.get_range(&k, range).await })?.map_err(|e| self.io(e))
    }

    /// Writes `bytes`; with `create`, only if nothing is there (`Ok(false)` then).
    pub(super) fn put(
        self: &Arc<Self>,
        key: &Key,
        bytes: impl Into<Bytes>,
        create: bool,
    ) -> std::io::Result<bool> {
        let (b, k, payload) = (self.clone(), key.clone(), PutPayload::from(bytes.into()));
        let mode = if create { PutMode::Create } else { PutMode::Overwrite };
        match self.run(async move { b.objects.put_opts(&k, payload, mode.into()).await })? {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) if create => Ok(false),
            Err(e) => Err(self.io(e)),
        }
    }

    pub(super) fn delete(self: &Arc<Self>, key: &Key) -> std::io::Result<()> {
        self.delete_all(vec![key.clone()])
    }

    /// Deletes `keys`, a few at a time; one already gone is not an error.
    pub(super) fn delete_all(self: &Arc<Self>, keys: Vec<Key>) -> std::io::Result<()> {
        let b = self.clone();
        self.run(async move {
            futures_util::stream::iter(keys)
                .map(|k| {
                    let b = b.clone();
                    async move {
                        match b.objects.delete(&k).await {
                            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                            Err(e) => Err(e),
                        }
                    }
                })
                .buffer_unordered(CONCURRENT)
                .try_collect::<Vec<()>>()
                .await
        })?
        .map(|_| ())
        .map_err(|e| self.io(e))
    }

    pub(super) fn copy(self: &Arc<Self>, from: &Key, to: &Key) -> std::io::Result<()> {
        let (b, f, t) = (self.clone(), from.clone(), to.clone());
        self.run(async move { b.objects.copy(&f, &t).await })?.map_err(|e| self.io(e))
    }

    /// Every object under `prefix`.
    pub(super) fn list(self: &Arc<Self>, prefix: &Key) -> std::io::Result<Vec<ObjectMeta>> {
        let (b, p) = (self.clone(), prefix.clone());
        self.run(async move { b.objects.list(Some(&p)).try_collect::<Vec<_>>().await })?
            .map_err(|e| self.io(e))
    }

    /// The contents of `keys`, fetched a few at a time; `None` for one gone meanwhile.
    pub(super) fn get_all(self: &Arc<Self>, keys: Vec<Key>) -> std::io::Result<Vec<(Key, Fetched)>> {
        let b = self.clone();
        self.run(async move {
            futures_util::stream::iter(keys)
                .map(|k| {
                    let b = b.clone();
                    async move {
                        let got = match b.objects.get(&k).await {
                            Ok(r) => r.bytes().await.map(Some),
                            Err(e) => Err(e),
                        };
                        match got {
                            Ok(bytes) => (k, Ok(bytes)),
                            Err(object_store::Error::NotFound { .. }) => (k, Ok(None)),
                            Err(e) => (k, Err(e.to_string())),
                        }
                    }
                })
                .buffer_unordered(CONCURRENT)
                .collect::<Vec<_>>()
                .await
        })
    }

    /// Uploads a verified local file as `key` in parts.
    pub(super) fn upload(self: &Arc<Self>, key: &Key, file: &std::fs::File, len: u64) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let (b, k) = (self.clone(), key.clone());
        let mut upload =
            self.run(async move { b.objects.put_multipart(&k).await })?.map_err(|e| self.io(e))?;
        let mut at = 0;
        while at < len {
            let n = (len - at).min(SINGLE_PUT);
            let mut buf = vec![0; n as usize];
            if let Err(e) = file.read_exact_at(&mut buf, at) {
                let _ = self.run(async move { upload.abort().await });
                return Err(e);
            }
            let part = upload.put_part(PutPayload::from(buf));
            if let Err(e) = self.run(part)? {
                let _ = self.run(async move { upload.abort().await });
                return Err(self.io(e));
            }
            at += n;
        }
        self.run(async move { upload.complete().await })?.map(|_| ()).map_err(|e| self.io(e))
    }
}

/// Requests go through a reqwest client of ours: rustls with ring and our
/// trust store, like every other outgoing connection.
#[derive(Debug)]
pub(super) struct Connector(pub(super) reqwest::Client);

impl HttpConnector for Connector {
    fn connect(&self, _: &ClientOptions) -> object_store::Result<HttpClient> {
        Ok(HttpClient::new(self.0.clone()))
    }
}

/// A runtime of the store's own (see the module comment). It lives as long
/// as the process: a store is opened once, and a runtime cannot be dropped
/// from the async context the last handle to a store may be dropped in.
pub(super) fn runtime() -> anyhow::Result<tokio::runtime::Handle> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("s3")
        .enable_all()
        .build()
        .context("storage.s3: starting its runtime")?;
    let handle = rt.handle().clone();
    std::mem::forget(rt);
    Ok(handle)
}

/// The bucket's `key` into a verified blob of `tier`, a window at a time.
pub(super) fn copy_blob(
    bucket: &Arc<Bucket>,
    key: &Key,
    tier: &FsStore,
    d: &Digest,
    len: u64,
) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let p = tier.begin_anonymous()?;
    let copied = (|| {
        let mut hasher = d.algorithm().hasher();
        let mut at = 0;
        while at < len {
            let window = bucket.get_range(key, at..(at + SINGLE_PUT).min(len))?;
            if window.is_empty() {
                return Err(std::io::Error::other("the bucket sent a short blob"));
            }
            p.file.write_all_at(&window, at)?;
            hasher.update(&window);
            at += window.len() as u64;
        }
        if hasher.finish() != *d {
            return Err(std::io::Error::other("the bucket's copy does not match its digest"));
        }
        tier.commit_blob(&p, d, len)
    })();
    if copied.is_err() {
        tier.abandon_blob(&p, false);
    }
    copied.map(|_| ())
}

/// A blob in the bucket, read by ranged GETs.
pub(super) struct S3Blob {
    pub(super) bucket: Arc<Bucket>,
    pub(super) key: Key,
    pub(super) len: u64,
}

impl ReadAt for S3Blob {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> std::io::Result<usize> {
        let end = pos.saturating_add(buf.len() as u64).min(self.len);
        if pos >= end {
            return Ok(0);
        }
        let bytes = self.bucket.get_range(&self.key, pos..end)?;
        let n = bytes.len().min(buf.len());
        buf[..n].copy_from_slice(&bytes[..n]);
        Ok(n)
    }

    /// The GET's own buffer, handed on without a copy.
    fn map(&self, pos: u64, len: usize) -> Option<std::io::Result<Bytes>> {
        let end = pos.saturating_add(len as u64).min(self.len);
        Some(self.bucket.get_range(&self.key, pos..end))
    }
}
