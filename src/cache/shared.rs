//! Fills shared by replicas (`storage.s3`): one upstream fetch per blob
//! across all of them.
//!
//! A fill's bytes come from the upstream only on the replica holding the
//! blob's lease (`store/lease.rs`). Every other replica asked for the blob
//! fills it from there instead: streamed from the holder's peer port while
//! its download runs, or read from the bucket once it is committed. When
//! the holder stops answering (killed, partitioned), its lease is taken over
//! and the fill goes on from the upstream where it stood. Either way the
//! bytes go through the local fill, so they are hashed and checked against
//! the digest here too, and the local clients are streamed to as they arrive.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use http::{HeaderValue, StatusCode, header};
use tracing::{debug, info};

use super::blocking;
use super::download::BlobSource;
use super::reader::{BlobReader, Progress};
use super::store::{Claim, Store};
use crate::oci::{Digest, RegistryHost, RepoName};
use crate::upstream::{self, BlobStream, Class, ErrorKind};

/// How often a replica with no peer to stream from looks for the holder's commit.
const POLL: Duration = Duration::from_millis(500);

/// Reaching the other replicas' peer ports.
pub struct PeerLink {
    client: reqwest::Client,
    token: String,
}

impl PeerLink {
    pub fn new(token: &str) -> anyhow::Result<PeerLink> {
        use anyhow::Context;
        // Plain HTTP between replicas, but reqwest wants a TLS stack all the same.
        let tls = crate::upstream::tls::client_config(&Default::default(), &rustls::RootCertStore::empty())
            .context("storage.s3.peers: TLS settings")?;
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(Duration::from_secs(3))
            .read_timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            .build()
            .context("storage.s3.peers: building the HTTP client")?;
        Ok(PeerLink { client, token: token.to_owned() })
    }

    /// The download of `digest` in progress on the replica at `peer`, from `offset`.
    async fn fetch(
        &self,
        peer: &str,
        registry: &RegistryHost,
        digest: &Digest,
        offset: u64,
        end: Option<u64>,
    ) -> Result<BlobStream, upstream::Error> {
        let unreachable = |why: String| upstream::Error::new(registry, ErrorKind::Unreachable, why);
        let url = format!("{peer}/peer/blobs/{registry}/{digest}");
        let mut req = self.client.get(&url).bearer_auth(&self.token);
        let range = match end {
            Some(end) => Some(format!("bytes={offset}-{end}")),
            None if offset > 0 => Some(format!("bytes={offset}-")),
            None => None,
        };
        if let Some(r) = range.as_deref().and_then(|r| HeaderValue::from_str(r).ok()) {
            req = req.header(header::RANGE, r);
        }
        let resp = req.send().await.map_err(|e| unreachable(format!("peer {peer}: {e}")))?;
        let (ranged, start) = match resp.status() {
            StatusCode::OK => (false, 0),
            StatusCode::PARTIAL_CONTENT => (true, offset),
            s => return Err(unreachable(format!("peer {peer} answered {s} for {digest}"))),
        };
        let total = match ranged {
            true => resp
                .headers()
                .get(header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit_once('/'))
                .and_then(|(_, t)| t.parse().ok()),
            false => resp.content_length(),
        };
        let (registry, peer) = (registry.clone(), peer.to_owned());
        let body = resp
            .bytes_stream()
            .map(move |chunk| {
                chunk.map_err(|e| {
                    upstream::Error::new(&registry, ErrorKind::Unreachable, format!("peer {peer}: {e}"))
                })
            })
            .boxed();
        Ok(BlobStream { offset: start, total, ranged, body })
    }
}

/// Who this fill takes its bytes from.
enum State {
    /// Not asked yet: the first fetch claims the lease.
    Unclaimed,
    /// We hold the lease (renewed until this is dropped): the upstream.
    Ours { _lease: Box<dyn Send + Sync> },
    /// Another replica holds it: its peer port, or the bucket.
    Elsewhere(Option<String>),
}

/// A fill's source when the store is shared by replicas.
pub(super) struct Shared {
    pub(super) store: Arc<dyn Store>,
    pub(super) upstream: Arc<dyn BlobSource>,
    pub(super) registry: RegistryHost,
    pub(super) peers: Option<Arc<PeerLink>>,
    state: tokio::sync::Mutex<State>,
}

impl Shared {
    pub(super) fn new(
        store: Arc<dyn Store>,
        upstream: Arc<dyn BlobSource>,
        registry: RegistryHost,
        peers: Option<Arc<PeerLink>>,
    ) -> Shared {
        Shared { store, upstream, registry, peers, state: tokio::sync::Mutex::new(State::Unclaimed) }
    }

    /// The blob from the store, once the holder has committed it.
    async fn committed(
        &self,
        digest: &Digest,
        offset: u64,
        end: Option<u64>,
    ) -> Result<Option<BlobStream>, upstream::Error> {
        let (store, d) = (self.store.clone(), digest.clone());
        let failed = |why: String| upstream::Error::new(&self.registry, ErrorKind::Unreachable, why);
        let opened = blocking("looking for a blob another replica fetched", move || store.open_blob(&d))
            .await
            .map_err(|e| failed(e.to_string()))?
            .map_err(|e| failed(format!("the cache's storage: {e}")))?;
        let Some((file, len)) = opened else { return Ok(None) };
        let stop = end.map_or(len, |e| e.saturating_add(1).min(len));
        let registry = self.registry.clone();
        let body = BlobReader::new(file, Progress::Complete(len))
            .stream(offset.min(stop), stop)
            .map(move |chunk| {
                chunk.map_err(|e| {
                    upstream::Error::new(
                        &registry,
                        ErrorKind::Unreachable,
                        format!("the cache's storage: {e}"),
                    )
                })
            })
            .boxed();
        Ok(Some(BlobStream { offset, total: Some(len), ranged: true, body }))
    }

    async fn claim(&self, digest: &Digest, take_over: bool) -> Result<State, upstream::Error> {
        let (store, d) = (self.store.clone(), digest.clone());
        let failed = |why: String| upstream::Error::new(&self.registry, ErrorKind::Unreachable, why);
        let claim = blocking("claiming a download", move || store.claim_fill(&d, take_over))
            .await
            .map_err(|e| failed(e.to_string()))?
            .map_err(|e| failed(format!("the cache's storage: {e}")))?;
        Ok(match claim {
            Claim::Ours(guard) => State::Ours { _lease: guard },
            Claim::Elsewhere { peer } => State::Elsewhere(peer),
        })
    }
}

impl BlobSource for Shared {
    fn fetch<'a>(
        &'a self,
        repo: &'a RepoName,
        digest: &'a Digest,
        offset: u64,
        end: Option<u64>,
    ) -> BoxFuture<'a, Result<BlobStream, upstream::Error>> {
        Box::pin(async move {
            let mut state = self.state.lock().await;
            let mut take_over = false;
            loop {
                match &*state {
                    State::Ours { .. } => return self.upstream.fetch(repo, digest, offset, end).await,
                    State::Unclaimed => {}
                    State::Elsewhere(peer) => {
                        if let Some(stream) = self.committed(digest, offset, end).await? {
                            debug!(%repo, %digest, "another replica fetched the blob: reading it from the cache's storage");
                            return Ok(stream);
                        }
                        match (peer, &self.peers) {
                            (Some(peer), Some(link)) => {
                                match link.fetch(peer, &self.registry, digest, offset, end).await {
                                    Ok(stream) => {
                                        debug!(%repo, %digest, %peer, "streaming the blob from the replica fetching it");
                                        return Ok(stream);
                                    }
                                    Err(e) => {
                                        info!(%repo, %digest, %peer, error = %e.message, "the replica fetching the blob did not answer: taking the download over");
                                        take_over = true;
                                    }
                                }
                            }
                            _ => tokio::time::sleep(POLL).await,
                        }
                    }
                }
                *state = self.claim(digest, take_over).await?;
                take_over = false;
            }
        })
    }

    /// A bandwidth cap is the WAN's: bytes from a peer or the bucket pass freely.
    fn pace(&self, bytes: usize, class: Class) -> BoxFuture<'_, ()> {
        match self.state.try_lock().as_deref() {
            Ok(State::Elsewhere(_)) => Box::pin(async {}),
            _ => self.upstream.pace(bytes, class),
        }
    }

    fn window(&self) -> Option<u64> {
        self.upstream.window()
    }
}
