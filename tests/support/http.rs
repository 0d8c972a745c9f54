//! A raw HTTP/1.1 client for poking at the mirror (and pinging fixtures).
//!
//! One connection per request and the URL's path sent byte for byte: `..`, `%2e%2e`,
//! `%2F` and `//` reach the server exactly as written, which general-purpose clients
//! (that normalise URLs) would not allow.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::rt;

/// How long any single request may take before the test fails.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// A complete response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Response {
    /// The value of a header (the first one), if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as (lossy) text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `code` of the first error in an OCI error envelope
    /// (`{"errors":[{"code":…,"message":…}]}`), if the body is one.
    pub fn error_code(&self) -> Option<String> {
        let v: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        v.get("errors")?.as_array()?.first()?.get("code")?.as_str().map(String::from)
    }

    /// Checks the status and the OCI error envelope: a JSON object whose `errors` is a
    /// non-empty array of objects each with a string `code` and `message`, the first
    /// with `code` (unless `code` is None: any code). Returns a description of what is
    /// wrong, or None.
    pub fn oci_error_mismatch(&self, status: u16, code: Option<&str>) -> Option<String> {
        if self.status != status {
            return Some(format!("status {} (wanted {status}); body: {}", self.status, self.text()));
        }
        let v: serde_json::Value = match serde_json::from_slice(&self.body) {
            Ok(v) => v,
            Err(e) => {
                return Some(format!(
                    "body is not JSON ({e}), wanted an OCI error envelope: {:?}",
                    self.text()
                ));
            }
        };
        let Some(errors) = v.get("errors").and_then(|e| e.as_array()) else {
            return Some(format!("no \"errors\" array in {v}"));
        };
        if errors.is_empty() {
            return Some(format!("empty \"errors\" array in {v}"));
        }
        for e in errors {
            if !e.get("code").is_some_and(|c| c.is_string())
                || !e.get("message").is_some_and(|m| m.is_string())
            {
                return Some(format!("error without string code/message: {e}"));
            }
        }
        if let Some(code) = code {
            let got = errors[0]["code"].as_str().unwrap_or_default();
            if got != code {
                return Some(format!("error code {got:?} (wanted {code:?}) in {v}"));
            }
        }
        None
    }

    /// Panics unless this is an OCI error with `status` and `code`.
    #[track_caller]
    pub fn assert_oci_error(&self, status: u16, code: &str, what: &str) {
        if let Some(problem) = self.oci_error_mismatch(status, Some(code)) {
            panic!("{what}: {problem}");
        }
    }
}

/// Sends a request and collects the response; panics (naming the request) on a
/// transport error.
#[track_caller]
pub fn request(method: &str, url: &str, headers: &[(&str, &str)]) -> Response {
    try_request(method, url, headers).unwrap_or_else(|e| panic!("{method} {url}: {e}"))
}

#[track_caller]
pub fn get(url: &str) -> Response {
    request("GET", url, &[])
}

#[track_caller]
pub fn head(url: &str) -> Response {
    request("HEAD", url, &[])
}

/// Sends a request with a body.
#[track_caller]
pub fn request_with_body(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Response {
    let body = body.into();
    rt().block_on(send(method, url, headers, body, None)).unwrap_or_else(|e| panic!("{method} {url}: {e}"))
}

pub fn try_request(method: &str, url: &str, headers: &[(&str, &str)]) -> Result<Response, String> {
    try_request_with_ca(method, url, headers, None)
}

/// Like [`try_request`], trusting `ca` (PEM) for an `https` URL.
pub fn try_request_with_ca(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    ca: Option<&Path>,
) -> Result<Response, String> {
    rt().block_on(send(method, url, headers, Bytes::new(), ca))
}

/// Like [`try_request_with_ca`], presenting a client certificate `(cert, key)` (PEM)
/// when the server asks for one.
pub fn try_request_with_identity(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    ca: &Path,
    identity: (&Path, &Path),
) -> Result<Response, String> {
    rt().block_on(send_tls(method, url, headers, Bytes::new(), Some(ca), Some(identity)))
}

/// Like [`try_request`] (plain `http` URLs only), from the local address `local`
/// (any of 127.0.0.0/8 reaches a 127.0.0.1 server: a distinct client address per
/// request on loopback).
pub fn try_request_from(
    local: std::net::IpAddr,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<Response, String> {
    rt().block_on(async {
        let fut = async {
            let uri: Uri = url.parse().map_err(|e| format!("bad URL {url:?}: {e}"))?;
            if uri.scheme_str() != Some("http") {
                return Err(format!("try_request_from: only http URLs, not {url}"));
            }
            let authority = uri.authority().ok_or_else(|| format!("URL without host: {url}"))?.clone();
            let addr: std::net::SocketAddr = authority
                .as_str()
                .parse()
                .map_err(|e| format!("try_request_from needs an IP:PORT URL ({authority}): {e}"))?;
            let socket = if addr.is_ipv4() {
                tokio::net::TcpSocket::new_v4()
            } else {
                tokio::net::TcpSocket::new_v6()
            }
            .map_err(|e| format!("creating a socket: {e}"))?;
            socket
                .bind((local, 0).into())
                .map_err(|e| format!("binding the client socket to {local}: {e}"))?;
            let tcp =
                socket.connect(addr).await.map_err(|e| format!("connecting to {addr} from {local}: {e}"))?;
            let _ = tcp.set_nodelay(true);
            let path =
                uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".to_string());
            let method = Method::from_bytes(method.as_bytes()).map_err(|e| format!("bad method: {e}"))?;
            let mut req =
                Request::builder().method(method).uri(path).header(http::header::HOST, authority.as_str());
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            let req = req.body(Full::new(Bytes::new())).map_err(|e| format!("building the request: {e}"))?;
            let resp = exchange(TokioIo::new(tcp), req).await?;
            let (parts, body) = resp.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| format!("reading the response body (status {}): {e}", parts.status))?
                .to_bytes();
            Ok(Response { status: parts.status.as_u16(), headers: parts.headers, body })
        };
        tokio::time::timeout(REQUEST_TIMEOUT, fut)
            .await
            .map_err(|_| format!("no complete response within {REQUEST_TIMEOUT:?}"))?
    })
}

/// Sends a request and collects the whole response (async).
pub async fn send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
    ca: Option<&Path>,
) -> Result<Response, String> {
    send_tls(method, url, headers, body, ca, None).await
}

/// [`send`], with a client certificate `(cert, key)` for an `https` URL.
pub async fn send_tls(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
    ca: Option<&Path>,
    identity: Option<(&Path, &Path)>,
) -> Result<Response, String> {
    let fut = async {
        let resp = open_with_body(method, url, headers, body, ca, identity).await?;
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| format!("reading the response body (status {}): {e}", parts.status))?
            .to_bytes();
        Ok(Response { status: parts.status.as_u16(), headers: parts.headers, body })
    };
    tokio::time::timeout(REQUEST_TIMEOUT, fut)
        .await
        .map_err(|_| format!("no complete response within {REQUEST_TIMEOUT:?}"))?
}

/// Sends a request and returns the response head with a streaming body.
pub async fn open(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<http::Response<Incoming>, String> {
    open_with_body(method, url, headers, Bytes::new(), None, None).await
}

async fn open_with_body(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
    ca: Option<&Path>,
    identity: Option<(&Path, &Path)>,
) -> Result<http::Response<Incoming>, String> {
    let uri: Uri = url.parse().map_err(|e| format!("bad URL {url:?}: {e}"))?;
    let authority = uri.authority().ok_or_else(|| format!("URL without host: {url}"))?.clone();
    let port = authority.port_u16().unwrap_or(if uri.scheme_str() == Some("https") { 443 } else { 80 });
    let tcp = TcpStream::connect((authority.host(), port))
        .await
        .map_err(|e| format!("connecting to {authority}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let path = uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".to_string());
    let method = Method::from_bytes(method.as_bytes()).map_err(|e| format!("bad method: {e}"))?;
    let mut req = Request::builder().method(method).uri(path);
    req = req.header(http::header::HOST, authority.as_str());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body)).map_err(|e| format!("building the request: {e}"))?;

    if uri.scheme_str() == Some("https") {
        let ca = ca.ok_or_else(|| format!("https URL {url} but no CA given"))?;
        let identity = identity.map(|(c, k)| (c.to_path_buf(), k.to_path_buf()));
        let tls = tls_connector_with_identity(ca, identity)
            .connect(server_name(authority.host())?, tcp)
            .await
            .map_err(|e| format!("TLS handshake with {authority}: {e}"))?;
        exchange(TokioIo::new(tls), req).await
    } else {
        exchange(TokioIo::new(tcp), req).await
    }
}

async fn exchange<T>(io: T, req: Request<Full<Bytes>>) -> Result<http::Response<Incoming>, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(io).await.map_err(|e| format!("HTTP handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender.send_request(req).await.map_err(|e| format!("sending the request: {e}"))
}

/// A TLS client trusting only `ca` (PEM), HTTP/1.1 over ALPN.
pub fn tls_connector(ca: &Path) -> TlsConnector {
    tls_connector_with_identity(ca, None)
}

/// A TLS client trusting only `ca` (PEM), presenting the client certificate
/// `(cert, key)` (PEM) if given, HTTP/1.1 over ALPN.
pub fn tls_connector_with_identity(ca: &Path, identity: Option<(PathBuf, PathBuf)>) -> TlsConnector {
    tls_connector_with_alpn(ca, identity, &[b"http/1.1"])
}

/// What a TLS server showed in a handshake.
#[derive(Debug, Clone)]
pub struct TlsPeer {
    /// The negotiated ALPN protocol (`h2`, `http/1.1`), if any.
    pub alpn: Option<Vec<u8>>,
    /// The server's leaf certificate (DER).
    pub leaf: Vec<u8>,
}

/// Completes a TLS handshake with `host_port` trusting `ca`, offering `alpn`, and
/// reports the server's leaf certificate and the negotiated protocol. (With TLS 1.3 a
/// refused client certificate surfaces only on the first read, not here.)
pub fn tls_handshake(
    host_port: &str,
    ca: &Path,
    identity: Option<(PathBuf, PathBuf)>,
    alpn: &[&[u8]],
) -> Result<TlsPeer, String> {
    let connector = tls_connector_with_alpn(ca, identity, alpn);
    let host_port = host_port.to_string();
    rt().block_on(async move {
        let fut = async {
            let tcp = TcpStream::connect(&host_port)
                .await
                .map_err(|e| format!("connecting to {host_port}: {e}"))?;
            let tls = connector
                .connect(server_name("127.0.0.1")?, tcp)
                .await
                .map_err(|e| format!("TLS handshake with {host_port}: {e}"))?;
            let conn = tls.get_ref().1;
            let leaf = conn
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.as_ref().to_vec())
                .ok_or_else(|| "the server sent no certificate".to_string())?;
            Ok(TlsPeer { alpn: conn.alpn_protocol().map(|p| p.to_vec()), leaf })
        };
        tokio::time::timeout(Duration::from_secs(20), fut)
            .await
            .map_err(|_| format!("no TLS handshake with {host_port} within 20 s"))?
    })
}

/// `GET url` over HTTP/2 (TLS, ALPN `h2` only), trusting `ca`, presenting `identity`.
pub fn h2_get(url: &str, ca: &Path, identity: Option<(PathBuf, PathBuf)>) -> Result<Response, String> {
    let uri: Uri = url.parse().map_err(|e| format!("bad URL {url:?}: {e}"))?;
    let authority = uri.authority().ok_or_else(|| format!("URL without host: {url}"))?.clone();
    let connector = tls_connector_with_alpn(ca, identity, &[b"h2"]);
    rt().block_on(async move {
        let fut = async {
            let tcp = TcpStream::connect(authority.as_str())
                .await
                .map_err(|e| format!("connecting to {authority}: {e}"))?;
            let tls = connector
                .connect(server_name(authority.host())?, tcp)
                .await
                .map_err(|e| format!("TLS handshake with {authority}: {e}"))?;
            if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
                return Err(format!(
                    "the server did not agree to h2 over ALPN (got {:?})",
                    tls.get_ref().1.alpn_protocol().map(String::from_utf8_lossy)
                ));
            }
            let (mut sender, conn) = hyper::client::conn::http2::handshake(
                hyper_util::rt::TokioExecutor::new(),
                TokioIo::new(tls),
            )
            .await
            .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let req = Request::builder()
                .method(Method::GET)
                .uri(uri)
                .body(Full::new(Bytes::new()))
                .map_err(|e| format!("building the request: {e}"))?;
            let resp = sender.send_request(req).await.map_err(|e| format!("sending the request: {e}"))?;
            let (parts, body) = resp.into_parts();
            let body = body.collect().await.map_err(|e| format!("reading the body: {e}"))?.to_bytes();
            Ok(Response { status: parts.status.as_u16(), headers: parts.headers, body })
        };
        tokio::time::timeout(Duration::from_secs(20), fut)
            .await
            .map_err(|_| format!("no HTTP/2 response from {url} within 20 s"))?
    })
}

/// A TLS client trusting only `ca` (PEM), presenting the client certificate
/// `(cert, key)` (PEM) if given, offering `alpn`.
pub fn tls_connector_with_alpn(
    ca: &Path,
    identity: Option<(PathBuf, PathBuf)>,
    alpn: &[&[u8]],
) -> TlsConnector {
    let builder =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("rustls protocol versions")
            .with_root_certificates(root_store(ca));
    let mut config = match identity {
        Some((cert, key)) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
                .unwrap_or_else(|e| panic!("reading client certificate {}: {e}", cert.display()))
                .collect::<Result<_, _>>()
                .unwrap_or_else(|e| panic!("parsing client certificate {}: {e}", cert.display()));
            let key = PrivateKeyDer::from_pem_file(&key)
                .unwrap_or_else(|e| panic!("reading client key {}: {e}", key.display()));
            builder.with_client_auth_cert(certs, key).expect("client certificate and key")
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(config))
}

/// The certificates of a PEM file as a root store.
pub fn root_store(ca: &Path) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    for cert in
        CertificateDer::pem_file_iter(ca).unwrap_or_else(|e| panic!("reading CA {}: {e}", ca.display()))
    {
        let cert = cert.unwrap_or_else(|e| panic!("parsing CA {}: {e}", ca.display()));
        roots.add(cert).unwrap_or_else(|e| panic!("adding CA {}: {e}", ca.display()));
    }
    roots
}

fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_string()).map_err(|e| format!("bad TLS server name {host}: {e}"))
}

/// A response read as a stream, with timings.
#[derive(Debug, Clone)]
pub struct Streamed {
    pub status: u16,
    pub headers: HeaderMap,
    /// When the response head arrived.
    pub head_at: std::time::Instant,
    /// When the first body byte arrived (None: empty body).
    pub first_body_byte_at: Option<std::time::Instant>,
    /// When the body ended (normally or not).
    pub done_at: std::time::Instant,
    /// Body bytes received.
    pub bytes: u64,
    /// `sha256:<hex>` of the bytes received.
    pub digest: String,
    /// Why the body ended early (transport error), if it did.
    pub error: Option<String>,
}

/// Sends a GET and reads the body as it streams, hashing it and adding each chunk's
/// length to `progress` (if given). A body that breaks off is reported in `error`,
/// not as an `Err` (which means no response head at all).
pub async fn stream(
    url: &str,
    headers: &[(&str, &str)],
    progress: Option<Arc<std::sync::atomic::AtomicU64>>,
) -> Result<Streamed, String> {
    use sha2::{Digest as _, Sha256};
    let resp = tokio::time::timeout(REQUEST_TIMEOUT, open("GET", url, headers))
        .await
        .map_err(|_| format!("no response head within {REQUEST_TIMEOUT:?}"))??;
    let head_at = std::time::Instant::now();
    let (parts, mut body) = resp.into_parts();
    let mut hash = Sha256::new();
    let mut bytes = 0u64;
    let mut first = None;
    let mut error = None;
    let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
    loop {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => {
                error = Some(format!("body not finished within {REQUEST_TIMEOUT:?}"));
                break;
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                error = Some(e.to_string());
                break;
            }
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    if !data.is_empty() && first.is_none() {
                        first = Some(std::time::Instant::now());
                    }
                    hash.update(&data);
                    bytes += data.len() as u64;
                    if let Some(p) = &progress {
                        p.fetch_add(data.len() as u64, std::sync::atomic::Ordering::SeqCst);
                    }
                }
            }
        }
    }
    Ok(Streamed {
        status: parts.status.as_u16(),
        headers: parts.headers,
        head_at,
        first_body_byte_at: first,
        done_at: std::time::Instant::now(),
        bytes,
        digest: format!("sha256:{}", hex::encode(hash.finalize())),
        error,
    })
}

/// The Accept header a registry client sends for any manifest kind.
pub const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// Sends `bytes` on a fresh connection and reads what comes back for up to `wait`
/// (or until the server closes the connection); true if the server closed it.
pub fn raw_exchange(host_port: &str, bytes: &[u8], wait: Duration) -> (Vec<u8>, bool) {
    use std::io::{Read as _, Write as _};
    let mut c =
        std::net::TcpStream::connect(host_port).unwrap_or_else(|e| panic!("connecting to {host_port}: {e}"));
    c.write_all(bytes).expect("sending raw bytes");
    c.set_read_timeout(Some(Duration::from_millis(200))).expect("read timeout");
    let deadline = std::time::Instant::now() + wait;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while std::time::Instant::now() < deadline {
        match c.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return (got, true),
        }
    }
    (got, false)
}
