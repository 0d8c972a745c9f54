//! The fill state machine on its own: a leader writing what a test byte
//! source gives it, followers reading the growing file, with no registry and
//! no binary. Each test ends by checking that no fill is left in the map.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;

use super::*;
use crate::cache::reader::{BlobReader, Progress};
use crate::cache::store::fs::FsStore;
use crate::cache::store::layout::Layout;
use crate::oci::{Algorithm, RegistryHost, RepoName};

struct Setup {
    _dir: tempfile::TempDir,
    layout: Layout,
    fills: Arc<Fills>,
    key: FillKey,
    data: Vec<u8>,
}

fn setup(len: usize) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::new(dir.path());
    let store = Arc::new(FsStore::new(dir.path()));
    store.prepare().unwrap();
    let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    let digest = Digest::of(Algorithm::Sha256, &data);
    let key = (RegistryHost::parse("r.test").unwrap(), digest);
    Setup { _dir: dir, layout, fills: Arc::new(Fills::new(store)), key, data }
}

impl Setup {
    async fn join(&self) -> Joined {
        self.fills.join(&self.key, &RepoName::parse("a/b").unwrap()).await.unwrap()
    }

    async fn leader(&self) -> (FillWriter, FillHandle) {
        match self.join().await {
            Joined::Leader(w, h) => (*w, h),
            _ => panic!("the first join must lead"),
        }
    }

    async fn follower(&self) -> FillHandle {
        match self.join().await {
            Joined::Follower(h) => h,
            _ => panic!("a join while a fill runs must follow"),
        }
    }
}

/// Everything a reader of `h` gets: the bytes, and how the stream ended.
pub(crate) async fn read_all(h: FillHandle, len: u64) -> (Vec<u8>, Result<(), Error>) {
    let mut stream = Box::pin(BlobReader::new(h.file, Progress::Filling(h.progress)).stream(0, len));
    let mut got = Vec::new();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(c) => got.extend_from_slice(&c),
            Err(e) => return (got, Err(e)),
        }
    }
    (got, Ok(()))
}

/// Writes `bytes` in chunks of `chunk`, yielding between them.
async fn feed(w: &mut FillWriter, bytes: &[u8], chunk: usize) {
    for c in bytes.chunks(chunk) {
        w.write(Bytes::copy_from_slice(c)).await.unwrap();
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_download_for_many_readers_who_all_get_exactly_the_verified_bytes() {
    let s = Arc::new(setup(300_000));
    let (mut w, h) = s.leader().await;
    let len = s.data.len() as u64;
    let mut readers = vec![tokio::spawn(read_all(h, len))];
    for _ in 0..7 {
        readers.push(tokio::spawn(read_all(s.follower().await, len)));
    }
    w.start(Some(len));
    feed(&mut w, &s.data, 8192).await;
    assert_eq!(w.commit().await.unwrap(), len);
    for r in readers {
        let (got, end) = r.await.unwrap();
        assert!(end.is_ok(), "{end:?}");
        assert!(got == s.data, "a reader got {} bytes, not the blob", got.len());
    }
    assert_eq!(std::fs::read(s.layout.blob(&s.key.1)).unwrap(), s.data);
    assert_eq!(s.fills.in_flight(), 0);
    assert!(matches!(s.join().await, Joined::Cached), "a committed blob is not filled again");
    assert_eq!(s.fills.in_flight(), 0);
}

#[tokio::test]
async fn the_last_byte_is_withheld_until_the_digest_checks() {
    let s = setup(10_000);
    let (mut w, h) = s.leader().await;
    let len = s.data.len() as u64;
    let reader = tokio::spawn(read_all(h, len));
    w.start(Some(len));
    feed(&mut w, &s.data, 1000).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!reader.is_finished(), "the reader finished before the digest was checked");
    w.commit().await.unwrap();
    let (got, end) = reader.await.unwrap();
    assert!(end.is_ok() && got == s.data);
}

#[tokio::test]
async fn wrong_bytes_end_every_reader_with_an_error_never_a_short_success() {
    let s = setup(50_000);
    let (mut w, h) = s.leader().await;
    let len = s.data.len() as u64;
    let readers = [tokio::spawn(read_all(h, len)), tokio::spawn(read_all(s.follower().await, len))];
    w.start(Some(len));
    let mut wrong = s.data.clone();
    wrong[len as usize - 1] ^= 0xff;
    feed(&mut w, &wrong, 4096).await;
    assert!(matches!(w.commit().await, Err(Error::DigestMismatch { .. })));
    for r in readers {
        let (got, end) = r.await.unwrap();
        assert!(matches!(end, Err(Error::DigestMismatch { .. })), "{end:?}");
        assert!((got.len() as u64) < len, "a reader got every byte of a wrong download");
    }
    assert!(!s.layout.blob(&s.key.1).exists());
    assert!(std::fs::read_dir(s.layout.tmp()).unwrap().next().is_none(), "the wrong download is removed");
    assert_eq!(s.fills.in_flight(), 0);
}

#[tokio::test]
async fn short_and_long_downloads_fail() {
    let s = setup(1000);
    let (mut w, _h) = s.leader().await;
    w.start(Some(2000));
    feed(&mut w, &s.data, 100).await;
    assert!(matches!(w.commit().await, Err(Error::Truncated { got: 1000, expected: 2000, .. })));
    let (mut w, _h) = s.leader().await;
    w.start(Some(10));
    assert!(matches!(w.write(Bytes::from_static(&[0; 11])).await, Err(Error::TooLong { .. })));
    drop(w);
    assert_eq!(s.fills.in_flight(), 0);
}

#[tokio::test]
async fn a_leader_dropped_mid_stream_fails_its_followers() {
    let s = setup(20_000);
    let (mut w, h) = s.leader().await;
    let len = s.data.len() as u64;
    let reader = tokio::spawn(read_all(h, len));
    w.start(Some(len));
    feed(&mut w, &s.data[..5000], 1000).await;
    drop(w);
    let (got, end) = reader.await.unwrap();
    assert!(matches!(end, Err(Error::FillDropped { .. })), "{end:?}");
    assert!(got.len() < 5000);
    assert_eq!(s.fills.in_flight(), 0);
    assert!(matches!(s.join().await, Joined::Leader(..)), "the next request starts afresh");
}

#[tokio::test]
async fn a_follower_that_leaves_disturbs_nobody() {
    let s = setup(40_000);
    let (mut w, h) = s.leader().await;
    let len = s.data.len() as u64;
    let stays = tokio::spawn(read_all(h, len));
    let leaves = s.follower().await;
    w.start(Some(len));
    feed(&mut w, &s.data[..10_000], 1000).await;
    drop(leaves);
    assert!(w.has_clients());
    feed(&mut w, &s.data[10_000..], 1000).await;
    w.commit().await.unwrap();
    let (got, end) = stays.await.unwrap();
    assert!(end.is_ok() && got == s.data);
    assert_eq!(s.fills.in_flight(), 0);
}

#[tokio::test]
async fn a_download_cut_by_shutdown_is_resumed_from_its_partial() {
    let s = setup(64_000);
    s.fills.begin_shutdown();
    let (mut w, h) = s.leader().await;
    w.start(Some(s.data.len() as u64));
    feed(&mut w, &s.data[..30_000], 4096).await;
    // The process exits: the writer and every open handle on the partial go.
    drop((w, h));
    assert_eq!(s.fills.in_flight(), 0);
    assert_eq!(std::fs::metadata(s.layout.partial(&s.key.1)).unwrap().len(), 30_000);

    let fresh = Setup { fills: Arc::new(Fills::new(Arc::new(FsStore::new(s.layout.root())))), ..s };
    let (mut w, _h) = fresh.leader().await;
    assert_eq!(w.adopt().await.unwrap(), 30_000, "the partial's bytes are taken over");
    w.start(Some(fresh.data.len() as u64));
    feed(&mut w, &fresh.data[30_000..], 4096).await;
    w.commit().await.unwrap();
    assert_eq!(std::fs::read(fresh.layout.blob(&fresh.key.1)).unwrap(), fresh.data);
    assert_eq!(fresh.fills.in_flight(), 0);
}

#[tokio::test]
async fn fills_of_one_digest_for_two_registries_never_wait_on_each_other() {
    let s = setup(8_000);
    let (mut slow, _h) = s.leader().await;
    slow.start(Some(s.data.len() as u64));
    feed(&mut slow, &s.data[..10], 10).await;
    let other = Setup { key: (RegistryHost::parse("other.test").unwrap(), s.key.1.clone()), ..setup(0) };
    let other = Setup { layout: s.layout.clone(), fills: s.fills.clone(), data: s.data.clone(), ..other };
    let (mut fast, h) = other.leader().await;
    let len = s.data.len() as u64;
    let reader = tokio::spawn(read_all(h, len));
    fast.start(Some(len));
    feed(&mut fast, &s.data, 1000).await;
    fast.commit().await.unwrap();
    let (got, end) = reader.await.unwrap();
    assert!(end.is_ok() && got == s.data, "the second registry's clients got their blob");
    // The slow one finishing later keeps the committed copy.
    feed(&mut slow, &s.data[10..], 1000).await;
    slow.commit().await.unwrap();
    assert_eq!(std::fs::read(s.layout.blob(&s.key.1)).unwrap(), s.data);
    assert_eq!(s.fills.in_flight(), 0);
}
