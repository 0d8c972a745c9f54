//! The operator's ports: `/health` and `/ready` on the health port, Prometheus
//! `/metrics` on the metrics port. Separate from the data port so they can be
//! exposed (or not) on their own.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tracing::warn;

use crate::cache::Cache;
use crate::metrics::Metrics;

/// Whether the server can take traffic: the cache is loaded and the data
/// listener is up (and not yet shutting down).
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }

    fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

pub async fn serve_health(listener: TcpListener, ready: Readiness) {
    let app = Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route(
            "/ready",
            get(|State(r): State<Readiness>| async move {
                if r.get() {
                    (StatusCode::OK, "ready\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                }
            }),
        )
        .with_state(ready);
    if let Err(e) = axum::serve(listener, app).await {
        warn!(error = %e, "the health port stopped");
    }
}

pub async fn serve_metrics(listener: TcpListener, cache: Cache, metrics: Arc<Metrics>) {
    let app = Router::new()
        .route(
            "/metrics",
            get(|State((cache, m)): State<(Cache, Arc<Metrics>)>| async move {
                let stats = cache.stats();
                m.cached_manifest_count.set(stats.manifests as i64);
                m.manifest_bytes_on_disk.set(stats.manifest_bytes as i64);
                m.cached_blob_count.set(stats.blobs as i64);
                m.blob_bytes_on_disk.set(stats.blob_bytes as i64);
                m.fills_in_flight.set(stats.fills_in_flight as i64);
                (
                    [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
                    m.encode(),
                )
                    .into_response()
            }),
        )
        .with_state((cache, metrics));
    if let Err(e) = axum::serve(listener, app).await {
        warn!(error = %e, "the metrics port stopped");
    }
}
