//! One access line per request, written when the response body ends (so it
//! reports the bytes really sent and whether the transfer completed).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::HeaderValue;
use http_body::{Body as HttpBody, Frame, SizeHint};

use super::access_line::{self, Record};
use super::conn::InFlight;
use super::error::{ErrorCode, ErrorDetail};
use super::{AppState, ClientAddr, Namespace, RouteInfo, auth, v2};
use crate::cache::CacheOutcome;
use crate::metrics::{CodeLabels, Endpoint, Metrics, NsLabels, Source};

/// One request on the data port, start to end: authentication, the v2 API,
/// then the metrics known with the headers; the access line follows when
/// the body ends. The body keeps the request `in_flight` until then.
pub async fn respond(
    app: Arc<AppState>,
    req: http::Request<hyper::body::Incoming>,
    addr: ClientAddr,
    in_flight: InFlight,
) -> Response<LoggedBody> {
    let start = Instant::now();
    // GET and HEAD only: a body sent anyway is not read.
    let (parts, _) = req.into_parts();
    let mut resp = match auth::check(&app, &parts.headers, addr).await {
        Some(refused) => refused,
        None => v2::handle(&app, &parts).await,
    };
    resp.headers_mut().insert("docker-distribution-api-version", HeaderValue::from_static("registry/2.0"));
    let outcome = resp.extensions().get::<CacheOutcome>().copied();
    let route = resp.extensions_mut().remove::<RouteInfo>().unwrap_or_default();
    let line = AccessLine {
        method: parts.method,
        path: parts.uri,
        ns: resp.extensions_mut().remove::<Namespace>(),
        status: resp.status().as_u16(),
        outcome,
        endpoint: route.endpoint,
        error: resp.extensions_mut().remove::<ErrorDetail>().map(|d| d.0),
        start,
        metrics: app.metrics.clone(),
    };
    record_response(&line, &route, resp.extensions().get::<ErrorCode>().copied());
    // A HEAD response announces the length of a body it never sends.
    let expected = if line.method == http::Method::HEAD {
        Some(0)
    } else {
        resp.headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
    };
    resp.map(|inner| LoggedBody { inner, sent: 0, expected, line: Some(line), _in_flight: in_flight })
}

struct AccessLine {
    method: http::Method,
    /// The request's URI, moved here whole: its path is written out only
    /// when the body ends.
    path: http::Uri,
    ns: Option<Namespace>,
    status: u16,
    outcome: Option<CacheOutcome>,
    endpoint: Endpoint,
    /// Why an error response was sent, in full (the client saw a short reason).
    error: Option<String>,
    start: Instant,
    metrics: Arc<Metrics>,
}

/// Where the bytes of a response came from, for `served_bytes` and pull counts.
fn source(outcome: CacheOutcome) -> Source {
    match outcome {
        CacheOutcome::Hit | CacheOutcome::Revalidated | CacheOutcome::Stale => Source::Cache,
        CacheOutcome::Miss | CacheOutcome::Joined | CacheOutcome::Passthrough => Source::Upstream,
    }
}

/// Metrics known when the response headers are ready.
fn record_response(line: &AccessLine, route: &RouteInfo, error: Option<ErrorCode>) {
    let m = &*line.metrics;
    m.request(line.endpoint, line.status, line.start.elapsed().as_secs_f64());
    if let Some(code) = error {
        m.api_errors.get_or_create(&CodeLabels { code: code.as_str() }).inc();
    }
    let (Some(outcome), 200..=299) = (line.outcome, line.status) else { return };
    let source = source(outcome);
    match line.endpoint {
        Endpoint::Manifests => m.pulled(false, source),
        Endpoint::Blobs if line.method == http::Method::GET => m.pulled(true, source),
        _ => {}
    };
    if let (true, Some(registry)) = (route.tag_pull, &route.registry) {
        let ns = NsLabels { ns: m.registry_label(registry.as_str()) };
        match source {
            Source::Cache => m.cached_pulls_by_ns.get_or_create(&ns).inc(),
            Source::Upstream => m.upstream_pulls_by_ns.get_or_create(&ns).inc(),
        };
    }
}

impl AccessLine {
    fn emit(self, bytes: u64, complete: bool) {
        if let Some(o) = self.outcome {
            self.metrics.served(source(o), bytes);
        }
        access_line::write(&Record {
            method: self.method.as_str(),
            path: self.path.path(),
            ns: self.ns.as_ref().map_or("-", |n| n.0.as_str()),
            status: self.status,
            bytes,
            latency: self.start.elapsed(),
            outcome: self.outcome.map_or("-", CacheOutcome::as_str),
            error: self.error.as_deref(),
            complete,
        });
    }
}

/// Counts body bytes and writes the access line when the body ends, fails
/// or is dropped (client gone); until then the request counts as in flight.
pub struct LoggedBody {
    inner: Body,
    sent: u64,
    /// The announced `Content-Length`: hyper stops polling once it is sent.
    expected: Option<u64>,
    line: Option<AccessLine>,
    _in_flight: InFlight,
}

impl HttpBody for LoggedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.sent += data.len() as u64;
                }
            }
            Poll::Ready(None) => {
                let sent = self.sent;
                if let Some(line) = self.line.take() {
                    line.emit(sent, true);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                let sent = self.sent;
                if let Some(line) = self.line.take() {
                    line.emit(sent, false);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        if let Some(line) = self.line.take() {
            // hyper stops polling once Content-Length bytes are out, and an
            // empty body (HEAD) may never be polled at all.
            let complete = self.inner.is_end_stream() || self.expected == Some(self.sent);
            line.emit(self.sent, complete);
        }
    }
}
