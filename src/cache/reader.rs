//! Reading a blob file as a stream: a finished file, or one a fill is still
//! writing, read only up to what the fill has published.

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

pub(super) enum Progress {
    Complete(u64),
    Filling(watch::Receiver<FillState>),
}

/// An open blob, cached or still arriving.
pub struct BlobReader {
    file: Arc<dyn ReadAt>,
    progress: Progress,
}

impl BlobReader {
    pub(super) fn new(file: Arc<dyn ReadAt>, progress: Progress) -> BlobReader {
        BlobReader { file, progress }
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
                    Progress::Complete(len) => *len,
                    Progress::Filling(rx) => match &*rx.borrow_and_update() {
                        FillState::Pending => 0,
                        // Hold back the last byte until the digest is verified:
                        // a corrupt download must end in an error, never in a
                        // response that looks complete.
                        FillState::Growing { written, .. } => written.saturating_sub(1),
                        FillState::Complete { len } => *len,
                        FillState::Failed(e) => return Err((**e).clone()),
                    },
                };
                if pos < available {
                    let want = (available.min(end) - pos).min(CHUNK as u64) as usize;
                    let chunk = read_at(reader.file.clone(), pos, want).await?;
                    let next = pos + chunk.len() as u64;
                    return Ok(Some((chunk, (reader, next))));
                }
                match &mut reader.progress {
                    Progress::Filling(rx) => {
                        if rx.changed().await.is_err() && !matches!(*rx.borrow(), FillState::Complete { .. })
                        {
                            return Err(Error::FillLost);
                        }
                    }
                    Progress::Complete(_) => return Err(Error::ShortBlobFile { at: pos }),
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

async fn read_at(file: Arc<dyn ReadAt>, pos: u64, want: usize) -> Result<Bytes, Error> {
    tokio::task::spawn_blocking(move || {
        let mut buf = BytesMut::zeroed(want);
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
        Ok(buf.freeze())
    })
    .await
    .map_err(|e| Error::Blocking { what: "reading a cached blob", cause: e.to_string() })?
}
