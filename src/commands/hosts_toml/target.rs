//! The mirror and the registries as given on the command line, checked.

use anyhow::{Result, bail};

use super::*;

/// `http` or `https`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(super) enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// The mirror's address, checked.
#[derive(Debug, Clone)]
pub(super) struct Mirror {
    pub(super) scheme: Scheme,
    /// `host[:port]` (the port only when the URL gave one).
    pub(super) authority: String,
}

impl Mirror {
    pub(super) fn parse(s: &str) -> Result<Mirror> {
        let example =
            "give scheme://host[:port], such as http://127.0.0.1:31080 or https://mirror.example:8443";
        if !s.contains("://") {
            bail!("--mirror: '{s}' has no scheme: {example}");
        }
        let url = url::Url::parse(s)
            .map_err(|e| anyhow::anyhow!("--mirror: '{s}' is not a URL ({e}): {example}"))?;
        let scheme = match url.scheme() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            other => bail!("--mirror: the scheme must be http or https, not '{other}': {example}"),
        };
        let Some(host) = url.host_str().filter(|h| !h.is_empty()) else {
            bail!("--mirror: '{s}' names no host: {example}");
        };
        if !url.username().is_empty() || url.password().is_some() {
            bail!(
                "--mirror: '{s}' holds credentials: node configuration files are world-readable; \
                 give the runtime credentials its own way"
            );
        }
        if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
            bail!("--mirror: '{s}' has a path or query: ociregistry serves /v2/ at the root, so {example}");
        }
        let authority = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_owned(),
        };
        Ok(Mirror { scheme, authority })
    }

    /// `scheme://host[:port]`, as containerd and k3s name a host.
    pub(super) fn url(&self) -> String {
        format!("{}://{}", self.scheme.as_str(), self.authority)
    }
}

/// A registry named with `--registry`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Registry {
    pub(super) host: RegistryHost,
    /// How the registry itself is reached (for the fallback).
    pub(super) scheme: Scheme,
}

impl Registry {
    pub(super) fn parse(s: &str) -> Result<Registry> {
        let t = s.trim();
        let (scheme, rest) = if let Some(r) = t.strip_prefix("http://") {
            (Scheme::Http, r)
        } else if let Some(r) = t.strip_prefix("https://") {
            (Scheme::Https, r)
        } else {
            (Scheme::Https, t)
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let host = RegistryHost::parse(rest).map_err(|e| {
            anyhow::anyhow!(
                "--registry: '{s}' is not a registry host ({e}); give host[:port] such as quay.io or \
                 10.0.0.5:5000, or http://host[:port] for a plain-HTTP registry"
            )
        })?;
        Ok(Registry { host, scheme })
    }

    /// Where the registry itself answers: containerd's `server`, the fallback.
    pub(super) fn origin(&self) -> String {
        if self.host.as_str() == "docker.io" {
            return "https://registry-1.docker.io".to_owned();
        }
        format!("{}://{}", self.scheme.as_str(), self.host)
    }

    /// containers/image cannot parse a `host:port` (or an IPv6 literal) as a
    /// path component, so `<mirror>/10.0.0.5:5000` is an invalid reference.
    pub(super) fn fits_in_path(&self) -> bool {
        !self.host.as_str().contains([':', '[', ']'])
    }

    /// The name the mirror knows such a registry by in the in-path form:
    /// `10.0.0.5:5000` is `10-0-0-5-5000.invalid`. `.invalid` never resolves
    /// (RFC 6761), so a mirror not told about the name cannot reach some other
    /// host by it; it reaches the registry through its `registries:` entry.
    pub(super) fn alias(&self) -> String {
        let mut out = String::new();
        for c in self.host.as_str().chars() {
            if c.is_ascii_alphanumeric() {
                out.push(c);
            } else if !out.ends_with('-') {
                out.push('-');
            }
        }
        format!("{}.invalid", out.trim_matches('-'))
    }

    /// The repository prefix of this registry at the mirror, in-path form.
    pub(super) fn mirror_path(&self) -> String {
        if self.fits_in_path() { self.host.to_string() } else { self.alias() }
    }
}
