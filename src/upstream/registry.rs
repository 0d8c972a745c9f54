//! One upstream registry: its endpoint, pooled client, credentials and tokens.

use std::net::IpAddr;
use std::sync::Mutex;

use bytes::{Bytes, BytesMut};
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, Response, StatusCode, Url};

use super::allow::is_public;
use super::auth::{Challenge, TokenCache, TokenResponse, parse_challenge};
use super::error::{Error, ErrorKind};
use crate::config::{Credentials, Timeouts};
use crate::oci::{Digest, MANIFEST_ACCEPT, MAX_MANIFEST_BYTES, Reference, RegistryHost, RepoName};

pub struct Registry {
    host: RegistryHost,
    endpoint: Url,
    client: reqwest::Client,
    credentials: Option<Credentials>,
    /// Unconfigured hosts: every URL we are sent to must be public HTTPS.
    open_world: bool,
    timeouts: Timeouts,
    tokens: TokenCache,
    /// The last challenge seen, so later requests authenticate up front
    /// instead of paying a 401 round-trip. std `Mutex`: held for a clone.
    challenge: Mutex<Option<Challenge>>,
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
    pub(super) fn new(
        host: RegistryHost,
        endpoint: Url,
        client: reqwest::Client,
        credentials: Option<Credentials>,
        open_world: bool,
        timeouts: Timeouts,
    ) -> Registry {
        Registry {
            host,
            endpoint,
            client,
            credentials,
            open_world,
            timeouts,
            tokens: TokenCache::default(),
            challenge: Mutex::new(None),
        }
    }

    pub fn host(&self) -> &RegistryHost {
        &self.host
    }

    pub fn endpoint(&self) -> &Url {
        &self.endpoint
    }

    /// GETs a manifest, reading at most [`MAX_MANIFEST_BYTES`].
    pub async fn manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<FetchedManifest, Error> {
        let url = self.url(repo, "manifests", &reference.to_string())?;
        let resp = self
            .send(Method::GET, url, repo, |h| {
                h.insert(header::ACCEPT, HeaderValue::from_static(MANIFEST_ACCEPT));
            })
            .await?;
        let resp = self.check_status(resp, "manifest")?;
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| Digest::parse(v).ok());
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_MANIFEST_BYTES as u64)
        {
            return Err(self.too_large());
        }
        let mut body = resp.bytes_stream();
        let mut bytes = BytesMut::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| Error::from_transport(&self.host, &e))?;
            if bytes.len() + chunk.len() > MAX_MANIFEST_BYTES {
                return Err(self.too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(FetchedManifest {
            bytes: bytes.freeze(),
            content_type,
            digest,
        })
    }

    /// GETs a blob from `offset` on (a `Range` request when `offset > 0`).
    pub async fn blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        offset: u64,
    ) -> Result<BlobStream, Error> {
        let url = self.url(repo, "blobs", &digest.to_string())?;
        let resp = self
            .send(Method::GET, url, repo, |h| {
                if offset > 0
                    && let Ok(v) = HeaderValue::from_str(&format!("bytes={offset}-"))
                {
                    h.insert(header::RANGE, v);
                }
            })
            .await?;
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
            .boxed();
        Ok(BlobStream {
            offset,
            total,
            body,
        })
    }

    /// HEADs a blob and returns its size.
    pub async fn blob_size(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>, Error> {
        let url = self.url(repo, "blobs", &digest.to_string())?;
        let resp = self.send(Method::HEAD, url, repo, |_| {}).await?;
        let resp = self.check_status(resp, "blob")?;
        Ok(resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok()))
    }

    fn url(&self, repo: &RepoName, kind: &str, reference: &str) -> Result<Url, Error> {
        let base = self.endpoint.as_str().trim_end_matches('/');
        Url::parse(&format!("{base}/v2/{repo}/{kind}/{reference}")).map_err(|e| {
            Error::new(
                &self.host,
                ErrorKind::Invalid,
                format!("building request URL: {e}"),
            )
        })
    }

    fn too_large(&self) -> Error {
        Error::new(
            &self.host,
            ErrorKind::Invalid,
            format!("manifest is larger than the {MAX_MANIFEST_BYTES} byte limit"),
        )
    }

    /// Sends a request, answering one 401 challenge (Basic or Bearer) and retrying.
    async fn send(
        &self,
        method: Method,
        url: Url,
        repo: &RepoName,
        headers: impl Fn(&mut HeaderMap),
    ) -> Result<Response, Error> {
        let scope = format!("repository:{repo}:pull");
        let known = self
            .challenge
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut auth = match known {
            Some(c) => self.authorization(&c, &scope).await?,
            None => None,
        };
        let mut challenged = false;
        loop {
            let mut req = self.client.request(method.clone(), url.clone());
            let mut h = HeaderMap::new();
            headers(&mut h);
            if let Some(a) = &auth {
                h.insert(header::AUTHORIZATION, a.clone());
            }
            req = req.headers(h);
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
                    "asks for credentials; set registries[].auth for it".to_string(),
                ));
            }
        }
    }

    async fn timed<T>(
        &self,
        fut: impl Future<Output = Result<T, reqwest::Error>>,
    ) -> Result<T, Error> {
        match tokio::time::timeout(self.timeouts.response, fut).await {
            Ok(r) => r.map_err(|e| Error::from_transport(&self.host, &e)),
            Err(_) => Err(Error::new(
                &self.host,
                ErrorKind::TimedOut,
                format!(
                    "no response within {}",
                    humantime::format_duration(self.timeouts.response)
                ),
            )),
        }
    }

    /// The `Authorization` value answering `challenge` for `scope`, if we can.
    async fn authorization(
        &self,
        challenge: &Challenge,
        scope: &str,
    ) -> Result<Option<HeaderValue>, Error> {
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

    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<String, Error> {
        let invalid = |m: String| Error::new(&self.host, ErrorKind::Invalid, m);
        let mut url = Url::parse(realm)
            .map_err(|e| invalid(format!("token realm '{realm}' is not a URL: {e}")))?;
        self.check_open_world_url(&url)?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            q.append_pair("scope", scope);
        }
        let mut req = self.client.get(url);
        if let Some(c) = &self.credentials {
            req = req.basic_auth(&c.user, Some(&c.password));
        }
        let resp = self.timed(req.send()).await?;
        match resp.status() {
            s if s.is_success() => {}
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(Error::new(
                    &self.host,
                    ErrorKind::Denied,
                    format!(
                        "token server {realm} refused the configured credentials ({})",
                        resp.status()
                    ),
                ));
            }
            _ => {
                return Err(self
                    .check_status(resp, "token")
                    .err()
                    .unwrap_or_else(|| invalid("token error".into())));
            }
        }
        let body = self.timed(resp.bytes()).await?;
        let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
            invalid(format!(
                "token server {realm} sent an unreadable answer: {e}"
            ))
        })?;
        let (token, ttl) = parsed
            .into_token()
            .ok_or_else(|| invalid(format!("token server {realm} sent no token")))?;
        self.tokens.put(scope, token.clone(), ttl);
        Ok(token)
    }

    /// For unconfigured hosts: only public HTTPS URLs (DNS names are filtered by
    /// the resolver; IP literals never reach it, so they are checked here).
    fn check_open_world_url(&self, url: &Url) -> Result<(), Error> {
        if !self.open_world {
            return Ok(());
        }
        let host = url.host_str().unwrap_or("");
        let literal = host.trim_matches(['[', ']']).parse::<IpAddr>().ok();
        if url.scheme() != "https" || literal.is_some_and(|ip| !is_public(ip)) {
            return Err(Error::new(
                &self.host,
                ErrorKind::Forbidden,
                format!(
                    "refusing to contact {url}: unconfigured registries may only use public https URLs"
                ),
            ));
        }
        Ok(())
    }

    fn check_status(&self, resp: Response, what: &str) -> Result<Response, Error> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let (kind, message) = match status {
            StatusCode::NOT_FOUND => (ErrorKind::NotFound, format!("{what} not found")),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => (
                ErrorKind::Denied,
                format!("access to the {what} denied ({status})"),
            ),
            StatusCode::TOO_MANY_REQUESTS => {
                let after = resp
                    .headers()
                    .get(header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(std::time::Duration::from_secs);
                (
                    ErrorKind::RateLimited(after),
                    "rate limit reached (429)".to_string(),
                )
            }
            s => (
                ErrorKind::BadStatus(s.as_u16()),
                format!("answered {s} for the {what}"),
            ),
        };
        Err(Error::new(&self.host, kind, message))
    }
}

fn basic(c: &Credentials) -> Option<HeaderValue> {
    use base64::Engine;
    let raw =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", c.user, c.password));
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
    h.get(header::CONTENT_RANGE)?
        .to_str()
        .ok()?
        .rsplit_once('/')?
        .1
        .parse()
        .ok()
}
