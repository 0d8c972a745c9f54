//! The peer port (`storage.s3.peers`): replicas sharing one bucket stream
//! each other's downloads in progress from here, so a blob crosses the WAN
//! once however many replicas' clients ask for it (see `cache/shared.rs`).
//!
//! Plain HTTP on the pod network, one route, and a bearer token every replica
//! shares: a blob is named by digest alone, with no repository and no pull
//! authentication, so the port should be reachable by the replicas only (a
//! NetworkPolicy, or a network clients do not reach) and the token is required.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderMap, header};
use tokio::net::TcpListener;
use tracing::{debug, warn};

use super::admin::same;
use super::error::{ErrorCode, OciError, Subject};
use crate::cache::Cache;
use crate::oci::{Digest, RegistryHost};

struct Peer {
    cache: Cache,
    token: String,
}

pub async fn serve_peers(listener: TcpListener, cache: Cache, token: String) {
    let app = Router::new()
        .route("/peer/blobs/{registry}/{digest}", get(blob))
        .with_state(Arc::new(Peer { cache, token }));
    if let Err(e) = axum::serve(listener, app).await {
        warn!(error = %e, "the peer port stopped");
    }
}

async fn blob(
    State(p): State<Arc<Peer>>,
    Path((registry, digest)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !same(given.as_bytes(), p.token.as_bytes()) {
        warn!(%registry, %digest, "peer port: request without the replicas' token refused");
        return OciError::new(ErrorCode::Unauthorized, "the replicas' token is required (storage.s3.peers)")
            .into_response();
    }
    let registry = match RegistryHost::parse(&registry) {
        Ok(r) => r,
        Err(e) => return OciError::new(ErrorCode::NameInvalid, e.to_string()).into_response(),
    };
    let digest = match Digest::parse(&digest) {
        Ok(d) => d,
        Err(e) => return OciError::new(ErrorCode::DigestInvalid, e.to_string()).into_response(),
    };
    match p.cache.peer_blob(&registry, &digest).await {
        Ok(Some(blob)) => {
            debug!(%registry, %digest, "streaming a blob to another replica");
            super::v2::blob_response(&digest, blob, &headers).unwrap_or_else(IntoResponse::into_response)
        }
        Ok(None) => OciError::new(ErrorCode::BlobUnknown, "not being downloaded here").into_response(),
        Err(e) => OciError::from_cache(&e, Subject::Blob).into_response(),
    }
}
