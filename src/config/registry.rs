//! One `registries[]` entry: its name, endpoints, credentials and TLS material.

use std::sync::Arc;

use anyhow::{Context, Result, bail};

use super::RegistryFile;
use super::file::{AuthFile, ReferenceTokenFile, TlsFile, TokenFile};
use crate::oci::RegistryHost;
use crate::tls::{load_certs, load_key};

use crate::upstream::{ClientTls, Configured as Registry, Credentials, Ecr, Helper, Secret};

/// Where Docker Hub's content really lives.
const DOCKER_HUB: (&str, &str) = ("docker.io", "https://registry-1.docker.io");

pub(super) fn resolve_registry(r: RegistryFile) -> Result<Registry> {
    let host = RegistryHost::parse(&r.name).context("name")?;
    let scheme = r.scheme.as_deref().unwrap_or("https").to_ascii_lowercase();
    let scheme = scheme.as_str();
    if !matches!(scheme, "http" | "https") {
        bail!("scheme: '{scheme}' must be http or https");
    }
    let (key, urls) = match (r.endpoint, r.endpoints, host.as_str()) {
        (Some(_), Some(_), _) => bail!("endpoint and endpoints: give one or the other"),
        (Some(e), None, _) => ("endpoint", vec![e]),
        (None, Some(list), _) if list.is_empty() => bail!("endpoints: the list is empty"),
        (None, Some(list), _) => ("endpoints", list),
        (None, None, h) if h == DOCKER_HUB.0 => ("endpoint", vec![DOCKER_HUB.1.to_owned()]),
        (None, None, h) => ("endpoint", vec![format!("{scheme}://{h}")]),
    };
    let mut endpoints = Vec::new();
    for u in urls {
        let url = url::Url::parse(&u).with_context(|| format!("{key}: '{}' is not a URL", redact(&u)))?;
        if !url.username().is_empty() || url.password().is_some() {
            bail!(
                "{key}: '{}' holds credentials; they would show in logs and metrics: give them under auth (user, password or passwordFromEnv) instead",
                redact(&u)
            );
        }
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            bail!("{key}: '{u}' must be an http:// or https:// URL with a host");
        }
        endpoints.push(url);
    }

    let mut token_hosts = Vec::new();
    let credentials = match r.auth {
        None => None,
        Some(a) => {
            for (i, h) in a.token_hosts.iter().flatten().enumerate() {
                RegistryHost::parse(h).with_context(|| format!("auth.tokenHosts[{i}]"))?;
                token_hosts.push(h.clone());
            }
            resolve_auth(a, ecr_region(&host, &endpoints))?
        }
    };
    // A registry on an ECR host needs no `auth`: the AWS credential chain has it.
    let credentials = credentials.or_else(|| {
        ecr_region(&host, &endpoints).map(|region| Credentials::Ecr(Arc::new(Ecr::new(Some(region)))))
    });

    let tls = r.tls.as_ref().map(|t| resolve_client_tls(t, "tls")).transpose()?.unwrap_or_default();
    let bandwidth = r.bandwidth.as_deref().map(|b| super::limits::parse_rate("bandwidth", b)).transpose()?;
    Ok(Registry { host, endpoints, credentials, token_hosts, tls, bandwidth })
}

/// A `tls` block of an outgoing connection; `key` names it in errors.
pub(super) fn resolve_client_tls(t: &TlsFile, key: &str) -> Result<ClientTls> {
    let extra_roots = match &t.ca {
        Some(p) => load_certs(p).with_context(|| format!("{key}.ca"))?,
        None => Vec::new(),
    };
    let identity = match (&t.cert, &t.key) {
        (Some(c), Some(k)) => Some((
            load_certs(c).with_context(|| format!("{key}.cert"))?,
            load_key(k).with_context(|| format!("{key}.key"))?,
        )),
        (None, None) => None,
        _ => bail!("{key}: cert and key must be given together"),
    };
    Ok(ClientTls { extra_roots, identity, insecure_skip_verify: t.insecure_skip_verify.unwrap_or(false) })
}

/// `auth`: a user and password, a bearer token, or a credential helper.
fn resolve_auth(a: AuthFile, ecr_region: Option<String>) -> Result<Option<Credentials>> {
    let from_env = |key: &str, var: &str| {
        std::env::var(var).with_context(|| format!("auth.{key}: environment variable {var} is not set"))
    };
    let password = match (a.password, a.password_from_env) {
        (Some(_), Some(_)) => bail!("auth: set either password or passwordFromEnv, not both"),
        (Some(p), None) => Some(p),
        (None, Some(var)) => Some(from_env("passwordFromEnv", &var)?),
        (None, None) => None,
    };
    let login = match (a.user, password) {
        (Some(user), Some(password)) => Some(Secret::Login { user, password }),
        (None, None) => None,
        (Some(_), None) => bail!("auth: user is set but password (or passwordFromEnv) is not"),
        (None, Some(_)) => bail!("auth: a password is set but user is not"),
    };
    let (token, reference) = match a.token {
        Some(TokenFile::Bearer(t)) => (Some(t), None),
        Some(TokenFile::Reference(r)) => (None, Some(r)),
        None => (None, None),
    };
    let token = match (token, a.token_from_env) {
        (Some(_), Some(_)) => bail!("auth: set either token or tokenFromEnv, not both"),
        (Some(t), None) => Some(t),
        (None, Some(var)) => Some(from_env("tokenFromEnv", &var)?),
        (None, None) => None,
    };
    if let Some(r) = reference {
        if login.is_some() || token.is_some() || a.credential_helper.is_some() || a.ecr.is_some() {
            bail!("auth.token: the reference's token block cannot be combined with other credentials");
        }
        return reference_token(r, ecr_region).map(Some);
    }
    if token.as_deref() == Some("") {
        bail!("auth.token: the token is empty");
    }
    let helper = a.credential_helper.filter(|h| !h.is_empty());
    let ecr = a.ecr.unwrap_or(false);
    match (login, token, helper, ecr) {
        (None, None, None, false) => Ok(None),
        (Some(l), None, None, false) => Ok(Some(Credentials::Given(l))),
        (None, Some(t), None, false) => Ok(Some(Credentials::Given(Secret::Token(t)))),
        (None, None, Some(h), false) => Ok(Some(Credentials::Helper(Arc::new(Helper::new(&h))))),
        (None, None, None, true) => Ok(Some(Credentials::Ecr(Arc::new(Ecr::new(ecr_region))))),
        _ => bail!("auth: give one of user and password, token, credentialHelper or ecr"),
    }
}

/// The reference server's `auth.token` block: `provider: ecr` (with
/// `providerOpts: profile=…,region=…`), or `static`, base64 of
/// `user:password` that it sent as Basic.
fn reference_token(r: ReferenceTokenFile, ecr_region: Option<String>) -> Result<Credentials> {
    if let Some(s) = r.static_token.filter(|s| !s.is_empty()) {
        let login = Secret::from_basic(&s)
            .context("auth.token.static: not base64 of user:password (the reference sent it as Basic)")?;
        return Ok(Credentials::Given(login));
    }
    match r.provider.as_deref().map(str::to_ascii_lowercase).as_deref() {
        Some("ecr") => {
            let (mut region, mut profile) = (ecr_region, None);
            for opt in r.provider_opts.iter().flat_map(|o| o.split(',')).filter(|o| !o.trim().is_empty()) {
                match opt.split_once('=').map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned())) {
                    Some((k, v)) if k == "region" => region = Some(v),
                    Some((k, v)) if k == "profile" => profile = Some(v),
                    _ => bail!("auth.token.providerOpts: '{opt}' is not profile=NAME or region=NAME"),
                }
            }
            Ok(Credentials::Ecr(Arc::new(Ecr::new(region).with_profile(profile))))
        }
        Some(p) => bail!("auth.token.provider: '{p}' is not supported (ecr is); or use credentialHelper"),
        None => bail!("auth.token: give provider: ecr or static (the reference's keys), or a token string"),
    }
}

/// The AWS region when the registry's name or an endpoint is an ECR host.
fn ecr_region(host: &RegistryHost, endpoints: &[url::Url]) -> Option<String> {
    crate::upstream::ecr_region(host.as_str())
        .or_else(|| endpoints.iter().find_map(|e| e.host_str().and_then(crate::upstream::ecr_region)))
}

/// A URL with any `user:password@` replaced, for error messages.
fn redact(u: &str) -> String {
    match (u.find("://"), u.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://<redacted>@{}", &u[..s], &u[at + 1..]),
        _ => u.to_owned(),
    }
}
