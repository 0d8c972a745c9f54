//! One upstream registry: its endpoints (each with its reachability), pooled
//! client, credentials, tokens, rate-limit pause and concurrency bound.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, Response, StatusCode, Url};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{debug, warn};

use super::auth::{AuthSettings, Authenticator, TokenHost, parse_challenge};
use super::bandwidth::{Bandwidth, Class};
use super::error::{Error, ErrorKind};
use super::health::Health;
use super::pause::{Pause, retry_after};
use super::{Credentials, Limits, Timeouts};
use crate::metrics::{Metrics, RegistryLabels, UpstreamErrorLabels};
use crate::oci::{Digest, MANIFEST_ACCEPT, MAX_MANIFEST_BYTES, Reference, RegistryHost, RepoName};

/// Largest tag list passed through (Docker Hub's biggest repositories list a few MiB).
const MAX_TAGS_LIST_BYTES: usize = 16 * 1024 * 1024;

/// Everything one registry is built from.
pub(super) struct RegistrySettings {
    pub host: RegistryHost,
    /// Base URLs, tried in order.
    pub endpoints: Vec<Url>,
    pub client: reqwest::Client,
    /// For token servers on other hosts: never skips certificate checks.
    pub token_client: reqwest::Client,
    pub credentials: Option<Credentials>,
    /// Token servers on other hosts that may receive the credentials.
    pub token_hosts: Vec<TokenHost>,
    /// A host a client named: every URL must be public HTTPS, no probes.
    pub open_world: bool,
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub metrics: Arc<Metrics>,
    /// Its own cap, then the global one.
    pub bandwidth: Vec<Arc<Bandwidth>>,
}

pub struct Registry {
    host: RegistryHost,
    endpoints: Vec<Endpoint>,
    client: reqwest::Client,
    timeouts: Timeouts,
    auth: Authenticator,
    /// The upstream asked us to wait (429/503 `Retry-After`).
    pause: Pause,
    /// Bounds requests in flight to this upstream; a blob download holds its
    /// permit until its body ends.
    permits: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    bandwidth: Vec<Arc<Bandwidth>>,
}

struct Endpoint {
    url: Url,
    health: Arc<Health>,
}

/// A manifest as the upstream sent it.
pub struct FetchedManifest {
    pub bytes: Bytes,
    pub content_type: Option<String>,
    /// The upstream's `Docker-Content-Digest`, when it sent a valid one.
    pub digest: Option<Digest>,
}

/// A blob body on its way from the upstream.
pub struct BlobStream {
    /// Where the body starts in the blob: the asked offset, or 0 when the
    /// upstream ignored the `Range` header.
    pub offset: u64,
    /// The whole blob's size, when the upstream said.
    pub total: Option<u64>,
    /// Whether the upstream honoured the `Range` asked for (206).
    pub ranged: bool,
    pub body: BoxStream<'static, Result<Bytes, Error>>,
}

impl Registry {
    pub(super) fn new(s: RegistrySettings) -> Registry {
        let RegistrySettings {
            host,
            endpoints,
            client,
            token_client,
            credentials,
            token_hosts,
            open_world,
            timeouts,
            limits,
            metrics,
            bandwidth,
        } = s;
        let auth = Authenticator::new(AuthSettings {
            host: host.clone(),
            own: endpoints.clone(),
            client: client.clone(),
            token_client,
            credentials,
            token_hosts,
            open_world,
            timeout: timeouts.response,
        });
        let endpoints = endpoints
            .into_iter()
            .map(|url| {
                let health = super::endpoint_health(&host, &url, open_world, &limits, &metrics);
                Endpoint { url, health: Arc::new(health) }
            })
            .collect();
        Registry {
            host,
            endpoints,
            client,
            timeouts,
            auth,
            pause: Pause::new(limits.probe_interval),
            permits: Arc::new(Semaphore::new(limits.max_concurrent_requests)),
            metrics,
            bandwidth,
        }
    }

    /// Under a bandwidth cap, the bytes to ask for at once: half a second of
    /// the tightest cap, between 64 KiB and 8 MiB.
    pub fn window(&self) -> Option<u64> {
        let rate = self.bandwidth.iter().map(|b| b.rate()).min()?;
        Some((rate / 2).clamp(64 << 10, 8 << 20))
    }

    /// Waits until `bytes` more may come from this registry (its own cap, then the global one).
    pub async fn pace(&self, bytes: usize, class: Class) {
        for b in &self.bandwidth {
            b.take(bytes, class).await;
        }
    }

    /// The first endpoint (for logs).
    pub fn endpoint(&self) -> &Url {
        &self.endpoints[0].url
    }

    /// GETs a manifest, reading at most [`MAX_MANIFEST_BYTES`].
    pub async fn manifest(&self, repo: &RepoName, reference: &Reference) -> Result<FetchedManifest, Error> {
        let path = format!("v2/{repo}/manifests/{reference}");
        let (resp, _permit) = self
            .send(Method::GET, &path, repo, |h| {
                h.insert(header::ACCEPT, HeaderValue::from_static(MANIFEST_ACCEPT));
            })
            .await?;
        let resp = self.check_status(resp, "manifest")?;
        let content_type =
            resp.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let digest = content_digest(resp.headers());
        let bytes = self.read_limited(resp, MAX_MANIFEST_BYTES, "manifest").await?;
        Ok(FetchedManifest { bytes, content_type, digest })
    }

    /// HEADs a manifest: the digest a tag points at now, if the upstream says;
    /// for a digest, whether the repository has it (an error if not).
    /// HEAD is cheap and not counted against Docker Hub's pull limit.
    pub async fn manifest_digest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<Option<Digest>, Error> {
        let path = format!("v2/{repo}/manifests/{reference}");
        let (resp, _permit) = self
            .send(Method::HEAD, &path, repo, |h| {
                h.insert(header::ACCEPT, HeaderValue::from_static(MANIFEST_ACCEPT));
            })
            .await?;
        let resp = self.check_status(resp, "manifest")?;
        Ok(content_digest(resp.headers()))
    }

    /// GETs a blob from `offset` on (a `Range` request when `offset > 0`).
    /// A blob from `offset` on, up to `end` inclusive when given.
    pub async fn blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        offset: u64,
        end: Option<u64>,
    ) -> Result<BlobStream, Error> {
        let path = format!("v2/{repo}/blobs/{digest}");
        let range = match end {
            Some(end) => Some(format!("bytes={offset}-{end}")),
            None if offset > 0 => Some(format!("bytes={offset}-")),
            None => None,
        };
        let (resp, permit) = self
            .send(Method::GET, &path, repo, |h| {
                if let Some(v) = range.as_deref().and_then(|r| HeaderValue::from_str(r).ok()) {
                    h.insert(header::RANGE, v);
                }
            })
            .await?;
        // Asked to resume at the very end (a download that was complete but
        // not yet verified when the process stopped), or a window of an empty
        // blob: nothing left to fetch.
        if resp.status() == StatusCode::RANGE_NOT_SATISFIABLE
            && content_range_total(resp.headers()) == Some(offset)
        {
            return Ok(BlobStream {
                offset,
                total: Some(offset),
                ranged: true,
                body: futures_util::stream::empty().boxed(),
            });
        }
        let resp = self.check_status(resp, "blob")?;
        let ranged = resp.status() == StatusCode::PARTIAL_CONTENT;
        let (offset, total) =
            if ranged { (offset, content_range_total(resp.headers())) } else { (0, resp.content_length()) };
        let host = self.host.clone();
        let body = resp
            .bytes_stream()
            .map_err(move |e| Error::from_transport(&host, &e))
            // The permit lives as long as the body: a download counts against the bound.
            .map(move |chunk| {
                let _held = &permit;
                chunk
            })
            .boxed();
        Ok(BlobStream { offset, total, ranged, body })
    }

    /// HEADs a blob and returns its size.
    pub async fn blob_size(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>, Error> {
        let path = format!("v2/{repo}/blobs/{digest}");
        let (resp, _permit) = self.send(Method::HEAD, &path, repo, |_| {}).await?;
        let resp = self.check_status(resp, "blob")?;
        Ok(resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok()))
    }

    /// GETs `tags/list` (with the client's `n`/`last` query), as JSON bytes.
    pub async fn tags(&self, repo: &RepoName, query: Option<&str>) -> Result<Bytes, Error> {
        let path = match query {
            Some(q) => format!("v2/{repo}/tags/list?{q}"),
            None => format!("v2/{repo}/tags/list"),
        };
        let (resp, _permit) = self.send(Method::GET, &path, repo, |_| {}).await?;
        let resp = self.check_status(resp, "repository")?;
        self.read_limited(resp, MAX_TAGS_LIST_BYTES, "tag list").await
    }

    async fn read_limited(&self, resp: Response, limit: usize, what: &str) -> Result<Bytes, Error> {
        let too_large = || {
            Error::new(
                &self.host,
                ErrorKind::Invalid,
                format!("{what} is larger than the {limit} byte limit"),
            )
        };
        if resp.content_length().is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        let mut body = resp.bytes_stream();
        let mut bytes = BytesMut::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| Error::from_transport(&self.host, &e))?;
            if bytes.len() + chunk.len() > limit {
                return Err(too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes.freeze())
    }

    /// Sends a request to the first reachable endpoint, failing over to the
    /// next on a connection failure or timeout. Endpoints marked down are
    /// skipped without an attempt; with none left the error says since when.
    async fn send(
        &self,
        method: Method,
        path: &str,
        repo: &RepoName,
        headers: impl Fn(&mut HeaderMap),
    ) -> Result<(Response, OwnedSemaphorePermit), Error> {
        self.pause
            .check()
            .map_err(|(left, message)| Error::new(&self.host, ErrorKind::RateLimited(Some(left)), message))?;
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::new(&self.host, ErrorKind::Unreachable, "shutting down"))?;
        let mut last: Option<Error> = None;
        for ep in &self.endpoints {
            if let Err(down) = ep.health.check() {
                let describe = down.describe();
                last = Some(
                    Error::new(&self.host, ErrorKind::Unreachable, describe.clone())
                        .telling_clients(describe),
                );
                continue;
            }
            let url = join(&ep.url, path).map_err(|e| {
                Error::new(&self.host, ErrorKind::Invalid, format!("building request URL: {e}"))
            })?;
            let started = Instant::now();
            let sent = self.send_authenticated(method.clone(), url, repo, &headers).await;
            self.observe(started, sent.as_ref().err());
            match sent {
                Ok(resp) => {
                    ep.health.record_success();
                    if let Some(pause) = self.pause.note(resp.status(), resp.headers()) {
                        warn!(upstream = %self.host, status = resp.status().as_u16(), pause = %humantime::format_duration(pause), "upstream asked us to slow down; pausing requests to it");
                    }
                    return Ok((resp, permit));
                }
                Err(e) if matches!(e.kind, ErrorKind::Unreachable | ErrorKind::TimedOut) => {
                    if let Some(wait) = ep.health.record_failure(&e.message) {
                        self.spawn_probe(ep, wait);
                    }
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::new(&self.host, ErrorKind::Unreachable, "no endpoint configured")))
    }

    fn observe(&self, started: Instant, error: Option<&Error>) {
        let registry = self.metrics.registry_label(self.host.as_str());
        match error {
            None => self
                .metrics
                .upstream_request_duration
                .get_or_create(&RegistryLabels { registry })
                .observe(started.elapsed().as_secs_f64()),
            Some(e) => {
                let labels = UpstreamErrorLabels { registry, reason: e.kind.as_str() };
                self.metrics.upstream_errors.get_or_create(&labels).inc();
            }
        }
    }

    /// Probes a down endpoint with `GET /v2/` until any HTTP answer comes back.
    fn spawn_probe(&self, ep: &Endpoint, first_wait: Duration) {
        let (health, client) = (ep.health.clone(), self.client.clone());
        let Ok(url) = join(&ep.url, "v2/") else { return };
        let timeout = self.timeouts.connect + self.timeouts.response.min(Duration::from_secs(10));
        tokio::spawn(async move {
            let mut wait = first_wait;
            loop {
                tokio::time::sleep(wait).await;
                match tokio::time::timeout(timeout, client.get(url.clone()).send()).await {
                    Ok(Ok(_)) => {
                        health.record_success();
                        return;
                    }
                    Ok(Err(e)) => debug!(%url, error = %super::error::cause_chain(&e), "probe failed"),
                    Err(_) => debug!(%url, "probe timed out"),
                }
                wait = health.probe_failed();
            }
        });
    }

    /// Sends a request, answering one 401 challenge (Basic or Bearer) and retrying.
    async fn send_authenticated(
        &self,
        method: Method,
        url: Url,
        repo: &RepoName,
        headers: &impl Fn(&mut HeaderMap),
    ) -> Result<Response, Error> {
        let scope = format!("repository:{repo}:pull");
        let mut auth = self.auth.up_front(&scope).await?;
        let mut challenged = false;
        loop {
            let mut h = HeaderMap::new();
            headers(&mut h);
            if let Some(a) = &auth {
                h.insert(header::AUTHORIZATION, a.clone());
            }
            let req = self.client.request(method.clone(), url.clone()).headers(h);
            let resp = self.timed(req.send()).await?;
            if resp.status() != StatusCode::UNAUTHORIZED || challenged {
                return Ok(resp);
            }
            challenged = true;
            let Some(challenge) = resp
                .headers()
                .get(header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_challenge)
            else {
                return Ok(resp);
            };
            auth = self.auth.answer(challenge, &scope).await?;
            if auth.is_none() {
                return Err(Error::new(
                    &self.host,
                    ErrorKind::Denied,
                    "asks for credentials; set registries[].auth for it",
                ));
            }
        }
    }

    async fn timed<T>(&self, fut: impl Future<Output = Result<T, reqwest::Error>>) -> Result<T, Error> {
        timed(&self.host, self.timeouts.response, fut).await
    }

    fn check_status(&self, resp: Response, what: &str) -> Result<Response, Error> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let (kind, message) = match status {
            StatusCode::NOT_FOUND => (ErrorKind::NotFound, format!("{what} not found")),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                (ErrorKind::Denied, format!("access to the {what} denied ({status})"))
            }
            StatusCode::TOO_MANY_REQUESTS => {
                let after = retry_after(resp.headers());
                (ErrorKind::RateLimited(after), "rate limit reached (429)".to_string())
            }
            s => (ErrorKind::BadStatus(s.as_u16()), format!("answered {s} for the {what}")),
        };
        self.observe(Instant::now(), Some(&Error::new(&self.host, kind.clone(), String::new())));
        if kind != ErrorKind::NotFound {
            warn!(upstream = %self.host, url = %resp.url(), status = status.as_u16(), "upstream refused a request");
        }
        Err(Error::new(&self.host, kind, message))
    }
}

/// Waits `limit` for `fut`, classifying a transport failure or the timeout.
pub(super) async fn timed<T>(
    host: &RegistryHost,
    limit: Duration,
    fut: impl Future<Output = Result<T, reqwest::Error>>,
) -> Result<T, Error> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r.map_err(|e| Error::from_transport(host, &e)),
        Err(_) => Err(Error::new(
            host,
            ErrorKind::TimedOut,
            format!("no response within {}", humantime::format_duration(limit)),
        )),
    }
}

fn join(base: &Url, path: &str) -> Result<Url, url::ParseError> {
    Url::parse(&format!("{}/{path}", base.as_str().trim_end_matches('/')))
}

fn content_digest(h: &HeaderMap) -> Option<Digest> {
    h.get("docker-content-digest").and_then(|v| v.to_str().ok()).and_then(|v| Digest::parse(v).ok())
}

/// The total from `Content-Range: bytes a-b/total`.
fn content_range_total(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_RANGE)?.to_str().ok()?.rsplit_once('/')?.1.parse().ok()
}
