//! Upstream authentication: the `WWW-Authenticate` challenge, the token
//! handshake, and a cache of bearer tokens per scope. One [`Authenticator`]
//! per registry owns its credentials, its last challenge and its tokens.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::header::HeaderValue;
use reqwest::{StatusCode, Url};
use serde::Deserialize;
use tracing::warn;

use super::allow::check_public_https;
use super::error::{Error, ErrorKind};
use super::registry::timed;
use super::{Credentials, Secret};
use crate::oci::RegistryHost;

/// What an [`Authenticator`] is built from.
pub(super) struct AuthSettings {
    pub host: RegistryHost,
    /// The registry's endpoints: token realms there are its own.
    pub own: Vec<Url>,
    pub client: reqwest::Client,
    /// For token servers on other hosts: never skips certificate checks.
    pub token_client: reqwest::Client,
    pub credentials: Option<Credentials>,
    /// Token servers on other hosts that may receive the credentials.
    pub token_hosts: Vec<TokenHost>,
    /// A host a client named: token realms must be public HTTPS.
    pub open_world: bool,
    pub timeout: Duration,
}

/// Answers a registry's challenges.
pub(super) struct Authenticator {
    s: AuthSettings,
    tokens: TokenCache,
    /// The last challenge seen, so later requests authenticate up front
    /// instead of paying a 401 round-trip. std `Mutex`: held for a clone.
    challenge: Mutex<Option<Challenge>>,
}

impl Authenticator {
    pub fn new(s: AuthSettings) -> Authenticator {
        Authenticator { s, tokens: TokenCache::default(), challenge: Mutex::new(None) }
    }

    /// The `Authorization` to send before any 401: a configured bearer token,
    /// or the answer to the last challenge seen.
    pub async fn up_front(&self, scope: &str) -> Result<Option<HeaderValue>, Error> {
        if let Some(Secret::Token(t)) = self.secret().await? {
            return Ok(bearer(&t));
        }
        let known = self.challenge.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match known {
            Some(c) => self.authorization(&c, scope).await,
            None => Ok(None),
        }
    }

    /// Remembers `challenge` and answers it; `None` when we have nothing to answer with.
    pub async fn answer(&self, challenge: Challenge, scope: &str) -> Result<Option<HeaderValue>, Error> {
        *self.challenge.lock().unwrap_or_else(|p| p.into_inner()) = Some(challenge.clone());
        self.authorization(&challenge, scope).await
    }

    /// What the configured credentials say to send now.
    async fn secret(&self) -> Result<Option<Secret>, Error> {
        match &self.s.credentials {
            None => Ok(None),
            Some(c) => {
                c.secret(&self.s.host).await.map_err(|e| Error::new(&self.s.host, ErrorKind::Denied, e))
            }
        }
    }

    /// The `Authorization` value answering `challenge` for `scope`, if we can.
    async fn authorization(&self, challenge: &Challenge, scope: &str) -> Result<Option<HeaderValue>, Error> {
        let login = match self.secret().await? {
            // A configured token is the answer to any challenge.
            Some(Secret::Token(t)) => return Ok(bearer(&t)),
            Some(Secret::Login { user, password }) => Some((user, password)),
            None => None,
        };
        match challenge {
            Challenge::Basic => Ok(login.and_then(|(u, p)| basic(&u, &p))),
            Challenge::Bearer { realm, service, .. } => {
                if let Some(token) = self.tokens.get(scope) {
                    return Ok(bearer(&token));
                }
                let token = self.fetch_token(realm, service.as_deref(), scope, login).await?;
                Ok(bearer(&token))
            }
        }
    }

    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        login: Option<(String, String)>,
    ) -> Result<String, Error> {
        let invalid = |m: String| Error::new(&self.s.host, ErrorKind::Invalid, m);
        let mut url =
            Url::parse(realm).map_err(|e| invalid(format!("token realm '{realm}' is not a URL: {e}")))?;
        let own_host = self.s.own.iter().any(|e| same_host(e, &url));
        if self.s.open_world {
            check_public_https(&url).map_err(|e| {
                Error::new(&self.s.host, ErrorKind::Forbidden, format!("refusing token realm {url}: {e}"))
            })?;
        }
        if login.is_some() {
            self.check_realm_for_credentials(&url, own_host)?;
        }
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            q.append_pair("scope", scope);
        }
        let client = if own_host { &self.s.client } else { &self.s.token_client };
        let mut req = client.get(url);
        if let Some((user, password)) = &login {
            req = req.basic_auth(user, Some(password));
        }
        let resp = timed(&self.s.host, self.s.timeout, req.send()).await?;
        if matches!(resp.status(), StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            return Err(Error::new(
                &self.s.host,
                ErrorKind::Denied,
                format!("token server {realm} refused the configured credentials ({})", resp.status()),
            ));
        }
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            return Err(Error::new(
                &self.s.host,
                ErrorKind::BadStatus(status),
                format!("token server {realm} answered {status}"),
            ));
        }
        let body = timed(&self.s.host, self.s.timeout, resp.bytes()).await?;
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
        let trusted = own_host || self.s.token_hosts.iter().any(|h| h.matches(realm));
        let plain_registry = self.s.own.iter().any(|e| e.scheme() == "http");
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
                warn!(upstream = %self.s.host, realm = %realm, "not sending the configured credentials to the token realm: {why}");
                Err(Error::new(
                    &self.s.host,
                    ErrorKind::Forbidden,
                    format!("refusing to send credentials to token realm {realm}: {why}"),
                ))
            }
        }
    }
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

    pub fn matches(&self, url: &Url) -> bool {
        url.host_str().is_some_and(|h| h.eq_ignore_ascii_case(&self.host))
            && match self.port {
                Some(p) => url.port_or_known_default() == Some(p),
                None => url.port().is_none(),
            }
    }
}

/// Same host and port (the scheme's default when not written).
fn same_host(a: &Url, b: &Url) -> bool {
    a.host() == b.host() && a.port_or_known_default() == b.port_or_known_default()
}

fn basic(user: &str, password: &str) -> Option<HeaderValue> {
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let mut v = HeaderValue::from_str(&format!("Basic {raw}")).ok()?;
    v.set_sensitive(true);
    Some(v)
}

fn bearer(token: &str) -> Option<HeaderValue> {
    let mut v = HeaderValue::from_str(&format!("Bearer {token}")).ok()?;
    v.set_sensitive(true);
    Some(v)
}

/// What an upstream asked for in its 401.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer { realm: String, service: Option<String>, scope: Option<String> },
}

/// Parses a `WWW-Authenticate` value such as
/// `Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull"`.
///
/// Written here because the available crates for this header are unmaintained;
/// registries only ever send one challenge of this simple shape.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = parse_params(rest);
    let get = |k: &str| params.iter().find(|(n, _)| n.eq_ignore_ascii_case(k)).map(|(_, v)| v.clone());
    Some(Challenge::Bearer { realm: get("realm")?, service: get("service"), scope: get("scope") })
}

/// `k="v", k2=v2` pairs; quoted values may contain commas and `\"`.
fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect::<String>().trim().to_owned();
        if key.is_empty() {
            return out;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| *c != ',') {
                value.push(c);
            }
            value = value.trim().to_owned();
        }
        out.push((key, value));
    }
}

/// A token server's answer. Docker Hub sends both fields; some only one.
#[derive(Debug, Deserialize)]
pub struct TokenResponse {
    pub token: Option<String>,
    pub access_token: Option<String>,
    pub expires_in: Option<u64>,
}

impl TokenResponse {
    pub fn into_token(self) -> Option<(String, Duration)> {
        // The distribution spec's default lifetime when expires_in is absent.
        let ttl = Duration::from_secs(self.expires_in.unwrap_or(60).max(1));
        self.token.or(self.access_token).filter(|t| !t.is_empty()).map(|t| (t, ttl))
    }
}

/// Tokens kept per registry at most (one per repository asked for); past
/// this the one expiring soonest is dropped.
const MAX_TOKENS: usize = 1024;

/// Tokens by scope. std `Mutex`: never held across `.await`, the critical
/// section is one map operation, and it is only touched on upstream requests.
#[derive(Debug, Default)]
pub struct TokenCache {
    tokens: Mutex<HashMap<String, (String, Instant)>>,
}

impl TokenCache {
    pub fn get(&self, scope: &str) -> Option<String> {
        let tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens.get(scope).filter(|(_, until)| *until > Instant::now()).map(|(t, _)| t.clone())
    }

    pub fn put(&self, scope: &str, token: String, ttl: Duration) {
        // Renew a little early so a token never expires between check and use.
        let until = Instant::now() + ttl.mul_f32(0.9);
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens.retain(|_, (_, u)| *u > Instant::now());
        if tokens.len() >= MAX_TOKENS
            && let Some(soonest) = tokens.iter().min_by_key(|(_, (_, u))| *u).map(|(k, _)| k.clone())
        {
            tokens.remove(&soonest);
        }
        tokens.insert(scope.to_owned(), (token, until));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_hub_challenge() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull,push""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/alpine:pull,push".into()),
            })
        );
    }

    #[test]
    fn parses_basic_and_unquoted() {
        assert_eq!(parse_challenge(r#"Basic realm="r""#), Some(Challenge::Basic));
        assert_eq!(
            parse_challenge("bearer realm=http://x/t, service=s"),
            Some(Challenge::Bearer { realm: "http://x/t".into(), service: Some("s".into()), scope: None })
        );
        assert_eq!(parse_challenge("Negotiate abc"), None);
        assert_eq!(parse_challenge("Bearer service=s"), None);
    }

    #[test]
    fn tokens_expire() {
        let c = TokenCache::default();
        c.put("a", "t".into(), Duration::from_secs(60));
        assert_eq!(c.get("a").as_deref(), Some("t"));
        c.put("b", "t".into(), Duration::from_millis(0));
        assert_eq!(c.get("b"), None);
    }

    #[test]
    fn token_field_fallback() {
        let r: TokenResponse = serde_json::from_str(r#"{"access_token":"x"}"#).unwrap();
        assert_eq!(r.into_token(), Some(("x".into(), Duration::from_secs(60))));
    }
}
