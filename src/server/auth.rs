//! Optional Basic authentication for pulls (`pullAuth.htpasswd`, bcrypt).
//!
//! bcrypt is deliberately slow (tens of milliseconds), so a verified
//! user/password pair is remembered (as a SHA-256 of the password, never the
//! password) and later requests cost one map lookup. Guessing is made
//! expensive and uninformative: an unknown user costs the same bcrypt work as
//! a known one (so timing does not reveal user names), at most a few bcrypt
//! checks run at once, and an address that keeps failing waits longer and
//! longer for each answer.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use axum::response::{IntoResponse, Response};
use base64::Engine;
use dashmap::DashMap;
use http::header;
use sha2::{Digest as _, Sha256};
use tokio::sync::Semaphore;

use super::error::{ErrorCode, OciError};
use super::{AppState, ClientAddr, Htpasswd};

/// Failures from one address before its answers are delayed.
const FREE_FAILURES: u32 = 5;
/// The first delay; it doubles with each further failure up to the max.
const FIRST_DELAY: Duration = Duration::from_millis(500);
const MAX_DELAY: Duration = Duration::from_secs(4);
/// Addresses whose failures are remembered (the least recent are forgotten),
/// and for how long after their last failure.
const TRACKED_ADDRESSES: u64 = 16_384;
const FAILURE_MEMORY: Duration = Duration::from_secs(15 * 60);
/// bcrypt checks at once: each takes a blocking thread for tens of ms.
const CONCURRENT_CHECKS: usize = 4;

pub struct PullAuth {
    users: HashMap<String, String>,
    verified: DashMap<String, [u8; 32]>,
    /// A hash of the users' cost, checked for unknown users.
    decoy: String,
    failures: moka::sync::Cache<IpAddr, u32>,
    checks: Semaphore,
}

impl PullAuth {
    pub fn new(h: &Htpasswd) -> PullAuth {
        let cost = h.users.first().and_then(|(_, hash)| hash.get(4..6)).and_then(|c| c.parse().ok());
        let decoy = bcrypt::hash("not a password", cost.unwrap_or(bcrypt::DEFAULT_COST)).unwrap_or_default();
        PullAuth {
            users: h.users.iter().cloned().collect(),
            verified: DashMap::new(),
            decoy,
            failures: moka::sync::Cache::builder()
                .max_capacity(TRACKED_ADDRESSES)
                .time_to_idle(FAILURE_MEMORY)
                .build(),
            checks: Semaphore::new(CONCURRENT_CHECKS),
        }
    }

    async fn check(&self, user: &str, password: &str) -> bool {
        let known = self.users.get(user);
        let fingerprint: [u8; 32] = Sha256::digest(password.as_bytes()).into();
        if known.is_some() && self.verified.get(user).is_some_and(|f| *f == fingerprint) {
            return true;
        }
        // Same work whether or not the user exists.
        let hash = known.cloned().unwrap_or_else(|| self.decoy.clone());
        let Ok(_permit) = self.checks.acquire().await else { return false };
        let password = password.to_owned();
        let matched = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
            .await
            .unwrap_or(false);
        let ok = matched && known.is_some();
        if ok {
            self.verified.insert(user.to_owned(), fingerprint);
        }
        ok
    }

    /// How long to hold an answer to `addr`, given its recent failures.
    fn delay(&self, addr: IpAddr) -> Duration {
        let failures = self.failures.get(&addr).unwrap_or(0);
        match failures.checked_sub(FREE_FAILURES) {
            None => Duration::ZERO,
            Some(n) => FIRST_DELAY.saturating_mul(1 << n.min(8)).min(MAX_DELAY),
        }
    }

    fn record(&self, addr: IpAddr, ok: bool) {
        if ok {
            self.failures.invalidate(&addr);
        } else {
            let n = self.failures.get(&addr).unwrap_or(0);
            self.failures.insert(addr, n.saturating_add(1));
        }
    }
}

/// `None` when the request may go on; otherwise the 401 to answer with.
pub async fn check(app: &AppState, headers: &http::HeaderMap, addr: ClientAddr) -> Option<Response> {
    let auth = app.pull_auth.as_ref()?;
    let creds = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic ").or_else(|| v.strip_prefix("basic ")))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b.trim()).ok())
        .and_then(|raw| String::from_utf8(raw).ok());
    let allowed = match creds.as_deref().and_then(|c| c.split_once(':')) {
        Some((user, password)) => {
            // Held before checking, so parallel guesses from one address wait too.
            tokio::time::sleep(auth.delay(addr.0)).await;
            let ok = auth.check(user, password).await;
            auth.record(addr.0, ok);
            ok
        }
        None => false,
    };
    if allowed {
        return None;
    }
    let mut resp = OciError::new(ErrorCode::Unauthorized, "authentication required").into_response();
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Basic realm=\"ociregistry\""));
    Some(resp)
}
