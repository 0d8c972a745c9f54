//! A Bearer token server, the way Docker Hub's `auth.docker.io` works, for
//! `docker-registry` in token mode (`auth.token` with `rootcertbundle`).
//!
//! `GET /token?service=S&scope=repository:team/app:pull` answers
//! `{"token": JWT, "access_token": JWT, "expires_in": 300}`. The JWT is RS256, signed
//! with the key of the certificate the registry trusts, carries that certificate in
//! its `x5c` header, and grants the actions asked for in each scope. When credentials
//! are configured, requests without them or with wrong ones get 401.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use serde_json::json;
use tokio::task::JoinSet;

use super::pki::{self, SigningFiles};
use super::{Explain, rt};

/// One request the token server answered.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub method: String,
    pub query: String,
    pub scopes: Vec<String>,
    pub service: Option<String>,
    /// The Basic user name sent, if any.
    pub user: Option<String>,
    /// Whether a token was issued (false: 401).
    pub granted: bool,
}

struct State {
    credentials: Option<(String, String)>,
    issuer: String,
    key: EncodingKey,
    /// The signing certificate, DER, base64 (standard alphabet): the `x5c` entry.
    x5c: String,
    requests: Mutex<Vec<TokenRequest>>,
    next_jti: AtomicU64,
}

/// The running token server. Stops when dropped.
pub struct TokenServer {
    port: u16,
    state: Arc<State>,
    signing: SigningFiles,
    service: String,
    task: tokio::task::JoinHandle<()>,
}

impl TokenServer {
    /// Starts a token server whose keys live in `dir`. With `credentials`, only
    /// requests carrying them (HTTP Basic) get a token.
    pub fn start(
        dir: &Path,
        service: &str,
        issuer: &str,
        credentials: Option<(String, String)>,
    ) -> TokenServer {
        let signing = pki::signing_files(dir);
        let key_pem = std::fs::read(&signing.key).expect("reading the token signing key");
        let key = EncodingKey::from_rsa_pem(&key_pem).expect("parsing the token signing key");
        let cert =
            CertificateDer::from_pem_file(&signing.cert).expect("parsing the token signing certificate");
        let x5c = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
        let state = Arc::new(State {
            credentials,
            issuer: issuer.to_string(),
            key,
            x5c,
            requests: Mutex::new(Vec::new()),
            next_jti: AtomicU64::new(1),
        });

        let listener =
            rt().block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("binding the token server");
        let port = listener.local_addr().expect("token server local_addr").port();
        let st = state.clone();
        let task = rt().spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                while conns.try_join_next().is_some() {}
                let st = st.clone();
                conns.spawn(async move {
                    let svc = service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(handle(&st, req)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        TokenServer { port, state, signing, service: service.to_string(), task }
    }

    /// The realm URL to configure in the registry: `http://127.0.0.1:PORT/token`.
    pub fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn service(&self) -> &str {
        &self.service
    }

    pub fn issuer(&self) -> &str {
        &self.state.issuer
    }

    /// The certificate the registry must trust (`rootcertbundle`).
    pub fn cert_path(&self) -> PathBuf {
        self.signing.cert.clone()
    }

    /// Every request answered so far.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.state.requests.lock().expect("token log lock").clone()
    }

    /// How many tokens were issued.
    pub fn issued(&self) -> usize {
        self.requests().iter().filter(|r| r.granted).count()
    }

    /// How many requests were refused with 401.
    pub fn refused(&self) -> usize {
        self.requests().iter().filter(|r| !r.granted).count()
    }

    pub fn reset(&self) {
        self.state.requests.lock().expect("token log lock").clear();
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Explain for TokenServer {
    fn explain(&self) -> String {
        let reqs = self.requests();
        let mut s = format!("---- token server {} ({} requests) ----\n", self.realm(), reqs.len());
        for r in reqs.iter().rev().take(20).rev() {
            s.push_str(&format!("{} ?{} user={:?} granted={}\n", r.method, r.query, r.user, r.granted));
        }
        s
    }
}

fn handle(st: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let query = req.uri().query().unwrap_or("").to_string();
    let mut scopes = Vec::new();
    let mut service = None;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            // Clients send several scopes either as repeated parameters or space-separated.
            "scope" => scopes.extend(v.split(' ').filter(|s| !s.is_empty()).map(String::from)),
            "service" => service = Some(v.into_owned()),
            _ => {}
        }
    }
    let basic = basic_credentials(&req);
    let user = basic.as_ref().map(|(u, _)| u.clone());
    let authorized = match &st.credentials {
        None => true,
        Some(expected) => basic.as_ref() == Some(expected),
    };
    let is_token_path = req.uri().path() == "/token";
    let granted = authorized && is_token_path && req.method() == http::Method::GET;
    st.requests.lock().expect("token log lock").push(TokenRequest {
        method: req.method().to_string(),
        query,
        scopes: scopes.clone(),
        service: service.clone(),
        user,
        granted,
    });

    if !is_token_path || req.method() != http::Method::GET {
        return plain(StatusCode::NOT_FOUND, "only GET /token is served here\n");
    }
    if !authorized {
        let mut r = plain(StatusCode::UNAUTHORIZED, "bad or missing credentials\n");
        r.headers_mut()
            .insert(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Basic realm=\"token\""));
        return r;
    }

    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs();
    let access: Vec<_> = scopes.iter().filter_map(|s| parse_scope(s)).collect();
    let claims = json!({
        "iss": st.issuer,
        "sub": basic_credentials(&req).map(|(u, _)| u).unwrap_or_default(),
        "aud": service.clone().unwrap_or_default(),
        "exp": now + 300,
        "nbf": now.saturating_sub(30),
        "iat": now,
        "jti": format!("e2e-{}", st.next_jti.fetch_add(1, Ordering::Relaxed)),
        "access": access,
    });
    let mut header = Header::new(Algorithm::RS256);
    header.typ = Some("JWT".to_string());
    header.x5c = Some(vec![st.x5c.clone()]);
    let jwt = match jsonwebtoken::encode(&header, &claims, &st.key) {
        Ok(t) => t,
        Err(e) => {
            return plain(StatusCode::INTERNAL_SERVER_ERROR, &format!("signing: {e}\n"));
        }
    };
    let body = json!({"token": jwt, "access_token": jwt, "expires_in": 300});
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    r
}

/// `repository:team/app:pull,push` → `{type, name, actions}`. The type is before the
/// first colon and the actions after the last one (names may not contain colons).
fn parse_scope(scope: &str) -> Option<serde_json::Value> {
    let (kind, rest) = scope.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    let actions: Vec<&str> = actions.split(',').filter(|a| !a.is_empty()).collect();
    Some(json!({"type": kind, "name": name, "actions": actions}))
}

fn basic_credentials<B>(req: &Request<B>) -> Option<(String, String)> {
    let value = req.headers().get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, b64) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

fn plain(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(text.to_string())));
    *r.status_mut() = status;
    r
}
