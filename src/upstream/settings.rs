//! What the upstream room is built from: plain data, filled in by `main`
//! from the configuration.

use std::time::Duration;

use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use url::Url;

use super::Credentials;
use crate::oci::RegistryHost;

pub struct Settings {
    pub registries: Vec<Configured>,
    /// Whether registries not listed may be contacted (public HTTPS only).
    pub allow_unconfigured: bool,
    /// Contact no upstream at all.
    pub air_gapped: bool,
    pub timeouts: Timeouts,
    pub limits: Limits,
    /// `upstreamBandwidth`: bytes per second over every upstream together.
    pub bandwidth: Option<u64>,
    /// `dockerConfig`: credentials for registries with no `auth` of their own.
    pub docker_config: Option<std::sync::Arc<super::credentials::DockerConfig>>,
}

/// A registry listed in the configuration.
#[derive(Debug, Clone)]
pub struct Configured {
    pub host: RegistryHost,
    /// Base URLs content is fetched from, tried in order
    /// (`https://registry-1.docker.io` for docker.io).
    pub endpoints: Vec<Url>,
    pub credentials: Option<Credentials>,
    /// `auth.tokenHosts`: `host` or `host:port` of token servers trusted with the credentials.
    pub token_hosts: Vec<String>,
    pub tls: ClientTls,
    /// `bandwidth`: bytes per second from this registry.
    pub bandwidth: Option<u64>,
}

/// Bounds and back-offs per upstream.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Requests in flight per registry (blob downloads included).
    pub max_concurrent_requests: usize,
    /// First wait before probing an endpoint that went down; doubles up to the max.
    pub probe_interval: Duration,
    pub max_probe_interval: Duration,
}

/// Client-side TLS material for one upstream, loaded from PEM files.
#[derive(Debug, Default)]
pub struct ClientTls {
    pub extra_roots: Vec<CertificateDer<'static>>,
    pub identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    pub insecure_skip_verify: bool,
}

impl Clone for ClientTls {
    fn clone(&self) -> Self {
        ClientTls {
            extra_roots: self.extra_roots.clone(),
            identity: self.identity.as_ref().map(|(c, k)| (c.clone(), k.clone_key())),
            insecure_skip_verify: self.insecure_skip_verify,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TCP + TLS connection establishment.
    pub connect: Duration,
    /// From sending a request to the upstream's response headers.
    pub response: Duration,
    /// Longest wait for the next body bytes before a download is called stalled.
    pub stall: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(10),
            response: Duration::from_secs(60),
            stall: Duration::from_secs(60),
        }
    }
}
