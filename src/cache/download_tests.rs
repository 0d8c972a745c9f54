//! The download loop with a scripted byte source: connections cut mid-blob,
//! an upstream that ignores `Range`, a 404, wrong bytes, a source that never
//! recovers. Time is paused, so back-offs take no real time.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::Semaphore;

use super::*;
use crate::cache::fill::Joined;
use crate::cache::fill::tests::read_all;
use crate::cache::policy::{Revalidate, TagPolicy};
use crate::cache::{Cache, Settings};
use crate::metrics::Metrics;
use crate::oci::{Algorithm, RegistryHost};
use crate::upstream::{Limits, Timeouts, Upstreams};

/// One answer of the source.
#[derive(Clone)]
enum Answer {
    /// The blob from the asked offset (or from 0), cut after `cut` body bytes, corrupted if asked.
    Serve {
        cut: Option<usize>,
        ignore_range: bool,
        corrupt: bool,
    },
    Fail(ErrorKind),
}

fn serve() -> Answer {
    Answer::Serve { cut: None, ignore_range: false, corrupt: false }
}

fn cut(n: usize) -> Answer {
    Answer::Serve { cut: Some(n), ignore_range: false, corrupt: false }
}

struct Script {
    data: Vec<u8>,
    answers: Mutex<Vec<Answer>>,
    offsets: Mutex<Vec<u64>>,
}

impl BlobSource for Script {
    fn fetch<'a>(
        &'a self,
        _repo: &'a RepoName,
        _digest: &'a Digest,
        offset: u64,
        _end: Option<u64>,
    ) -> BoxFuture<'a, Result<BlobStream, upstream::Error>> {
        self.offsets.lock().unwrap().push(offset);
        let answer = self.answers.lock().unwrap().remove(0);
        let host = RegistryHost::parse("script.test").unwrap();
        Box::pin(async move {
            let (cut, ignore_range, corrupt) = match answer {
                Answer::Fail(kind) => return Err(upstream::Error::new(&host, kind, "scripted failure")),
                Answer::Serve { cut, ignore_range, corrupt } => (cut, ignore_range, corrupt),
            };
            let start = if ignore_range { 0 } else { offset as usize };
            let mut body = self.data[start..].to_vec();
            if corrupt && let Some(last) = body.last_mut() {
                *last ^= 0xff;
            }
            let keep = cut.unwrap_or(body.len()).min(body.len());
            let mut chunks: Vec<Result<Bytes, upstream::Error>> =
                body[..keep].chunks(1000).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
            if keep < body.len() {
                chunks.push(Err(upstream::Error::new(&host, ErrorKind::Unreachable, "connection reset")));
            }
            Ok(BlobStream {
                offset: start as u64,
                total: Some(self.data.len() as u64),
                ranged: start > 0,
                body: futures_util::stream::iter(chunks).boxed(),
            })
        })
    }
}

struct Run {
    bytes: Vec<u8>,
    end: Result<(), Error>,
    offsets: Vec<u64>,
    committed: Option<Vec<u8>>,
    resumes: f64,
    fills_left: usize,
}

async fn run(answers: Vec<Answer>, resume_attempts: u32) -> (Vec<u8>, Run) {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::new());
    let upstream = crate::upstream::Settings {
        registries: Vec::new(),
        allow_unconfigured: false,
        air_gapped: true,
        timeouts: Timeouts::default(),
        limits: Limits {
            max_concurrent_requests: 1,
            probe_interval: Duration::from_secs(1),
            max_probe_interval: Duration::from_secs(1),
        },
        bandwidth: None,
        docker_config: None,
    };
    let settings = Settings {
        root: dir.path().to_owned(),
        tag_policy: TagPolicy::new(Vec::new(), false),
        revalidate: Revalidate::Inline,
        max_background_fills: 1,
        resume_attempts,
        capacity: Default::default(),
        prune: None,
        manifest_cache_bytes: 1 << 20,
        backend: Default::default(),
    };
    let upstreams = Upstreams::new(&upstream, metrics.clone()).unwrap();
    let cache = Cache::open(settings, upstreams, metrics.clone()).await.unwrap();
    let data: Vec<u8> = (0..10_000u32).map(|i| (i % 253) as u8).collect();
    let digest = Digest::of(Algorithm::Sha256, &data);
    let loc = Locator {
        registry: RegistryHost::parse("script.test").unwrap(),
        repo: RepoName::parse("a/b").unwrap(),
    };
    let Joined::Leader(writer, handle) =
        cache.inner.fills.join(&(loc.registry.clone(), digest.clone()), &loc.repo).await.unwrap()
    else {
        panic!("the first join leads");
    };
    let script =
        Arc::new(Script { data: data.clone(), answers: Mutex::new(answers), offsets: Mutex::default() });
    let job = FillJob {
        cache: cache.inner.clone(),
        source: script.clone(),
        loc,
        digest: digest.clone(),
        resume_attempts,
        background: Arc::new(Semaphore::new(1)),
        interactive: handle.interactive.clone(),
        _room: None,
    };
    let client = tokio::spawn(read_all(handle, 10_000));
    job.run(*writer).await;
    let (bytes, end) = client.await.unwrap();
    let committed = cache.inner.store.open_blob(&digest).unwrap().map(|(r, len)| {
        let mut buf = vec![0; len as usize];
        r.read_at(&mut buf, 0).unwrap();
        buf
    });
    let resumes = metrics.fill_resumes.get() as f64;
    let offsets = script.offsets.lock().unwrap().clone();
    let fills_left = cache.inner.fills.in_flight();
    (data, Run { bytes, end, offsets, committed, resumes, fills_left })
}

#[tokio::test(start_paused = true)]
async fn a_cut_connection_resumes_with_range_from_the_last_byte_written() {
    let (data, r) = run(vec![cut(3000), serve()], 3).await;
    assert!(r.end.is_ok(), "{:?}", r.end);
    assert_eq!(r.bytes, data);
    assert_eq!(r.offsets, vec![0, 3000]);
    assert_eq!(r.committed.as_deref(), Some(&data[..]));
    assert_eq!(r.resumes, 1.0);
    assert_eq!(r.fills_left, 0);
}

#[tokio::test(start_paused = true)]
async fn an_upstream_that_ignores_range_is_read_again_from_the_start_skipping_what_we_have() {
    let (data, r) =
        run(vec![cut(4000), Answer::Serve { cut: None, ignore_range: true, corrupt: false }], 3).await;
    assert!(r.end.is_ok(), "{:?}", r.end);
    assert_eq!(r.bytes, data);
    assert_eq!(r.offsets, vec![0, 4000]);
    assert_eq!(r.committed.as_deref(), Some(&data[..]));
}

#[tokio::test(start_paused = true)]
async fn a_404_fails_at_once_without_resuming() {
    let (_, r) = run(vec![Answer::Fail(ErrorKind::NotFound)], 3).await;
    assert!(matches!(r.end, Err(Error::Upstream(ref e)) if e.kind == ErrorKind::NotFound), "{:?}", r.end);
    assert_eq!(r.offsets, vec![0]);
    assert!(r.committed.is_none());
    assert_eq!(r.fills_left, 0);
}

#[tokio::test(start_paused = true)]
async fn a_link_that_never_recovers_is_given_up_after_the_resume_attempts() {
    let (_, r) = run(vec![cut(1000), cut(1000), cut(1000), serve()], 2).await;
    assert!(r.end.is_err(), "finished although every attempt was cut");
    assert_eq!(r.offsets, vec![0, 1000, 2000], "two resumes, then given up");
    assert!(r.committed.is_none());
    assert_eq!(r.resumes, 2.0);
    assert_eq!(r.fills_left, 0);
}

#[tokio::test(start_paused = true)]
async fn wrong_bytes_are_never_committed_nor_served_whole() {
    let (data, r) = run(vec![Answer::Serve { cut: None, ignore_range: false, corrupt: true }], 3).await;
    assert!(matches!(r.end, Err(Error::DigestMismatch { .. })), "{:?}", r.end);
    assert!(r.bytes.len() < data.len());
    assert!(r.committed.is_none());
    assert_eq!(r.fills_left, 0);
}
