//! `--server URL`: a command asks a running server's admin API instead of
//! working on the directory itself.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// The admin API of a running server.
pub struct Remote {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Remote {
    /// `url` is the admin port's base URL; the token comes from `$OCIREGISTRY_ADMIN_TOKEN`.
    pub fn new(url: &str) -> Result<Remote> {
        let parsed = url::Url::parse(url)
            .with_context(|| format!("--server: '{url}' is not a URL like http://127.0.0.1:9091"))?;
        if parsed.scheme() != "http" && parsed.scheme() != "https" {
            bail!("--server: '{url}' must be http:// or https://");
        }
        let tls = rustls::ClientConfig::builder_with_provider(ociregistry::tls::provider())
            .with_safe_default_protocol_versions()
            .context("TLS settings")?
            .with_root_certificates(rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() })
            .with_no_client_auth();
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(Duration::from_secs(300))
            .build()
            .context("building the HTTP client")?;
        let token = std::env::var("OCIREGISTRY_ADMIN_TOKEN").ok().filter(|t| !t.is_empty());
        Ok(Remote { http, base: url.trim_end_matches('/').to_owned(), token })
    }

    pub async fn get(&self, path: &str) -> Result<Value> {
        self.send(self.http.get(format!("{}{path}", self.base))).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value> {
        let req = self.http.post(format!("{}{path}", self.base)).header("content-type", "application/json");
        self.send(req.body(body.to_string())).await
    }

    async fn send(&self, mut req: reqwest::RequestBuilder) -> Result<Value> {
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.with_context(|| format!("asking the server at {}", self.base))?;
        let status = resp.status();
        let bytes = resp.bytes().await.with_context(|| format!("reading the answer of {}", self.base))?;
        let body: Value = serde_json::from_slice(&bytes).with_context(|| {
            format!("the server at {} did not answer JSON (is it the admin port?)", self.base)
        })?;
        if !status.is_success() {
            let why = body["error"].as_str().unwrap_or("no reason given");
            if status == reqwest::StatusCode::UNAUTHORIZED {
                bail!("the server refused: {why} (set OCIREGISTRY_ADMIN_TOKEN)");
            }
            bail!("the server answered {status}: {why}");
        }
        Ok(body)
    }
}
