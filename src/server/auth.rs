//! Optional Basic authentication for pulls (`pullAuth.htpasswd`, bcrypt).
//!
//! bcrypt is deliberately slow (tens of milliseconds), so a verified
//! user/password pair is remembered (as a SHA-256 of the password, never the
//! password) and later requests cost one map lookup.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use dashmap::DashMap;
use http::header;
use sha2::{Digest as _, Sha256};

use super::AppState;
use super::error::{ErrorCode, OciError};
use crate::config::Htpasswd;

pub struct PullAuth {
    users: HashMap<String, String>,
    verified: DashMap<String, [u8; 32]>,
}

impl PullAuth {
    pub fn new(h: &Htpasswd) -> PullAuth {
        PullAuth { users: h.users.iter().cloned().collect(), verified: DashMap::new() }
    }

    async fn check(&self, user: &str, password: &str) -> bool {
        let Some(hash) = self.users.get(user).cloned() else { return false };
        let fingerprint: [u8; 32] = Sha256::digest(password.as_bytes()).into();
        if self.verified.get(user).is_some_and(|f| *f == fingerprint) {
            return true;
        }
        let password = password.to_owned();
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
            .await
            .unwrap_or(false);
        if ok {
            self.verified.insert(user.to_owned(), fingerprint);
        }
        ok
    }
}

pub async fn layer(State(app): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let Some(auth) = &app.pull_auth else {
        return next.run(req).await;
    };
    let creds = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic ").or_else(|| v.strip_prefix("basic ")))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b.trim()).ok())
        .and_then(|raw| String::from_utf8(raw).ok());
    let allowed = match creds.as_deref().and_then(|c| c.split_once(':')) {
        Some((user, password)) => auth.check(user, password).await,
        None => false,
    };
    if allowed {
        return next.run(req).await;
    }
    let mut resp = OciError::new(ErrorCode::Unauthorized, "authentication required").into_response();
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Basic realm=\"ociregistry\""));
    resp
}
