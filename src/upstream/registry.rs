//! One upstream registry: its endpoints (each with its reachability), pooled
//! client, credentials, tokens, rate-limit pause and concurrency bound.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, Response, StatusCode, Url};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{debug, warn};

use super::allow::check_public_https;
use super::auth::{Challenge, TokenCache, TokenResponse, parse_challenge};
use super::error::{Error, ErrorKind};
use super::health::Health;
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
}

/// `auth.tokenHosts` entry: a host, with a port or meaning the scheme's default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TokenHost {
    host: String,
    port: Option<u16>,
}

impl TokenHost {
    pub fn parse(s: &str) -> TokenHost {
        match s.rsplit_once(':').map(|(h, p)| (h, p.parse::<u16>())) {
            Some((h, Ok(p))) => TokenHost { host: h.to_ascii_lowercase(), port: Some(p) },
            _ => TokenHost { host: s.to_ascii_lowercase(), port: None },
        }
    }

    fn matches(&self, url: &Url) -> bool {
        url.host_str().is_some_and(|h| h.eq_ignore_ascii_case(&self.host))
            && match self.port {
                Some(p) => url.port_or_known_default() == Some(p),
                None => url.port().is_none(),
            }
    }
}

pub struct Registry {
    host: RegistryHost,
    endpoints: Vec<Endpoint>,
    client: reqwest::Client,
    token_client: reqwest::Client,
    credentials: Option<Credentials>,
    token_hosts: Vec<TokenHost>,
    /// Unconfigured hosts: every URL we are sent to must be public HTTPS.
    open_world: bool,
    timeouts: Timeouts,
    tokens: TokenCache,
    /// The last challenge seen, so later requests authenticate up front
    /// instead of paying a 401 round-trip. std `Mutex`: held for a clone.
    challenge: Mutex<Option<Challenge>>,
    /// No request before this instant: the upstream asked us to wait (429/503 `Retry-After`).
    paused_until: Mutex<Option<Instant>>,
    /// Bounds requests in flight to this upstream; a blob download holds its
    /// permit until its body ends.
    permits: Arc<Semaphore>,
    /// Wait after a 429 that names no `Retry-After`.
    default_pause: Duration,
    metrics: Arc<Metrics>,
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
        } = s;
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
            token_client,
            credentials,
            token_hosts,
            open_world,
            timeouts,
            tokens: TokenCache::default(),
            challenge: Mutex::new(None),
            paused_until: Mutex::new(None),
            permits: Arc::new(Semaphore::new(limits.max_concurrent_requests)),
            default_pause: limits.probe_interval,
            metrics,
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
    pub async fn blob(&self, repo: &RepoName, digest: &Digest, offset: u64) -> Result<BlobStream, Error> {
        let path = format!("v2/{repo}/blobs/{digest}");
        let (resp, permit) = self
            .send(Method::GET, &path, repo, |h| {
                if offset > 0
                    && let Ok(v) = HeaderValue::from_str(&format!("bytes={offset}-"))
                {
                    h.insert(header::RANGE, v);
                }
            })
            .await?;
        // Asked to resume at the very end (a download that was complete but
        // not yet verified when the process stopped): nothing left to fetch.
        if resp.status() == StatusCode::RANGE_NOT_SATISFIABLE
            && offset > 0
            && content_range_total(resp.headers()) == Some(offset)
        {
            return Ok(BlobStream {
                offset,
                total: Some(offset),
                body: futures_util::stream::empty().boxed(),
            });
        }
        let resp = self.check_status(resp, "blob")?;
        let (offset, total) = if resp.status() == StatusCode::PARTIAL_CONTENT {
            (offset, content_range_total(resp.headers()))
        } else {
            (0, resp.content_length())
        };
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
        Ok(BlobStream { offset, total, body })
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
        self.check_paused()?;
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
                    self.note_pause(&resp);
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

    fn check_paused(&self) -> Result<(), Error> {
        let until = *self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
        match until.map(|u| u.saturating_duration_since(Instant::now())) {
            Some(left) if !left.is_zero() => Err(Error::new(
                &self.host,
                ErrorKind::RateLimited(Some(left)),
                format!("rate limited; not asking again for {}", humantime::format_duration(round_up(left))),
            )),
            _ => Ok(()),
        }
    }

    /// On 429 (or 503 with `Retry-After`) pause all requests to this upstream
    /// for as long as it asked, never less.
    fn note_pause(&self, resp: &Response) {
        let status = resp.status();
        let retry_after = retry_after(resp.headers());
        let pause = match (status, retry_after) {
            (StatusCode::TOO_MANY_REQUESTS, after) => after.unwrap_or(self.default_pause),
            (StatusCode::SERVICE_UNAVAILABLE, Some(after)) => after,
            _ => return,
        };
        warn!(upstream = %self.host, status = status.as_u16(), pause = %humantime::format_duration(round_up(pause)), "upstream asked us to slow down; pausing requests to it");
        let until = Instant::now() + pause;
        let mut paused = self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
        *paused = Some(paused.map_or(until, |p| p.max(until)));
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
        let known = self.challenge.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut auth = match known {
            Some(c) => self.authorization(&c, &scope).await?,
            None => None,
        };
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
            *self.challenge.lock().unwrap_or_else(|p| p.into_inner()) = Some(challenge.clone());
            auth = self.authorization(&challenge, &scope).await?;
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
        match tokio::time::timeout(self.timeouts.response, fut).await {
            Ok(r) => r.map_err(|e| Error::from_transport(&self.host, &e)),
            Err(_) => Err(Error::new(
                &self.host,
                ErrorKind::TimedOut,
                format!("no response within {}", humantime::format_duration(self.timeouts.response)),
            )),
        }
    }

    /// The `Authorization` value answering `challenge` for `scope`, if we can.
    async fn authorization(&self, challenge: &Challenge, scope: &str) -> Result<Option<HeaderValue>, Error> {
        match challenge {
            Challenge::Basic => Ok(self.credentials.as_ref().and_then(basic)),
            Challenge::Bearer { realm, service, .. } => {
                if let Some(token) = self.tokens.get(scope) {
                    return Ok(bearer(&token));
                }
                let token = self.fetch_token(realm, service.as_deref(), scope).await?;
                Ok(bearer(&token))
            }
        }
    }

    async fn fetch_token(&self, realm: &str, service: Option<&str>, scope: &str) -> Result<String, Error> {
        let invalid = |m: String| Error::new(&self.host, ErrorKind::Invalid, m);
        let mut url =
            Url::parse(realm).map_err(|e| invalid(format!("token realm '{realm}' is not a URL: {e}")))?;
        let own_host = self.endpoints.iter().any(|e| same_host(&e.url, &url));
        if self.open_world {
            check_public_https(&url).map_err(|e| {
                Error::new(&self.host, ErrorKind::Forbidden, format!("refusing token realm {url}: {e}"))
            })?;
        }
        let credentials = match &self.credentials {
            Some(c) => {
                self.check_realm_for_credentials(&url, own_host)?;
                Some(c)
            }
            None => None,
        };
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            q.append_pair("scope", scope);
        }
        let client = if own_host { &self.client } else { &self.token_client };
        let mut req = client.get(url);
        if let Some(c) = credentials {
            req = req.basic_auth(&c.user, Some(&c.password));
        }
        let resp = self.timed(req.send()).await?;
        if matches!(resp.status(), StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            return Err(Error::new(
                &self.host,
                ErrorKind::Denied,
                format!("token server {realm} refused the configured credentials ({})", resp.status()),
            ));
        }
        let resp = self.check_status(resp, "token")?;
        let body = self.timed(resp.bytes()).await?;
        let parsed: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| invalid(format!("token server {realm} sent an unreadable answer: {e}")))?;
        let (token, ttl) =
            parsed.into_token().ok_or_else(|| invalid(format!("token server {realm} sent no token")))?;
        self.tokens.put(scope, token.clone(), ttl);
        Ok(token)
    }

    /// The configured credentials go only to the registry's own hosts or the
    /// `auth.tokenHosts` it lists, and only over HTTPS unless the registry
    /// itself is plain HTTP: a realm is chosen by whoever answers the 401.
    fn check_realm_for_credentials(&self, realm: &Url, own_host: bool) -> Result<(), Error> {
        let trusted = own_host || self.token_hosts.iter().any(|h| h.matches(realm));
        let plain_registry = self.endpoints.iter().any(|e| e.url.scheme() == "http");
        let refusal = if !trusted {
            Some("its host is not the registry's; list it under auth.tokenHosts to allow it")
        } else if realm.scheme() != "https" && !(realm.scheme() == "http" && plain_registry) {
            Some("it is not https")
        } else {
            None
        };
        match refusal {
            None => Ok(()),
            Some(why) => {
                warn!(upstream = %self.host, realm = %realm, "not sending the configured credentials to the token realm: {why}");
                Err(Error::new(
                    &self.host,
                    ErrorKind::Forbidden,
                    format!("refusing to send credentials to token realm {realm}: {why}"),
                ))
            }
        }
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

/// Same host and port (the scheme's default when not written).
fn same_host(a: &Url, b: &Url) -> bool {
    a.host() == b.host() && a.port_or_known_default() == b.port_or_known_default()
}

fn join(base: &Url, path: &str) -> Result<Url, url::ParseError> {
    Url::parse(&format!("{}/{path}", base.as_str().trim_end_matches('/')))
}

fn content_digest(h: &HeaderMap) -> Option<Digest> {
    h.get("docker-content-digest").and_then(|v| v.to_str().ok()).and_then(|v| Digest::parse(v).ok())
}

/// `Retry-After` as seconds or an HTTP date.
fn retry_after(h: &HeaderMap) -> Option<Duration> {
    let v = h.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or_default())
}

fn round_up(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs() + u64::from(d.subsec_nanos() > 0))
}

fn basic(c: &Credentials) -> Option<HeaderValue> {
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", c.user, c.password));
    let mut v = HeaderValue::from_str(&format!("Basic {raw}")).ok()?;
    v.set_sensitive(true);
    Some(v)
}

fn bearer(token: &str) -> Option<HeaderValue> {
    let mut v = HeaderValue::from_str(&format!("Bearer {token}")).ok()?;
    v.set_sensitive(true);
    Some(v)
}

/// The total from `Content-Range: bytes a-b/total`.
fn content_range_total(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_RANGE)?.to_str().ok()?.rsplit_once('/')?.1.parse().ok()
}
