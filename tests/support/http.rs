//! A raw HTTP client for poking at the mirror (and pinging fixtures): one
//! [`Request`] builder for every kind of request the tests send, plus a bare TLS
//! handshake ([`tls_handshake`]) and bytes on a socket ([`raw_exchange`]).
//!
//! One connection per request and the URL's path sent byte for byte: `..`, `%2e%2e`,
//! `%2F` and `//` reach the server exactly as written, which general-purpose clients
//! (that normalise URLs) would not allow.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request as HttpRequest, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpSocket, TcpStream};
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

    /// [`Response::oci_error_mismatch`] for a response to `method`: a HEAD response
    /// has no body, so only its status is checked.
    pub fn oci_error_mismatch_for(&self, method: &str, status: u16, code: Option<&str>) -> Option<String> {
        if method.eq_ignore_ascii_case("HEAD") {
            (self.status != status).then(|| format!("status {} (wanted {status})", self.status))
        } else {
            self.oci_error_mismatch(status, code)
        }
    }

    /// Panics unless this is an OCI error with `status` and `code`.
    #[track_caller]
    pub fn assert_oci_error(&self, status: u16, code: &str, what: &str) {
        if let Some(problem) = self.oci_error_mismatch(status, Some(code)) {
            panic!("{what}: {problem}");
        }
    }
}

/// One request, built up and then sent on a connection of its own.
///
/// ```ignore
/// let r = Request::get(&url).accept_manifests().ca(&ca).identity(&cert, &key).send();
/// let r = Request::new("PUT", &url).header("content-type", t).body(bytes).try_send()?;
/// let r = Request::get(&url).from(client_ip).timeout(Duration::from_secs(5)).try_send();
/// let s = Request::get(&url).header("range", "bytes=0-9").stream(None).await?;
/// ```
///
/// Plain HTTP/1.1 unless the URL is `https` (then [`Request::ca`] is required)
/// or [`Request::http2`] is asked for. The whole exchange, body included, must
/// finish within [`Request::timeout`] ([`REQUEST_TIMEOUT`] unless set).
#[derive(Debug, Clone)]
pub struct Request {
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body: Bytes,
    ca: Option<PathBuf>,
    identity: Option<(PathBuf, PathBuf)>,
    from: Option<IpAddr>,
    http2: bool,
    timeout: Duration,
}

impl Request {
    pub fn new(method: &str, url: &str) -> Request {
        Request {
            method: method.to_string(),
            url: url.to_string(),
            headers: Vec::new(),
            body: Bytes::new(),
            ca: None,
            identity: None,
            from: None,
            http2: false,
            timeout: REQUEST_TIMEOUT,
        }
    }

    pub fn get(url: &str) -> Request {
        Request::new("GET", url)
    }

    pub fn head(url: &str) -> Request {
        Request::new("HEAD", url)
    }

    /// Adds a header line (a name may be given more than once: each is its own line).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Adds several header lines, in order.
    pub fn headers(self, headers: &[(&str, &str)]) -> Self {
        headers.iter().fold(self, |r, (k, v)| r.header(k, v))
    }

    /// `Accept:` [`ACCEPT_MANIFESTS`], as a registry client asks for a manifest.
    pub fn accept_manifests(self) -> Self {
        self.header("accept", ACCEPT_MANIFESTS)
    }

    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// Trusts `ca` (PEM) for an `https` URL.
    pub fn ca(mut self, ca: impl AsRef<Path>) -> Self {
        self.ca = Some(ca.as_ref().to_path_buf());
        self
    }

    /// Presents the client certificate `cert` with its key `key` (PEM) when the
    /// server asks for one.
    pub fn identity(mut self, cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Self {
        self.identity = Some((cert.as_ref().to_path_buf(), key.as_ref().to_path_buf()));
        self
    }

    /// Connects from the local address `local` (plain `http://IP:PORT` URLs only;
    /// any of 127.0.0.0/8 reaches a 127.0.0.1 server: a distinct client address per
    /// request on loopback).
    pub fn from(mut self, local: IpAddr) -> Self {
        self.from = Some(local);
        self
    }

    /// Speaks HTTP/2 (over TLS, ALPN `h2` only) instead of HTTP/1.1.
    pub fn http2(mut self) -> Self {
        self.http2 = true;
        self
    }

    /// Gives up after `timeout` (an error, not a hang).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends the request and collects the response; panics (naming the request) on
    /// a transport error.
    #[track_caller]
    pub fn send(self) -> Response {
        let what = format!("{} {}", self.method, self.url);
        self.try_send().unwrap_or_else(|e| panic!("{what}: {e}"))
    }

    /// Sends the request and collects the response.
    pub fn try_send(self) -> Result<Response, String> {
        rt().block_on(self.try_send_async())
    }

    /// [`Request::try_send`], for async callers.
    pub async fn try_send_async(self) -> Result<Response, String> {
        let timeout = self.timeout;
        let fut = async {
            let resp = self.open().await?;
            let (parts, body) = resp.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| format!("reading the response body (status {}): {e}", parts.status))?
                .to_bytes();
            Ok(Response { status: parts.status.as_u16(), headers: parts.headers, body })
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| format!("no complete response within {timeout:?}"))?
    }

    /// Sends the request and reads the body as it streams, hashing it and adding
    /// each chunk's length to `progress` (if given). A body that breaks off is
    /// reported in [`Streamed::error`], not as an `Err` (which means no response head
    /// at all).
    pub async fn stream(self, progress: Option<Arc<AtomicU64>>) -> Result<Streamed, String> {
        use sha2::{Digest as _, Sha256};
        let timeout = self.timeout;
        let resp = tokio::time::timeout(timeout, self.open())
            .await
            .map_err(|_| format!("no response head within {timeout:?}"))??;
        let head_at = Instant::now();
        let (parts, mut body) = resp.into_parts();
        let mut hash = Sha256::new();
        let mut bytes = 0u64;
        let mut first = None;
        let mut error = None;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, body.frame()).await {
                Err(_) => {
                    error = Some(format!("body not finished within {timeout:?}"));
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
                            first = Some(Instant::now());
                        }
                        hash.update(&data);
                        bytes += data.len() as u64;
                        if let Some(p) = &progress {
                            p.fetch_add(data.len() as u64, Ordering::SeqCst);
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
            done_at: Instant::now(),
            bytes,
            digest: format!("sha256:{}", hex::encode(hash.finalize())),
            error,
        })
    }

    /// [`Request::stream`] by `clients` clients at once, released together, each on
    /// a connection of its own (blocking until all are done).
    pub fn stream_concurrently(&self, clients: usize) -> Vec<Result<Streamed, String>> {
        let barrier = Arc::new(tokio::sync::Barrier::new(clients));
        rt().block_on(async {
            let tasks: Vec<_> = (0..clients)
                .map(|_| {
                    let (request, barrier) = (self.clone(), barrier.clone());
                    tokio::spawn(async move {
                        barrier.wait().await;
                        request.stream(None).await
                    })
                })
                .collect();
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap_or_else(|e| Err(format!("client task: {e}"))));
            }
            out
        })
    }

    /// Connects, sends the request and returns the response head with a streaming body.
    async fn open(self) -> Result<http::Response<Incoming>, String> {
        let url = &self.url;
        let uri: Uri = url.parse().map_err(|e| format!("bad URL {url:?}: {e}"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("not an http(s) URL: {url}")),
        };
        if self.http2 && !https {
            return Err(format!("HTTP/2 is only spoken over TLS here, not to {url}"));
        }
        let authority = uri.authority().ok_or_else(|| format!("URL without host: {url}"))?.clone();
        let tcp = match self.from {
            None => {
                let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
                TcpStream::connect((authority.host(), port))
                    .await
                    .map_err(|e| format!("connecting to {authority}: {e}"))?
            }
            Some(local) => {
                let addr: SocketAddr = authority.as_str().parse().map_err(|e| {
                    format!("connecting from {local} needs an IP:PORT URL ({authority}): {e}")
                })?;
                let socket = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }
                    .map_err(|e| format!("creating a socket: {e}"))?;
                socket
                    .bind((local, 0).into())
                    .map_err(|e| format!("binding the client socket to {local}: {e}"))?;
                socket.connect(addr).await.map_err(|e| format!("connecting to {addr} from {local}: {e}"))?
            }
        };
        let _ = tcp.set_nodelay(true);

        let method = Method::from_bytes(self.method.as_bytes()).map_err(|e| format!("bad method: {e}"))?;
        // HTTP/1.1 sends the path byte for byte with a Host line; HTTP/2 carries the
        // whole URI in its pseudo-headers.
        let mut req = if self.http2 {
            HttpRequest::builder().method(method).uri(uri.clone())
        } else {
            let path = uri.path_and_query().map_or_else(|| "/".to_string(), |p| p.as_str().to_string());
            HttpRequest::builder().method(method).uri(path).header(http::header::HOST, authority.as_str())
        };
        for (k, v) in &self.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let req = req.body(Full::new(self.body)).map_err(|e| format!("building the request: {e}"))?;

        if !https {
            return exchange(TokioIo::new(tcp), req, false).await;
        }
        let ca = self.ca.as_deref().ok_or_else(|| format!("https URL {url} but no CA given"))?;
        let alpn: &[&[u8]] = if self.http2 { &[b"h2"] } else { &[b"http/1.1"] };
        let tls = tls_connector_with_alpn(ca, self.identity, alpn)
            .connect(server_name(authority.host())?, tcp)
            .await
            .map_err(|e| format!("TLS handshake with {authority}: {e}"))?;
        if self.http2 && tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(format!(
                "the server did not agree to h2 over ALPN (got {:?})",
                tls.get_ref().1.alpn_protocol().map(String::from_utf8_lossy)
            ));
        }
        exchange(TokioIo::new(tls), req, self.http2).await
    }
}

async fn exchange<T>(
    io: T,
    req: HttpRequest<Full<Bytes>>,
    http2: bool,
) -> Result<http::Response<Incoming>, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    if http2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        return sender.send_request(req).await.map_err(|e| format!("sending the request: {e}"));
    }
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(io).await.map_err(|e| format!("HTTP handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender.send_request(req).await.map_err(|e| format!("sending the request: {e}"))
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
    pub head_at: Instant,
    /// When the first body byte arrived (None: empty body).
    pub first_body_byte_at: Option<Instant>,
    /// When the body ended (normally or not).
    pub done_at: Instant,
    /// Body bytes received.
    pub bytes: u64,
    /// `sha256:<hex>` of the bytes received.
    pub digest: String,
    /// Why the body ended early (transport error), if it did.
    pub error: Option<String>,
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
