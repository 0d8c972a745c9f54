//! Talking to real registries: which ones may be contacted, with what
//! credentials and TLS, within what time.
//!
//! Knows nothing of the cache: it fetches bytes and reports typed errors.

mod allow;
mod auth;
mod error;
mod health;
mod registry;
mod tls;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use anyhow::Context;
use dashmap::DashMap;

pub use allow::is_public;
pub use error::{Error, ErrorKind};
pub use registry::{BlobStream, FetchedManifest, Registry};
pub use tls::provider as tls_provider;

use crate::config::{ClientTls, Config, Resilience, Timeouts};
use crate::oci::RegistryHost;

/// Docker Hub's real API host, for an unconfigured `docker.io`.
const DOCKER_HUB_ENDPOINT: &str = "https://registry-1.docker.io";

/// Every upstream the server may talk to. Built once at start-up: clients,
/// TLS configs and CA stores are never rebuilt per request.
pub struct Upstreams {
    configured: HashMap<RegistryHost, Arc<Registry>>,
    open_world: Option<OpenWorld>,
    air_gapped: bool,
}

/// Unconfigured public registries, created on first use. Their shared client
/// resolves only to public addresses and follows only public HTTPS redirects.
struct OpenWorld {
    client: reqwest::Client,
    timeouts: Timeouts,
    resilience: Resilience,
    registries: DashMap<RegistryHost, Arc<Registry>>,
}

impl Upstreams {
    pub fn new(config: &Config) -> anyhow::Result<Upstreams> {
        let roots = tls::base_roots();
        let mut configured = HashMap::new();
        for (i, r) in config.registries.iter().enumerate() {
            let tls = tls::client_config(&r.tls, &roots).with_context(|| format!("registries[{i}].tls"))?;
            let client = client_builder(&config.timeouts)
                .tls_backend_preconfigured(tls)
                .build()
                .with_context(|| format!("registries[{i}]: building the HTTP client"))?;
            let registry = Registry::new(
                r.host.clone(),
                r.endpoints.clone(),
                client,
                r.credentials.clone(),
                false,
                config.timeouts,
                &config.resilience,
            );
            configured.insert(r.host.clone(), Arc::new(registry));
        }
        let open_world = if config.allow_unconfigured {
            let tls = tls::client_config(&ClientTls::default(), &roots).context("default TLS settings")?;
            let client = client_builder(&config.timeouts)
                .tls_backend_preconfigured(tls)
                .https_only(true)
                .dns_resolver(Arc::new(allow::PublicOnlyResolver))
                .redirect(reqwest::redirect::Policy::custom(|attempt| {
                    let url = attempt.url();
                    let literal =
                        url.host_str().and_then(|h| h.trim_matches(['[', ']']).parse::<IpAddr>().ok());
                    if url.scheme() != "https" || literal.is_some_and(|ip| !is_public(ip)) {
                        let message = format!("refusing redirect to {url}: not a public https URL");
                        attempt.error(message)
                    } else if attempt.previous().len() >= 10 {
                        attempt.error("too many redirects")
                    } else {
                        attempt.follow()
                    }
                }))
                .build()
                .context("building the HTTP client for unconfigured registries")?;
            Some(OpenWorld {
                client,
                timeouts: config.timeouts,
                resilience: config.resilience,
                registries: DashMap::new(),
            })
        } else {
            None
        };
        Ok(Upstreams { configured, open_world, air_gapped: config.air_gapped })
    }

    pub fn is_air_gapped(&self) -> bool {
        self.air_gapped
    }

    /// The registry to fetch `host`'s content from, if it may be contacted.
    pub fn get(&self, host: &RegistryHost) -> Result<Arc<Registry>, Error> {
        if self.air_gapped {
            return Err(Error::new(host, ErrorKind::AirGapped, "not contacted: the server is air-gapped"));
        }
        if let Some(r) = self.configured.get(host) {
            return Ok(r.clone());
        }
        let Some(open) = &self.open_world else {
            return Err(Error::new(
                host,
                ErrorKind::Forbidden,
                "is not listed under `registries` and allowUnconfigured is false",
            ));
        };
        if let Some(r) = open.registries.get(host) {
            return Ok(r.clone());
        }
        if let Ok(ip) = host.hostname().parse::<IpAddr>()
            && !is_public(ip)
        {
            return Err(Error::new(
                host,
                ErrorKind::Forbidden,
                format!("{ip} is not a public address; list it under `registries` to allow it"),
            ));
        }
        let endpoint = if host.as_str() == "docker.io" {
            DOCKER_HUB_ENDPOINT.to_owned()
        } else {
            format!("https://{host}")
        };
        let endpoint = reqwest::Url::parse(&endpoint)
            .map_err(|e| Error::new(host, ErrorKind::Invalid, format!("building endpoint URL: {e}")))?;
        let registry = Arc::new(Registry::new(
            host.clone(),
            vec![endpoint],
            open.client.clone(),
            None,
            true,
            open.timeouts,
            &open.resilience,
        ));
        Ok(open.registries.entry(host.clone()).or_insert(registry).clone())
    }
}

fn client_builder(t: &Timeouts) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .connect_timeout(t.connect)
        .read_timeout(t.stall)
        .tcp_nodelay(true)
        .user_agent(concat!("ociregistry/", env!("CARGO_PKG_VERSION")))
}
