//! Talking to real registries: which ones may be contacted, with what
//! credentials and TLS, within what time.
//!
//! Knows nothing of the cache: it fetches bytes and reports typed errors.

mod allow;
mod auth;
mod bandwidth;
mod credentials;
mod error;
mod health;
mod pause;
mod registry;
mod settings;
pub(crate) mod tls;

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context;

pub use allow::is_public;
pub use auth::{Challenge, parse_challenge};
pub use bandwidth::{Bandwidth, Class, Window};
pub use credentials::{Credentials, DockerConfig, Ecr, Helper, Secret, ecr_region};
pub use error::{Error, ErrorKind};
pub use registry::{BlobStream, FetchedManifest, Registry};
pub use settings::{ClientTls, Configured, Limits, Settings, Timeouts};

use crate::metrics::{EndpointUpLabels, Metrics};
use crate::oci::RegistryHost;
use auth::TokenHost;
use health::{Health, Recovery};
use registry::RegistrySettings;

/// Fuzzing entry point (`fuzz/`): the `WWW-Authenticate` parser reads what
/// any upstream, or anything pretending to be one, sends.
#[doc(hidden)]
pub fn fuzz_www_authenticate(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Some(Challenge::Bearer { realm, .. }) = parse_challenge(s) {
        assert!(s.len() >= realm.len(), "the realm comes from the header");
    }
}

/// Docker Hub's real API host, for an unconfigured `docker.io`.
const DOCKER_HUB_ENDPOINT: &str = "https://registry-1.docker.io";
/// Where Docker Hub's registry sends clients for tokens.
const DOCKER_HUB_TOKEN_HOST: &str = "auth.docker.io";
/// Client-named registries remembered at once (their tokens, back-off and
/// rate-limit state); the least used beyond this are forgotten.
const MAX_UNCONFIGURED_REGISTRIES: u64 = 256;

/// Every upstream the server may talk to. Built once at start-up: clients,
/// TLS configs and CA stores are never rebuilt per request.
pub struct Upstreams {
    configured: HashMap<RegistryHost, Arc<Registry>>,
    open_world: Option<OpenWorld>,
    air_gapped: bool,
    metrics: Arc<Metrics>,
}

/// Unconfigured public registries, created on first use and kept in a
/// bounded cache. Their shared client resolves only to public addresses,
/// follows only public HTTPS redirects and ignores proxy settings (a proxy
/// would resolve `localhost` or cluster names itself).
struct OpenWorld {
    /// `upstreamBandwidth`, shared with every registry.
    bandwidth: Option<Arc<Bandwidth>>,
    client: reqwest::Client,
    timeouts: Timeouts,
    limits: Limits,
    registries: moka::sync::Cache<RegistryHost, Arc<Registry>>,
    docker_config: Option<Credentials>,
}

impl Upstreams {
    pub fn new(config: &Settings, metrics: Arc<Metrics>) -> anyhow::Result<Upstreams> {
        let roots = tls::base_roots();
        let global = config.bandwidth.map(|b| Arc::new(Bandwidth::new(b)));
        let mut configured = HashMap::new();
        metrics.set_configured_registries(config.registries.iter().map(|r| r.host.to_string()));
        for (i, r) in config.registries.iter().enumerate() {
            let tls = tls::client_config(&r.tls, &roots).with_context(|| format!("registries[{i}].tls"))?;
            let client = client_builder(&config.timeouts)
                .tls_backend_preconfigured(tls)
                .build()
                .with_context(|| format!("registries[{i}]: building the HTTP client"))?;
            // insecureSkipVerify is for the registry's own endpoints: a token
            // server on another host is verified.
            let token_client = if r.tls.insecure_skip_verify {
                let strict = ClientTls { insecure_skip_verify: false, ..r.tls.clone() };
                let tls =
                    tls::client_config(&strict, &roots).with_context(|| format!("registries[{i}].tls"))?;
                client_builder(&config.timeouts).tls_backend_preconfigured(tls).build().with_context(
                    || format!("registries[{i}]: building the HTTP client for its token server"),
                )?
            } else {
                client.clone()
            };
            let mut token_hosts: Vec<TokenHost> = r.token_hosts.iter().map(|h| TokenHost::parse(h)).collect();
            if r.host.as_str() == "docker.io" {
                token_hosts.push(TokenHost::parse(DOCKER_HUB_TOKEN_HOST));
            }
            let registry = Registry::new(RegistrySettings {
                host: r.host.clone(),
                endpoints: r.endpoints.clone(),
                client,
                token_client,
                credentials: r.credentials.clone().or_else(|| docker_config(config)),
                token_hosts,
                open_world: false,
                timeouts: config.timeouts,
                limits: config.limits,
                metrics: metrics.clone(),
                bandwidth: r
                    .bandwidth
                    .map(|b| Arc::new(Bandwidth::new(b)))
                    .into_iter()
                    .chain(global.clone())
                    .collect(),
            });
            configured.insert(r.host.clone(), Arc::new(registry));
        }
        let open_world = if config.allow_unconfigured {
            let tls = tls::client_config(&ClientTls::default(), &roots).context("default TLS settings")?;
            let client = client_builder(&config.timeouts)
                .tls_backend_preconfigured(tls)
                .https_only(true)
                .no_proxy()
                .dns_resolver(Arc::new(allow::PublicOnlyResolver))
                .redirect(reqwest::redirect::Policy::custom(|attempt| {
                    if let Err(e) = allow::check_public_https(attempt.url()) {
                        let message = format!("refusing redirect to {}: {e}", attempt.url());
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
                bandwidth: global,
                client,
                timeouts: config.timeouts,
                limits: config.limits,
                registries: moka::sync::Cache::new(MAX_UNCONFIGURED_REGISTRIES),
                docker_config: docker_config(config),
            })
        } else {
            None
        };
        Ok(Upstreams { configured, open_world, air_gapped: config.air_gapped, metrics })
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
            return Ok(r);
        }
        let endpoint = if host.as_str() == "docker.io" {
            DOCKER_HUB_ENDPOINT.to_owned()
        } else {
            format!("https://{host}")
        };
        let endpoint = reqwest::Url::parse(&endpoint)
            .map_err(|e| Error::new(host, ErrorKind::Forbidden, format!("building endpoint URL: {e}")))?;
        allow::check_client_named(host.hostname(), &endpoint).map_err(|e| {
            Error::new(host, ErrorKind::Forbidden, format!("{e}; list it under `registries` to allow it"))
        })?;
        let registry = Arc::new(Registry::new(RegistrySettings {
            host: host.clone(),
            endpoints: vec![endpoint],
            client: open.client.clone(),
            token_client: open.client.clone(),
            credentials: open.docker_config.clone(),
            token_hosts: Vec::new(),
            open_world: true,
            timeouts: open.timeouts,
            limits: open.limits,
            metrics: self.metrics.clone(),
            bandwidth: open.bandwidth.clone().into_iter().collect(),
        }));
        Ok(open.registries.get_with(host.clone(), || registry))
    }
}

/// The reachability record of one endpoint: probed in the background and
/// exported as `ociregistry_upstream_up` for configured registries only.
fn endpoint_health(
    host: &RegistryHost,
    url: &reqwest::Url,
    open_world: bool,
    limits: &Limits,
    metrics: &Metrics,
) -> Health {
    let name =
        if url.host_str() == Some(host.hostname()) { host.to_string() } else { format!("{host} via {url}") };
    let (up, recovery) = if open_world {
        (None, Recovery::NextRequest)
    } else {
        let labels =
            EndpointUpLabels { registry: metrics.registry_label(host.as_str()), endpoint: url.to_string() };
        (Some(metrics.upstream_up.get_or_create(&labels).clone()), Recovery::Probe)
    };
    Health::new(name, up, recovery, limits.probe_interval, limits.max_probe_interval)
}

/// `dockerConfig`'s credentials, for a registry with no `auth` of its own.
fn docker_config(config: &Settings) -> Option<Credentials> {
    config.docker_config.clone().map(Credentials::DockerConfig)
}

fn client_builder(t: &Timeouts) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .connect_timeout(t.connect)
        .read_timeout(t.stall)
        .tcp_nodelay(true)
        .user_agent(concat!("ociregistry/", env!("CARGO_PKG_VERSION")))
}
