//! The Kubernetes API, read with the pod's service-account token: which
//! images the cluster's pods run ([`running`], for `pinRunningImages`) and
//! whether a DaemonSet has rolled out ([`daemonset`], for the chart's
//! uninstall hook, so it needs no `kubectl` image). Plain GETs with a small
//! client: the two reads need no watch, no informer and no generated types.

pub mod daemonset;
pub mod running;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;

pub use running::spawn;

const IN_CLUSTER_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Where the API is and how to authenticate; in-cluster defaults.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// `https://host:port`; default from `KUBERNETES_SERVICE_HOST`/`_PORT`.
    pub server: Option<String>,
    pub token_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
}

/// The API server, trusted by its CA only.
pub(crate) struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<PathBuf>,
}

impl Api {
    /// `key` names the settings in errors (`kubernetesApi`, or the flags).
    pub fn new(s: &Settings, key: &str) -> Result<Api> {
        let dir = PathBuf::from(IN_CLUSTER_DIR);
        let base = match &s.server {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => {
                let host = std::env::var("KUBERNETES_SERVICE_HOST").with_context(|| {
                    format!("not in a cluster (no KUBERNETES_SERVICE_HOST): give {key} a server")
                })?;
                let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
                let host = if host.contains(':') { format!("[{host}]") } else { host };
                format!("https://{host}:{port}")
            }
        };
        let ca = s.ca_file.clone().or_else(|| Some(dir.join("ca.crt")).filter(|p| p.exists()));
        let mut roots = rustls::RootCertStore::empty();
        if let Some(ca) = &ca {
            for c in crate::tls::load_certs(ca).with_context(|| format!("{key}: the CA file"))? {
                roots.add(c).with_context(|| format!("{key}: an unusable CA certificate"))?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .with_context(|| format!("{key}: TLS settings"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(Duration::from_secs(30))
            .no_proxy()
            .build()
            .with_context(|| format!("{key}: building the HTTP client"))?;
        let token = s.token_file.clone().or_else(|| Some(dir.join("token")).filter(|p| p.exists()));
        Ok(Api { http, base, token })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET path`, its JSON body read up to `max` bytes. `grant` says, in an
    /// error, which permission the request needs.
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str, max: usize, grant: &str) -> Result<T> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.get(&url);
        // Re-read each time: the kubelet rotates projected tokens.
        if let Some(path) = &self.token {
            let token = tokio::fs::read_to_string(path)
                .await
                .with_context(|| format!("reading {}", path.display()))?;
            req = req.bearer_auth(token.trim());
        }
        let mut resp = req.send().await.with_context(|| format!("GET {url}"))?;
        let status = resp.status();
        if !status.is_success() {
            anyhow::bail!("GET {url} answered {status} ({grant})");
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.with_context(|| format!("reading GET {url}"))? {
            if body.len() + chunk.len() > max {
                anyhow::bail!("GET {url}: the answer is over {max} bytes");
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).with_context(|| format!("GET {url}: not what the API returns"))
    }
}
