//! A counting, throttling, fault-injecting HTTP proxy placed in front of the real
//! upstream. The mirror is configured with the proxy's URL as the registry endpoint,
//! so what the proxy records is the mirror's real upstream traffic: no part of the
//! server under test is mocked (STYLE.md point 19).
//!
//! Every request is forwarded as-is (method, path and query, headers including
//! `Authorization`, streaming bodies both ways) over a fresh connection. In front of
//! a TLS upstream the proxy serves TLS too, with the upstream's certificate, so the
//! same CA works for both; in front of an mTLS upstream it also requires a client
//! certificate signed by the test CA, and presents the test client certificate
//! upstream, so it is as strict as what it stands for.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::http::{root_store, tls_connector_with_identity};
use super::upstream::Upstream;
use super::{Explain, rt};

/// A fault the proxy injects, until changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Forward faithfully.
    None,
    /// Accept each connection and close it at once, before reading a request (the
    /// upstream is "down"; clients see a reset/EOF).
    Refuse,
    /// Answer every request with this status and an empty body, without forwarding.
    Status(u16),
    /// Answer every request with this status and `Retry-After: <secs>`, without forwarding.
    StatusRetryAfter(u16, u64),
    /// Forward, but send nothing for this many seconds once a `GET …/blobs/…` body
    /// has passed this many bytes (a stalled link, connection kept open). Counts
    /// from the start of the body.
    StallBlobBodiesAfter(u64, u64),
    /// Forward, but end every `GET …/blobs/…` response body by dropping the
    /// connection (a reset mid-blob) once it reaches this offset of the blob. The
    /// offset counts from the start of the blob, not of the body: a `206` answer to
    /// `Range: bytes=N-` is cut after `limit - N` bytes (at once if `N >= limit`), so
    /// a client that resumes never gets past the cut either.
    CutBlobBodiesAfter(u64),
    /// Forward, but invert (XOR 0xFF) the byte at `offset` in the body of every
    /// `GET` whose path (and query) contains `path_part`, keeping the length and
    /// the headers: the upstream sends wrong bytes under the right digest. Like
    /// [`Fault::CutBlobBodiesAfter`], `offset` counts from the start of the
    /// resource, so a `206` body starting at `N` has its byte `offset - N` flipped.
    FlipByte { path_part: String, offset: u64 },
    /// Answer every request whose path (and query) contains `path_part` with
    /// `response`, without forwarding it; other requests are forwarded.
    Replace { path_part: String, response: Canned },
}

/// A response the proxy makes up instead of forwarding ([`Fault::Replace`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Canned {
    pub status: u16,
    pub content_type: Option<String>,
    /// More headers (e.g. a lying `Docker-Content-Digest`).
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// Send the body chunked, without `Content-Length`: the receiver learns its
    /// size only by reading it.
    pub chunked: bool,
}

impl Canned {
    /// `status` with this body and `Content-Type`, with a `Content-Length`.
    pub fn new(status: u16, content_type: &str, body: impl Into<Bytes>) -> Canned {
        Canned {
            status,
            content_type: Some(content_type.to_string()),
            headers: Vec::new(),
            body: body.into(),
            chunked: false,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Canned {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn chunked(mut self) -> Canned {
        self.chunked = true;
        self
    }
}

/// How a forwarded response body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyEnd {
    /// Still streaming (or no response yet).
    Pending,
    /// All bytes the upstream sent were passed on.
    Complete,
    /// The client (the mirror) went away before the end.
    ClientGone,
    /// Cut by [`Fault::CutBlobBodiesAfter`].
    Cut,
    /// Made up by [`Fault::Replace`] and sent whole.
    Replaced,
    /// The upstream failed mid-body.
    UpstreamError,
    /// No upstream response (connect failure or injected status).
    NotForwarded,
}

/// One request seen by the proxy.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query, as received.
    pub path: String,
    /// The `Range` header, if any.
    pub range: Option<String>,
    pub had_authorization: bool,
    /// Response status passed back (None: not yet).
    pub status: Option<u16>,
    pub started: Instant,
    /// When the last body byte was passed on (or the body otherwise ended).
    pub finished: Option<Instant>,
    pub body_bytes: u64,
    pub end: BodyEnd,
    /// Whether [`Fault::FlipByte`] changed a byte of this body.
    pub flipped: bool,
}

struct Record {
    method: String,
    path: String,
    range: Option<String>,
    had_authorization: bool,
    started: Instant,
    status: AtomicU16,
    body_bytes: AtomicU64,
    flipped: AtomicBool,
    /// std Mutex: never held across `.await`, only a field write.
    end: Mutex<(BodyEnd, Option<Instant>)>,
}

impl Record {
    fn finish(&self, end: BodyEnd) {
        *self.end.lock().expect("proxy record lock") = (end, Some(Instant::now()));
    }

    fn snapshot(&self) -> Seen {
        let (end, finished) = *self.end.lock().expect("proxy record lock");
        let status = self.status.load(Ordering::SeqCst);
        Seen {
            method: self.method.clone(),
            path: self.path.clone(),
            range: self.range.clone(),
            had_authorization: self.had_authorization,
            status: (status != 0).then_some(status),
            started: self.started,
            finished,
            body_bytes: self.body_bytes.load(Ordering::SeqCst),
            end,
            flipped: self.flipped.load(Ordering::SeqCst),
        }
    }
}

struct State {
    upstream_port: u16,
    upstream_tls: Option<TlsConnector>,
    /// std Mutex: held only to push or copy, never across `.await`.
    records: Mutex<Vec<Arc<Record>>>,
    /// Bytes per second for response bodies; 0 = unthrottled.
    throttle: AtomicU64,
    fault: Mutex<Fault>,
    refused: AtomicU64,
    /// SO_SNDBUF of each new connection from the mirror; 0 = the kernel's (autotuned).
    send_buffer: AtomicU64,
}

/// The running proxy. Stops (closing all its connections) when dropped.
pub struct Proxy {
    port: u16,
    tls: bool,
    upstream_url: String,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy in front of `upstream` (TLS if the upstream is TLS).
    pub fn start(upstream: &Upstream) -> Proxy {
        let client_ca =
            upstream.requires_client_cert().then(|| upstream.ca_pem().expect("an mTLS upstream has a CA"));
        let acceptor = upstream.tls_files().map(|t| {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&t.cert)
                .expect("reading the upstream certificate")
                .collect::<Result<_, _>>()
                .expect("parsing the upstream certificate");
            let key = PrivateKeyDer::from_pem_file(&t.key).expect("reading the upstream key");
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .expect("rustls protocol versions");
            let builder = match &client_ca {
                // As strict as the upstream: a client certificate signed by the test CA.
                Some(ca) => {
                    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                        Arc::new(root_store(ca)),
                        provider,
                    )
                    .build()
                    .expect("proxy client certificate verifier");
                    builder.with_client_cert_verifier(verifier)
                }
                None => builder.with_no_client_auth(),
            };
            let mut config = builder.with_single_cert(certs, key).expect("proxy TLS certificate");
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            TlsAcceptor::from(Arc::new(config))
        });
        let state = Arc::new(State {
            upstream_port: upstream.port(),
            upstream_tls: upstream
                .ca_pem()
                .map(|ca| tls_connector_with_identity(&ca, upstream.client_identity())),
            records: Mutex::new(Vec::new()),
            throttle: AtomicU64::new(0),
            fault: Mutex::new(Fault::None),
            refused: AtomicU64::new(0),
            send_buffer: AtomicU64::new(0),
        });
        let listener =
            rt().block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("binding the proxy");
        let port = listener.local_addr().expect("proxy local_addr").port();
        let st = state.clone();
        let tls = acceptor.is_some();
        let task = rt().spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                while conns.try_join_next().is_some() {}
                if matches!(*st.fault.lock().expect("proxy fault lock"), Fault::Refuse) {
                    st.refused.fetch_add(1, Ordering::SeqCst);
                    drop(stream);
                    continue;
                }
                let _ = stream.set_nodelay(true);
                let send_buffer = st.send_buffer.load(Ordering::SeqCst);
                if send_buffer > 0 {
                    set_send_buffer(&stream, send_buffer);
                }
                let st = st.clone();
                let acceptor = acceptor.clone();
                conns.spawn(async move {
                    // A kept-alive connection is "refused" too: its next request
                    // gets the connection closed, like a dead upstream would.
                    let svc = service_fn(move |req| {
                        let st = st.clone();
                        async move {
                            if matches!(*st.fault.lock().expect("proxy fault lock"), Fault::Refuse) {
                                st.refused.fetch_add(1, Ordering::SeqCst);
                                return Err(std::io::Error::other("proxy: refusing (Fault::Refuse)"));
                            }
                            handle(st, req).await.map_err(|never| match never {})
                        }
                    });
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match acceptor {
                        Some(acceptor) => {
                            if let Ok(tls) = acceptor.accept(stream).await {
                                let _ = builder.serve_connection(TokioIo::new(tls), svc).await;
                            }
                        }
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                        }
                    }
                });
            }
        });
        Proxy { port, tls, upstream_url: upstream.url(), state, task }
    }

    /// `http://127.0.0.1:PORT` (or https in front of a TLS upstream).
    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", if self.tls { "https" } else { "http" }, self.port)
    }

    /// `127.0.0.1:PORT`.
    pub fn host_port(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Every request seen so far (since the last [`Proxy::reset`]).
    pub fn requests(&self) -> Vec<Seen> {
        self.state.records.lock().expect("proxy records lock").iter().map(|r| r.snapshot()).collect()
    }

    /// Requests with this method whose path (and query) contains `path_part`.
    pub fn matching(&self, method: &str, path_part: &str) -> Vec<Seen> {
        self.requests()
            .into_iter()
            .filter(|r| r.method.eq_ignore_ascii_case(method) && r.path.contains(path_part))
            .collect()
    }

    /// How many requests with this method had a path containing `path_part`.
    pub fn count(&self, method: &str, path_part: &str) -> usize {
        self.matching(method, path_part).len()
    }

    /// How many requests with this method and `path_part` got a 2xx answer: real
    /// downloads, not the 401 challenges that precede authenticated ones.
    pub fn count_ok(&self, method: &str, path_part: &str) -> usize {
        self.matching(method, path_part)
            .iter()
            .filter(|r| r.status.is_some_and(|s| (200..300).contains(&s)))
            .count()
    }

    /// How many requests of any method had a path containing `path_part`.
    pub fn count_any(&self, path_part: &str) -> usize {
        self.requests().iter().filter(|r| r.path.contains(path_part)).count()
    }

    /// How many requests were seen in all.
    pub fn total(&self) -> usize {
        self.state.records.lock().expect("proxy records lock").len()
    }

    /// How many connections (or requests on kept-alive ones) [`Fault::Refuse`] closed.
    pub fn refused_connections(&self) -> u64 {
        self.state.refused.load(Ordering::SeqCst)
    }

    /// Forgets the requests seen so far.
    pub fn reset(&self) {
        self.state.records.lock().expect("proxy records lock").clear();
        self.state.refused.store(0, Ordering::SeqCst);
    }

    /// Limits every response body to `bytes_per_sec` (None: no limit). Takes effect
    /// immediately, also for bodies already streaming.
    pub fn set_throttle(&self, bytes_per_sec: Option<u64>) {
        self.state.throttle.store(bytes_per_sec.unwrap_or(0), Ordering::SeqCst);
    }

    /// Caps the send buffer (SO_SNDBUF) of connections accepted from now on (None:
    /// the kernel's, autotuned up to `net.ipv4.tcp_wmem`). With a small one, what the
    /// proxy counts as passed on is close to what the mirror has taken in, not what
    /// the kernel holds for it: the upstream's side of a slow link.
    pub fn set_send_buffer(&self, bytes: Option<u64>) {
        self.state.send_buffer.store(bytes.unwrap_or(0), Ordering::SeqCst);
    }

    /// Injects `fault` from now on ([`Fault::None`] to stop).
    pub fn set_fault(&self, fault: Fault) {
        *self.state.fault.lock().expect("proxy fault lock") = fault;
    }

    /// Waits until a request matching `method` and `path_part` has been seen.
    pub fn wait_for(&self, method: &str, path_part: &str, timeout: Duration) -> bool {
        super::wait_until(timeout, || self.count(method, path_part) > 0)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.explain());
        }
        self.task.abort();
    }
}

impl Explain for Proxy {
    fn explain(&self) -> String {
        let reqs = self.requests();
        let t0 = reqs.first().map(|r| r.started);
        let mut s = format!(
            "---- proxy {} → {} ({} requests, {} refused connections; last 40) ----\n",
            self.url(),
            self.upstream_url,
            reqs.len(),
            self.refused_connections()
        );
        for r in reqs.iter().rev().take(40).rev() {
            let at = t0.map(|t| r.started.duration_since(t)).unwrap_or_default();
            s.push_str(&format!(
                "+{:>7.3}s {} {} range={:?} -> {:?} {} bytes {:?}{}{}\n",
                at.as_secs_f64(),
                r.method,
                r.path,
                r.range,
                r.status,
                r.body_bytes,
                r.end,
                if r.flipped { " (a byte flipped)" } else { "" },
                r.finished
                    .map(|f| format!(" after {:.3}s", f.duration_since(r.started).as_secs_f64()))
                    .unwrap_or_default()
            ));
        }
        s
    }
}

/// Sets SO_SNDBUF on an accepted connection (the kernel doubles it for bookkeeping).
fn set_send_buffer(stream: &TcpStream, bytes: u64) {
    use std::os::fd::AsRawFd as _;
    let n = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: setsockopt on a socket we own, reading one c_int from a local.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&n as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// A response body fed by the pump task through a channel.
struct ChannelBody {
    rx: mpsc::Receiver<Result<Frame<Bytes>, io::Error>>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.rx.poll_recv(cx)
    }
}

fn empty_body() -> ChannelBody {
    let (_tx, rx) = mpsc::channel(1);
    ChannelBody { rx }
}

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn copy_end_to_end(from: &HeaderMap, to: &mut HeaderMap) {
    for (k, v) in from {
        if !HOP_BY_HOP.contains(&k.as_str()) {
            to.append(k.clone(), v.clone());
        }
    }
}

async fn handle(st: Arc<State>, req: Request<Incoming>) -> Result<Response<ChannelBody>, Infallible> {
    let path = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".to_string());
    let method = req.method().clone();
    let record = Arc::new(Record {
        method: method.to_string(),
        path: path.clone(),
        range: req.headers().get(http::header::RANGE).and_then(|v| v.to_str().ok()).map(String::from),
        had_authorization: req.headers().contains_key(http::header::AUTHORIZATION),
        started: Instant::now(),
        status: AtomicU16::new(0),
        body_bytes: AtomicU64::new(0),
        flipped: AtomicBool::new(false),
        end: Mutex::new((BodyEnd::Pending, None)),
    });
    st.records.lock().expect("proxy records lock").push(record.clone());

    let fault = st.fault.lock().expect("proxy fault lock").clone();
    let is_get = method == http::Method::GET;
    let mut stall = match &fault {
        Fault::StallBlobBodiesAfter(n, secs) if is_get && path.contains("/blobs/") => {
            Some((*n, Duration::from_secs(*secs)))
        }
        _ => None,
    };
    let (cut_at, flip_at) = match fault {
        Fault::Status(code) => {
            return Ok(local_response(&record, code, "injected by the test proxy"));
        }
        Fault::StatusRetryAfter(code, secs) => {
            let mut resp = local_response(&record, code, "injected by the test proxy");
            resp.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
            return Ok(resp);
        }
        Fault::Replace { path_part, response } if path.contains(&path_part) => {
            return Ok(canned_response(&record, response));
        }
        Fault::CutBlobBodiesAfter(n) if is_get && path.contains("/blobs/") => (Some(n), None),
        Fault::FlipByte { path_part, offset } if is_get && path.contains(&path_part) => (None, Some(offset)),
        _ => (None, None),
    };

    // Build the upstream request: origin-form URI, end-to-end headers, Host kept.
    let mut out = Request::builder().method(method.clone()).uri(path.as_str());
    if let Some(h) = out.headers_mut() {
        copy_end_to_end(req.headers(), h);
        if !h.contains_key(http::header::HOST)
            && let Some(auth) = req.uri().authority()
            && let Ok(v) = HeaderValue::from_str(auth.as_str())
        {
            h.insert(http::header::HOST, v);
        }
    }
    let out = match out.body(req.into_body()) {
        Ok(r) => r,
        Err(e) => return Ok(local_response(&record, 500, &format!("proxy: {e}"))),
    };
    let resp = match forward(&st, out).await {
        Ok(r) => r,
        Err(e) => return Ok(local_response(&record, 502, &format!("proxy: {e}"))),
    };

    let (parts, mut body) = resp.into_parts();
    record.status.store(parts.status.as_u16(), Ordering::SeqCst);
    // Faults count offsets in the resource; a 206 body starts at its Content-Range.
    let body_start = if parts.status == StatusCode::PARTIAL_CONTENT {
        content_range_start(&parts.headers).unwrap_or(0)
    } else {
        0
    };
    let cut_after = cut_at.map(|n| n.saturating_sub(body_start));
    let flip_at = flip_at.and_then(|n| n.checked_sub(body_start));
    let mut builder = Response::builder().status(parts.status);
    if let Some(h) = builder.headers_mut() {
        copy_end_to_end(&parts.headers, h);
    }
    let (tx, rx) = mpsc::channel(4);
    let st2 = st.clone();
    let rec = record.clone();
    tokio::spawn(async move {
        let mut sent: u64 = 0;
        let mut next_due = tokio::time::Instant::now();
        if cut_after == Some(0) {
            let _ = tx.send(Err(reset_error())).await;
            rec.finish(BodyEnd::Cut);
            return;
        }
        loop {
            let frame = match body.frame().await {
                None => {
                    rec.finish(BodyEnd::Complete);
                    return;
                }
                Some(Err(e)) => {
                    let _ = tx.send(Err(io::Error::other(e))).await;
                    rec.finish(BodyEnd::UpstreamError);
                    return;
                }
                Some(Ok(f)) => f,
            };
            let mut data = match frame.into_data() {
                Ok(d) => d,
                Err(other) => {
                    if tx.send(Ok(other)).await.is_err() {
                        rec.finish(BodyEnd::ClientGone);
                        return;
                    }
                    continue;
                }
            };
            while !data.is_empty() {
                let rate = st2.throttle.load(Ordering::SeqCst);
                let mut n = if rate > 0 {
                    // 20 ms worth of bytes per slice, within [512 B, 64 KiB].
                    (rate / 50).clamp(512, 64 * 1024) as usize
                } else {
                    data.len()
                };
                n = n.min(data.len());
                if let Some((after, pause)) = stall
                    && sent + n as u64 > after
                {
                    n = (after - sent.min(after)) as usize;
                    if n == 0 {
                        stall = None;
                        tokio::time::sleep(pause).await;
                        continue;
                    }
                }
                if let Some(limit) = cut_after
                    && sent + n as u64 >= limit
                {
                    let keep = (limit - sent.min(limit)) as usize;
                    if keep > 0 {
                        let chunk = flip(data.split_to(keep), sent, flip_at, &rec);
                        let _ = tx.send(Ok(Frame::data(chunk))).await;
                        rec.body_bytes.fetch_add(keep as u64, Ordering::SeqCst);
                        // hyper drops unflushed output when a body fails: let it take
                        // and write the kept bytes before the reset, so the cut is
                        // where it was asked to be.
                        while tx.capacity() < tx.max_capacity() && !tx.is_closed() {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    let _ = tx.send(Err(reset_error())).await;
                    rec.finish(BodyEnd::Cut);
                    return;
                }
                if rate > 0 {
                    let now = tokio::time::Instant::now();
                    let due = next_due.max(now);
                    tokio::time::sleep_until(due).await;
                    next_due = due + Duration::from_secs_f64(n as f64 / rate as f64);
                }
                let chunk = flip(data.split_to(n), sent, flip_at, &rec);
                if tx.send(Ok(Frame::data(chunk))).await.is_err() {
                    rec.finish(BodyEnd::ClientGone);
                    return;
                }
                sent += n as u64;
                rec.body_bytes.fetch_add(n as u64, Ordering::SeqCst);
            }
        }
    });
    let resp = builder.body(ChannelBody { rx }).unwrap_or_else(|_| Response::new(empty_body()));
    Ok(resp)
}

fn reset_error() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, "cut by the test proxy")
}

/// `chunk` (which starts at body offset `at`) with the byte at body offset `flip_at`
/// inverted, if it holds that byte.
fn flip(chunk: Bytes, at: u64, flip_at: Option<u64>, rec: &Record) -> Bytes {
    let Some(i) = flip_at.and_then(|f| f.checked_sub(at)).filter(|i| *i < chunk.len() as u64) else {
        return chunk;
    };
    let mut owned = chunk.to_vec();
    owned[i as usize] ^= 0xFF;
    rec.flipped.store(true, Ordering::SeqCst);
    Bytes::from(owned)
}

/// The first byte position of `Content-Range: bytes a-b/total`.
fn content_range_start(h: &HeaderMap) -> Option<u64> {
    let v = h.get(http::header::CONTENT_RANGE)?.to_str().ok()?;
    let range = v.trim().strip_prefix("bytes")?.trim_start();
    range.split_once('-')?.0.trim().parse().ok()
}

/// The response of a [`Fault::Replace`].
fn canned_response(record: &Record, canned: Canned) -> Response<ChannelBody> {
    record.status.store(canned.status, Ordering::SeqCst);
    record.body_bytes.store(canned.body.len() as u64, Ordering::SeqCst);
    record.finish(BodyEnd::Replaced);
    let mut builder =
        Response::builder().status(StatusCode::from_u16(canned.status).unwrap_or(StatusCode::BAD_GATEWAY));
    if let Some(ct) = &canned.content_type {
        builder = builder.header(http::header::CONTENT_TYPE, ct);
    }
    for (k, v) in &canned.headers {
        builder = builder.header(k, v);
    }
    if !canned.chunked {
        builder = builder.header(http::header::CONTENT_LENGTH, canned.body.len());
    }
    // Chunked or not, the body goes out in 64 KiB frames.
    let (tx, rx) = mpsc::channel(4);
    let mut body = canned.body;
    tokio::spawn(async move {
        while !body.is_empty() {
            let n = body.len().min(64 * 1024);
            if tx.send(Ok(Frame::data(body.split_to(n)))).await.is_err() {
                return;
            }
        }
    });
    builder.body(ChannelBody { rx }).unwrap_or_else(|_| Response::new(empty_body()))
}

/// Sends one request to the upstream over a new connection.
async fn forward(st: &State, req: Request<Incoming>) -> Result<Response<Incoming>, String> {
    let tcp = TcpStream::connect(("127.0.0.1", st.upstream_port))
        .await
        .map_err(|e| format!("connecting to the upstream: {e}"))?;
    let _ = tcp.set_nodelay(true);
    match &st.upstream_tls {
        Some(connector) => {
            let name = ServerName::try_from("127.0.0.1").expect("IP server name");
            let tls = connector.connect(name, tcp).await.map_err(|e| format!("TLS to the upstream: {e}"))?;
            send_on(TokioIo::new(tls), req).await
        }
        None => send_on(TokioIo::new(tcp), req).await,
    }
}

async fn send_on<T>(io: T, req: Request<Incoming>) -> Result<Response<Incoming>, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP handshake with the upstream: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender.send_request(req).await.map_err(|e| format!("upstream request: {e}"))
}

fn local_response(record: &Record, status: u16, text: &str) -> Response<ChannelBody> {
    record.status.store(status, Ordering::SeqCst);
    record.finish(BodyEnd::NotForwarded);
    let (tx, rx) = mpsc::channel(1);
    let _ = tx.try_send(Ok(Frame::data(Bytes::from(format!("{text}\n")))));
    let mut r = Response::new(ChannelBody { rx });
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    r
}
