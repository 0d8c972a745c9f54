//! The HTTP surface: the v2 routes, OCI errors, the access log, pull
//! authentication, serving TLS, the health and metrics ports, and the
//! connection loop with graceful shutdown.

mod access_line;
mod access_log;
mod admin;
mod auth;
mod conn;
pub mod error;
mod ops;
mod peer;
pub mod tls;
mod v2;

pub use access_line::{flush_thread as flush_access_lines, install as install_access_lines};

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

pub use admin::serve_admin;
pub use auth::PullAuth;
pub use conn::Limits as ConnectionLimits;
pub use ops::{Readiness, serve_health, serve_metrics};
pub use peer::serve_peers;

use crate::cache::Cache;
use crate::metrics::{CodeLabels, Metrics};
use crate::oci::RegistryHost;

/// What the HTTP surface is built from: plain data, filled in by `main`.
pub struct Settings {
    /// The registry for requests that name none.
    pub default_ns: Option<RegistryHost>,
    /// Basic authentication for pulls.
    pub pull_auth: Option<Htpasswd>,
    pub connections: ConnectionLimits,
    /// How long in-flight responses may take to finish after shutdown begins.
    pub shutdown_grace: Duration,
}

/// HTTPS on the data port. Paths are kept: the files are re-read when they change.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    /// `clientAuth: verify`: clients must present a certificate.
    pub verify_clients: bool,
    /// Trust anchors for client certificates; none: the system's store.
    pub client_ca: Option<std::path::PathBuf>,
}

/// `user:bcrypt-hash` lines of an htpasswd file.
#[derive(Debug, Clone)]
pub struct Htpasswd {
    pub path: std::path::PathBuf,
    pub users: Vec<(String, String)>,
}

/// What every handler needs.
pub struct AppState {
    pub cache: Cache,
    pub default_ns: Option<RegistryHost>,
    pub pull_auth: Option<PullAuth>,
    pub metrics: Arc<Metrics>,
}

/// The `ns` a request was scoped by, passed from handler to access log.
#[derive(Debug, Clone)]
pub(crate) struct Namespace(pub RegistryHost);

/// What the handler learnt about a request, for the access log and metrics.
#[derive(Debug, Clone, Default)]
pub(crate) struct RouteInfo {
    pub endpoint: crate::metrics::Endpoint,
    /// The registry the request was resolved to.
    pub registry: Option<RegistryHost>,
    /// A manifest requested by tag: what the reference server counts as a pull.
    pub tag_pull: bool,
}

/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 pings: how often, and how long to wait for the answer.
const H2_KEEP_ALIVE: Duration = Duration::from_secs(30);
const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The address a request came from, for per-client limits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientAddr(pub std::net::IpAddr);

/// Serves `cache` on `listener` (over TLS when `tls` is set) until `shutdown`
/// resolves, then stops accepting and lets in-flight responses finish for up
/// to `settings.shutdown_grace`. Connections are bounded and timed out as
/// `settings.connections` says.
pub async fn serve(
    listener: TcpListener,
    settings: Settings,
    cache: Cache,
    metrics: Arc<Metrics>,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let grace = settings.shutdown_grace;
    let state = Arc::new(AppState {
        cache,
        default_ns: settings.default_ns,
        pull_auth: settings.pull_auth.as_ref().map(PullAuth::new),
        metrics: metrics.clone(),
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    // Pings find dead HTTP/2 peers; idle but live ones are closed by the tracker.
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(H2_KEEP_ALIVE))
        .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT);
    let builder = Arc::new(builder);
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let tracker = conn::Tracker::new(settings.connections, metrics.clone());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let accept_warning = conn::RateLimited::new(Duration::from_secs(10));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Usually EMFILE: close an idle connection and back off instead of spinning.
                        tracker.relieve();
                        if let Some(suppressed) = accept_warning.check() {
                            warn!(error = %e, suppressed, "accepting a connection failed");
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Some(admitted) = tracker.admit() else { continue };
                let conn = admitted.conn.clone();
                // Nagle plus delayed ACKs costs ~40 ms per small streamed response.
                let _ = stream.set_nodelay(true);
                let stream = conn::Tracked { inner: stream, conn: conn.clone() };
                let service = DataService { app: state.clone(), conn: conn.clone(), addr: ClientAddr(peer.ip()) };
                let (builder, acceptor, tracker, stopped, metrics) =
                    (builder.clone(), acceptor.clone(), tracker.clone(), stopped.clone(), metrics.clone());
                tokio::spawn(async move {
                    // Counted until this task ends, however it ends.
                    let _admitted = admitted;
                    let served = match acceptor {
                        None => {
                            let c = builder.serve_connection(TokioIo::new(stream), service);
                            tracker.drive(conn, c, stopped, grace).await
                        }
                        Some(acceptor) => {
                            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                                Ok(Ok(tls)) => tls,
                                Ok(Err(e)) => {
                                    metrics.connection_errors.get_or_create(&CodeLabels { code: "tls_handshake" }).inc();
                                    tls::log_handshake_failure(peer, &e);
                                    return;
                                }
                                Err(_) => {
                                    metrics.connection_errors.get_or_create(&CodeLabels { code: "tls_timeout" }).inc();
                                    debug!(%peer, "TLS handshake timed out");
                                    return;
                                }
                            };
                            let c = builder.serve_connection(TokioIo::new(tls), service);
                            tracker.drive(conn, c, stopped, grace).await
                        }
                    };
                    if let Err(e) = served {
                        metrics.connection_errors.get_or_create(&CodeLabels { code: "http" }).inc();
                        debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    info!("stopped accepting connections; waiting for in-flight requests");
    let _ = stop.send(true);
    tokio::select! {
        () = tracker.drained() => info!("all connections closed"),
        () = tokio::time::sleep(grace) => warn!(grace = ?grace, "grace period over; closing remaining connections"),
    }
    Ok(())
}

/// One connection's service: no router or middleware stack, because every
/// request takes the same path (`access_log::respond`) and at tens of
/// thousands of cache hits a second their boxing and cloning showed.
#[derive(Clone)]
struct DataService {
    app: Arc<AppState>,
    conn: Arc<conn::Conn>,
    addr: ClientAddr,
}

impl hyper::service::Service<http::Request<hyper::body::Incoming>> for DataService {
    type Response = http::Response<access_log::LoggedBody>;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn call(&self, req: http::Request<hyper::body::Incoming>) -> Self::Future {
        // Counted from here until the response body ends.
        let in_flight = conn::InFlight::begin(&self.conn);
        Box::pin(access_log::respond(self.app.clone(), req, self.addr, in_flight).map(Ok))
    }
}
