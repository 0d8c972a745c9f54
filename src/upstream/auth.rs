//! Upstream authentication: the `WWW-Authenticate` challenge and a cache of
//! bearer tokens per scope (one cache per registry, so per credential).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

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
