//! Reading a blob file as a stream: a finished file, or one a fill is still
//! writing, read only up to what the fill has published.
//!
//! A cached blob goes out with as few copies and hops as the store allows:
//! a small one was read whole when it was opened (one blocking-pool hop for
//! both), a large one is memory-mapped a window at a time and handed to the
//! socket as it is. Only a blob still being filled is read in chunks.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use tokio::sync::watch;

use super::Error;
use super::fill::FillState;
use super::store::ReadAt;

/// Big enough to amortise a blocking-pool hop, small enough that memory
/// stays flat: at most one chunk per response is in flight.
const CHUNK: usize = 256 * 1024;

/// Cached blobs up to this size are read whole when opened: configs and
/// small layers, most of a pull's requests.
pub(super) const SMALL_BLOB: u64 = 256 * 1024;

/// How much of a large cached blob is mapped at once: a map and an unmap per
/// 4 MiB is noise next to sending it, and RSS grows by at most a window per response.
const WINDOW: u64 = 4 * 1024 * 1024;

pub(super) enum Progress {
    /// A small cached blob, read whole.
    Whole(Bytes),
    /// A cached blob of this length.
    Complete(u64),
    Filling(watch::Receiver<FillState>),
}

/// An open blob, cached or still arriving.
pub struct BlobReader {
    file: Arc<dyn ReadAt>,
    progress: Progress,
    /// The last chunk's buffer, taken back once the socket is done with it:
    /// a fresh 256 KiB buffer per chunk cost page faults and zeroing in
    /// every chunk of a cold pull.
    spare: BytesMut,
}

impl BlobReader {
    pub(super) fn new(file: Arc<dyn ReadAt>, progress: Progress) -> BlobReader {
        BlobReader { file, progress, spare: BytesMut::new() }
    }

    /// Bytes `start..end` when the blob was read whole (a small cached one):
    /// the response sends them as one body, without a stream around them.
    pub fn whole(&self, start: u64, end: u64) -> Option<Bytes> {
        match &self.progress {
            Progress::Whole(bytes) if end <= bytes.len() as u64 && start <= end => {
                Some(bytes.slice(start as usize..end as usize))
            }
            _ => None,
        }
    }

    /// Bytes `start..end` as a stream. A failed fill ends the stream with an
    /// error, so the client's response is aborted, never completed short.
    pub fn stream(self, start: u64, end: u64) -> impl Stream<Item = Result<Bytes, Error>> + Send + 'static {
        futures_util::stream::try_unfold((self, start), move |(mut reader, pos)| async move {
            loop {
                if pos >= end {
                    return Ok(None);
                }
                let available = match &mut reader.progress {
                    Progress::Whole(bytes) => {
                        let len = bytes.len() as u64;
                        if pos >= len {
                            return Err(Error::ShortBlobFile { at: pos });
                        }
                        let chunk = bytes.slice(pos as usize..end.min(len) as usize);
                        return Ok(Some((chunk, (reader, end.min(len)))));
                    }
                    Progress::Complete(len) => *len,
                    Progress::Filling(rx) => match &*rx.borrow_and_update() {
                        FillState::Pending => 0,
                        // Hold back the last byte until the digest is verified:
                        // a corrupt download must end in an error, never in a
                        // response that looks complete.
                        FillState::Growing { written, .. } => written.saturating_sub(1),
                        FillState::Verified { len } | FillState::Complete { len } => *len,
                        FillState::Failed(e) => return Err((**e).clone()),
                    },
                };
                if pos < available {
                    // Only a committed blob is mapped: a partial file is still growing.
                    let mapped = match reader.progress {
                        Progress::Complete(_) => reader.file.map(pos, window(pos, available, end)),
                        _ => None,
                    };
                    let chunk = match mapped {
                        Some(mapped) => {
                            mapped.map_err(|e| Error::io("mapping a cached blob".to_string(), e))?
                        }
                        None => {
                            let want = (available.min(end) - pos).min(CHUNK as u64) as usize;
                            let spare = std::mem::take(&mut reader.spare);
                            let (chunk, spare) = read_at(reader.file.clone(), pos, want, spare).await?;
                            reader.spare = spare;
                            chunk
                        }
                    };
                    let next = pos + chunk.len() as u64;
                    return Ok(Some((chunk, (reader, next))));
                }
                match &mut reader.progress {
                    Progress::Filling(rx) => {
                        if rx.changed().await.is_err()
                            && !matches!(
                                *rx.borrow(),
                                FillState::Verified { .. } | FillState::Complete { .. }
                            )
                        {
                            return Err(Error::FillLost);
                        }
                    }
                    Progress::Complete(_) | Progress::Whole(_) => {
                        return Err(Error::ShortBlobFile { at: pos });
                    }
                }
            }
        })
    }
}

impl BlobReader {
    /// Waits until the blob is whole in the cache without reading it
    /// (preloading), telling `on_bytes` how many more bytes arrived.
    pub async fn finish(mut self, mut on_bytes: impl FnMut(u64)) -> Result<u64, Error> {
        let mut seen = 0;
        loop {
            let rx = match &mut self.progress {
                Progress::Whole(bytes) => return Ok(bytes.len() as u64),
                Progress::Complete(len) => return Ok(*len),
                Progress::Filling(rx) => rx,
            };
            let state = rx.borrow_and_update().clone();
            match state {
                FillState::Pending => {}
                FillState::Growing { written, .. } => {
                    on_bytes(written.saturating_sub(seen));
                    seen = seen.max(written);
                }
                // A preload waits for the commit: the blob must be in the cache.
                FillState::Verified { len } => {
                    on_bytes(len.saturating_sub(seen));
                    seen = seen.max(len);
                }
                FillState::Complete { len } => {
                    on_bytes(len.saturating_sub(seen));
                    return Ok(len);
                }
                FillState::Failed(e) => return Err((*e).clone()),
            }
            if rx.changed().await.is_err() && !matches!(*rx.borrow(), FillState::Complete { .. }) {
                return Err(Error::FillLost);
            }
        }
    }
}

/// The next window of a cached blob to map: up to [`WINDOW`], ending on a
/// window boundary so later maps stay page-aligned.
fn window(pos: u64, available: u64, end: u64) -> usize {
    let boundary = (pos / WINDOW + 1) * WINDOW;
    (available.min(end).min(boundary) - pos) as usize
}

/// Reads a small cached blob whole, in the same blocking hop that opened it.
pub(super) fn read_whole(file: &dyn ReadAt, len: u64) -> std::io::Result<Bytes> {
    let mut buf = vec![0; len as usize];
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], filled as u64) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Bytes::from(buf))
}

/// `want` bytes at `pos`, read into `buf`'s memory when the last chunk cut
/// from it has been sent (else new memory); returns the chunk and what is
/// left of `buf` to read the next one into.
async fn read_at(
    file: Arc<dyn ReadAt>,
    pos: u64,
    want: usize,
    mut buf: BytesMut,
) -> Result<(Bytes, BytesMut), Error> {
    tokio::task::spawn_blocking(move || {
        buf.clear();
        buf.reserve(want);
        buf.resize(want, 0);
        let mut filled = 0;
        while filled < want {
            match file.read_at(&mut buf[filled..], pos + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io("reading a cached blob".to_string(), e)),
            }
        }
        if filled == 0 {
            return Err(Error::io(
                "reading a cached blob".to_string(),
                std::io::ErrorKind::UnexpectedEof.into(),
            ));
        }
        buf.truncate(filled);
        let chunk = buf.split().freeze();
        Ok((chunk, buf))
    })
    .await
    .map_err(|e| Error::Blocking { what: "reading a cached blob", cause: e.to_string() })?
}

#[cfg(test)]
mod tests {
    use futures_util::TryStreamExt;

    use super::*;
    use crate::cache::store::Store;
    use crate::cache::store::fs::FsStore;
    use crate::oci::{Algorithm, Digest};

    async fn read(reader: BlobReader, start: u64, end: u64) -> Vec<Bytes> {
        reader.stream(start, end).try_collect().await.unwrap()
    }

    #[tokio::test]
    async fn cached_blobs_read_whole_or_mapped_give_the_same_bytes_for_any_range() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::new(dir.path());
        store.prepare().unwrap();
        // Two windows and a bit: ranges that start, end and cross window boundaries.
        let data: Vec<u8> = (0..2 * WINDOW + 12_345).map(|i| (i * 7 % 251) as u8).collect();
        let digest = Digest::of(Algorithm::Sha256, &data);
        store.put_blob(&digest, &data).unwrap();
        let len = data.len() as u64;
        let ranges = [(0, len), (1, len), (WINDOW - 1, WINDOW + 1), (WINDOW, 2 * WINDOW + 5), (len - 1, len)];
        for (start, end) in ranges {
            let (file, found) = store.open_blob(&digest).unwrap().unwrap();
            assert_eq!(found, len);
            let chunks = read(BlobReader::new(file.clone(), Progress::Complete(len)), start, end).await;
            assert!(chunks.iter().all(|c| c.len() as u64 <= WINDOW), "a window at a time: RSS stays flat");
            let mapped = chunks.concat();
            assert_eq!(mapped, &data[start as usize..end as usize], "mapped {start}..{end}");
            let whole = BlobReader::new(file.clone(), Progress::Whole(read_whole(&*file, len).unwrap()));
            assert_eq!(
                whole.whole(start, end).as_deref(),
                Some(&mapped[..]),
                "whole, one body {start}..{end}"
            );
            assert_eq!(read(whole, start, end).await.concat(), mapped, "whole {start}..{end}");
            let read_now = store.read_small_now(&digest, len).map(|(_, bytes)| bytes);
            assert_eq!(read_now.as_deref(), Some(&data[..]), "just written, so read without waiting");
            assert!(store.read_small_now(&digest, len - 1).is_none(), "larger than asked: the blocking path");
        }
    }

    #[tokio::test]
    async fn a_blob_file_shorter_than_its_length_is_an_error_not_a_short_response() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::new(dir.path());
        store.prepare().unwrap();
        let data = b"twelve bytes".to_vec();
        let digest = Digest::of(Algorithm::Sha256, &data);
        store.put_blob(&digest, &data).unwrap();
        let (file, _) = store.open_blob(&digest).unwrap().unwrap();
        let whole = Progress::Whole(read_whole(&*file, 12).unwrap());
        let result: Result<Vec<Bytes>, _> =
            BlobReader::new(file.clone(), whole).stream(0, 20).try_collect().await;
        assert!(matches!(result, Err(Error::ShortBlobFile { at: 12 })), "{:?}", result.map(|c| c.len()));
        assert!(read_whole(&*file, 13).is_err(), "reading past the end fails");
    }
}
