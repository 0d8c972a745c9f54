//! The HTTP surface: the v2 routes, OCI errors, the access log, pull
//! authentication, serving TLS, the health and metrics ports, and the
//! connection loop with graceful shutdown.

mod access_log;
mod auth;
pub mod error;
mod ops;
pub mod tls;
mod v2;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

pub use auth::PullAuth;
pub use ops::{Readiness, serve_health, serve_metrics};

use crate::cache::Cache;
use crate::metrics::{CodeLabels, METRICS};
use crate::oci::RegistryHost;

/// What every handler needs.
pub struct AppState {
    pub cache: Cache,
    pub default_ns: Option<RegistryHost>,
    pub pull_auth: Option<PullAuth>,
}

/// The `ns` a request was scoped by, passed from handler to access log.
#[derive(Debug, Clone)]
pub(crate) struct Namespace(pub RegistryHost);

/// What the handler learnt about a request, for the access log and metrics.
#[derive(Debug, Clone, Default)]
pub(crate) struct RouteInfo {
    /// `manifests`, `blobs`, `tags`, `base`, ... (bounded: a metric label).
    pub endpoint: &'static str,
    /// The registry the request was resolved to.
    pub registry: Option<RegistryHost>,
    /// A manifest requested by tag: what the reference server counts as a pull.
    pub tag_pull: bool,
}

/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .fallback(v2::handle)
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth::layer))
        .with_state(state)
        .layer(axum::middleware::from_fn(access_log::layer))
}

/// Serves `state` on `listener` (over TLS when `tls` is set) until `shutdown`
/// resolves, then stops accepting and lets in-flight responses finish for up
/// to `grace`.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> std::io::Result<()> {
    let router = router(state);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    let builder = Arc::new(builder);
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Usually EMFILE: back off instead of spinning.
                        warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Nagle plus delayed ACKs costs ~40 ms per small streamed response.
                let _ = stream.set_nodelay(true);
                let service = TowerToHyperService::new(router.clone());
                let builder = builder.clone();
                let watcher = graceful.watcher();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let served = match acceptor {
                        None => {
                            let conn = builder.serve_connection(TokioIo::new(stream), service);
                            watcher.watch(conn.into_owned()).await
                        }
                        Some(acceptor) => {
                            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                                Ok(Ok(tls)) => tls,
                                Ok(Err(e)) => {
                                    METRICS.connection_errors.get_or_create(&CodeLabels { code: "tls_handshake" }).inc();
                                    debug!(%peer, error = %e, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    METRICS.connection_errors.get_or_create(&CodeLabels { code: "tls_timeout" }).inc();
                                    debug!(%peer, "TLS handshake timed out");
                                    return;
                                }
                            };
                            let conn = builder.serve_connection(TokioIo::new(tls), service);
                            watcher.watch(conn.into_owned()).await
                        }
                    };
                    if let Err(e) = served {
                        METRICS.connection_errors.get_or_create(&CodeLabels { code: "http" }).inc();
                        debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    info!("stopped accepting connections; waiting for in-flight requests");
    tokio::select! {
        () = graceful.shutdown() => info!("all connections closed"),
        () = tokio::time::sleep(grace) => warn!(grace = ?grace, "grace period over; closing remaining connections"),
    }
    Ok(())
}
