//! `storage`: where the cache's content lives.

use anyhow::{Context, Result, bail};

use super::file::{PeersFile, S3File, StorageFile};
use super::registry::resolve_client_tls;
use crate::cache::store::Backend;
use crate::cache::store::s3::{Peers, S3Settings};

pub(super) fn resolve(storage: Option<&StorageFile>) -> Result<Backend> {
    match storage.and_then(|s| s.s3.as_ref()) {
        None => Ok(Backend::Fs),
        Some(s3) => resolve_s3(s3).context("storage.s3").map(|s| Backend::S3(Box::new(s))),
    }
}

fn resolve_s3(f: &S3File) -> Result<S3Settings> {
    let bucket = f.bucket.clone().filter(|b| !b.is_empty()).context("bucket: required")?;
    // S3's own rule (3-63 characters of lowercase letters, digits, '.' and
    // '-'), loosened to the underscores and capitals some S3-compatible
    // servers allow; never a '/', which would move every key.
    if bucket.len() > 255 || !bucket.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c)) {
        bail!("bucket: '{bucket}' is not a bucket name");
    }
    let prefix = f.prefix.clone().unwrap_or_default();
    if prefix.split('/').any(|p| p == "." || p == "..") || prefix.chars().any(char::is_control) {
        bail!("prefix: '{prefix}' has '.', '..' or control characters");
    }
    if let Some(e) = &f.endpoint {
        let url = url::Url::parse(e).with_context(|| format!("endpoint: '{e}' is not a URL"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            bail!("endpoint: '{e}' must be an http:// or https:// URL with a host");
        }
    }
    let from_env = |key: &str, var: &Option<String>| -> Result<Option<String>> {
        let Some(var) = var else { return Ok(None) };
        let value =
            std::env::var(var).with_context(|| format!("{key}: environment variable {var} is not set"))?;
        Ok(Some(value))
    };
    let credentials = match (
        from_env("accessKeyIdFromEnv", &f.access_key_id_from_env)?,
        from_env("secretAccessKeyFromEnv", &f.secret_access_key_from_env)?,
    ) {
        (Some(id), Some(secret)) => Some((id, secret)),
        (None, None) => None,
        _ => bail!("accessKeyIdFromEnv and secretAccessKeyFromEnv must be given together"),
    };
    Ok(S3Settings {
        bucket,
        prefix,
        endpoint: f.endpoint.clone(),
        region: f.region.clone(),
        credentials,
        path_style: f.path_style.unwrap_or(false),
        tls: f.tls.as_ref().map(|t| resolve_client_tls(t, "tls")).transpose()?.unwrap_or_default(),
        peers: f.peers.as_ref().map(resolve_peers).transpose().context("peers")?,
        redirect: f.redirect.unwrap_or(false),
        local_cache_size: match f.local_cache_size.as_deref() {
            None => 0,
            Some(s) => super::limits::parse_bytes(s)
                .with_context(|| format!("localCacheSize: '{s}' is not a size like 10GiB"))?,
        },
    })
}

fn resolve_peers(p: &PeersFile) -> Result<Peers> {
    let port = p.port.context("port: required")?;
    let advertise =
        p.advertise.clone().context("advertise: required (the URL other replicas reach this one at)")?;
    let url =
        url::Url::parse(&advertise).with_context(|| format!("advertise: '{advertise}' is not a URL"))?;
    if url.scheme() != "http" || url.host().is_none() {
        bail!("advertise: '{advertise}' must be an http:// URL with a host (the peer port is plain HTTP)");
    }
    let var = p.token_from_env.as_deref().context("tokenFromEnv: required (every replica's shared token)")?;
    let token =
        std::env::var(var).with_context(|| format!("tokenFromEnv: environment variable {var} is not set"))?;
    if token.len() < 16 {
        bail!("tokenFromEnv: the token in {var} is shorter than 16 characters");
    }
    Ok(Peers { port, advertise: advertise.trim_end_matches('/').to_owned(), token })
}
