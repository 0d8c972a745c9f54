//! The YAML file exactly as written: serde rejects unknown keys with their
//! line, and keys the reference server has that we do not act on yet are
//! taken as [`IgnoredAny`] and reported by [`File::inert_keys`].

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;
use serde::de::IgnoredAny;

/// The YAML file as written. Keys the reference server accepts but we do not
/// act on yet are taken as [`IgnoredAny`] and reported by [`File::inert_keys`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct File {
    pub image_path: Option<PathBuf>,
    pub log_level: Option<String>,
    pub port: Option<u16>,
    pub host: Option<String>,
    pub default_ns: Option<String>,
    /// Milliseconds to wait for an upstream's response headers.
    pub pull_timeout: Option<u64>,
    #[serde(default)]
    pub registries: Vec<RegistryFile>,
    /// Ours: may registries not listed under `registries` be contacted?
    pub allow_unconfigured: Option<bool>,
    /// Ours: upstream timeouts as durations (`10s`, `2m`).
    pub timeouts: Option<TimeoutsFile>,
    /// Re-check `latest` tags upstream on every request.
    pub always_pull_latest: Option<bool>,
    /// Never contact any upstream.
    pub air_gapped: Option<bool>,
    /// Serve the built-in hello-world image.
    pub hello_world: Option<bool>,
    /// Ours: per-tag freshness rules, first match wins.
    #[serde(default)]
    pub tag_policy: Vec<TagRuleFile>,
    /// Ours: `inline` (default) or `background` re-checks of stale tags.
    pub revalidate: Option<String>,
    /// Ours: how the server treats upstreams on bad links.
    pub resilience: Option<ResilienceFile>,
    /// HTTPS (and optional client certificates) on the data port.
    pub server_tls_config: Option<ServerTlsFile>,
    /// Port for `/health` and `/ready`.
    pub health: Option<u16>,
    /// Port for Prometheus `/metrics`.
    pub metrics: Option<u16>,
    /// Ours: `text` (default) or `json`.
    pub log_format: Option<String>,
    /// Ours: Basic authentication for pulls.
    pub pull_auth: Option<PullAuthFile>,
    /// Ours: how long in-flight responses may take to finish after SIGTERM.
    pub shutdown_grace_period: Option<String>,
    /// Ours: limits on client connections to the data port.
    pub connections: Option<ConnectionsFile>,
    /// Ours: background re-hashing of cached blobs.
    pub verify: Option<VerifyFile>,

    /// Ours: evict least recently pulled images past `max`, down to `target`.
    pub cache_size: Option<CacheSizeFile>,
    /// Ours: evict when the cache's filesystem has less free space than this.
    pub min_free_disk: Option<String>,
    /// Ours: manifest bodies held in memory (the rest are read from disk).
    pub manifest_cache_bytes: Option<String>,
    /// Ours: globs over `registry/repo:tag` never evicted.
    #[serde(default)]
    pub pinned: Vec<String>,
    /// The reference's background pruner.
    pub prune_config: Option<PruneConfigFile>,
    /// Ours: never evict what the cluster's running pods use.
    pub pin_running_images: Option<bool>,
    /// Ours: where the Kubernetes API is (default: in-cluster).
    pub kubernetes_api: Option<KubernetesApiFile>,
    /// Ours: `2MiB/s`, the most every upstream together may send.
    pub upstream_bandwidth: Option<String>,
    /// Ours: `22:00-06:00`, when background loads run.
    pub load_window: Option<String>,
    /// Ours: the admin API's port (off the data port).
    pub admin: Option<u16>,
    /// Ours: the bearer token the admin API requires.
    pub admin_auth: Option<AdminAuthFile>,

    /// Image list loaded in the background when `serve` starts.
    pub preload_images: Option<String>,
    /// Image lists or archives `load` reads when given no --image-file.
    pub image_file: Option<String>,
    /// The platform `load` and preloading choose from a multi-platform image.
    pub os: Option<String>,
    pub arch: Option<String>,

    /// Ours: a Docker config.json (or Kubernetes .dockerconfigjson) with
    /// credentials for registries that have no `auth`.
    pub docker_config: Option<PathBuf>,

    /// Log to this file instead of standard error.
    pub log_file: Option<std::path::PathBuf>,
    /// Ours: where the cache lives (the `imagePath` directory unless `s3` is set).
    pub storage: Option<StorageFile>,
    /// The reference server's chart writes it; nothing reads it.
    config_file: Option<IgnoredAny>,
    resolve_ref: Option<IgnoredAny>,
    list_config: Option<IgnoredAny>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RegistryFile {
    pub name: String,
    pub description: Option<String>,
    pub scheme: Option<String>,
    pub endpoint: Option<String>,
    /// Ours: several endpoints tried in order (a nearby mirror, then the origin).
    pub endpoints: Option<Vec<String>>,
    pub auth: Option<AuthFile>,
    pub tls: Option<TlsFile>,
    /// Ours: `1MiB/s`, the most this registry may send.
    pub bandwidth: Option<String>,
    /// The reference's internal puller options; nothing reads them.
    opts: Option<IgnoredAny>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthFile {
    pub user: Option<String>,
    pub password: Option<String>,
    pub password_from_env: Option<String>,
    /// Ours: token servers on other hosts that may receive the credentials.
    pub token_hosts: Option<Vec<String>>,
    /// A bearer token sent as it is (no token exchange), or the reference
    /// server's external-token block.
    pub token: Option<TokenFile>,
    pub token_from_env: Option<String>,
    /// `ecr-login` runs `docker-credential-ecr-login get`.
    pub credential_helper: Option<String>,
    /// AWS ECR's GetAuthorizationToken, with the AWS SDK's credential chain.
    pub ecr: Option<bool>,
}

/// `auth.token`: ours is a string; the reference's is a block.
#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "a bearer token (a string), or the reference's {provider, providerOpts, expiry, static}"
)]
pub enum TokenFile {
    Bearer(String),
    Reference(ReferenceTokenFile),
}

/// The reference server's external token: `provider: ecr` with
/// `providerOpts: profile=…,region=…`, or `static`: base64 of `user:password`,
/// sent as Basic.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ReferenceTokenFile {
    pub provider: Option<String>,
    pub provider_opts: Option<String>,
    /// How often the reference asked again; ECR's own expiry is used instead.
    pub expiry: Option<String>,
    #[serde(rename = "static")]
    pub static_token: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TlsFile {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub insecure_skip_verify: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StorageFile {
    pub s3: Option<S3File>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct S3File {
    pub bucket: Option<String>,
    pub prefix: Option<String>,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// The environment variables holding the keys (never the keys themselves).
    pub access_key_id_from_env: Option<String>,
    pub secret_access_key_from_env: Option<String>,
    pub path_style: Option<bool>,
    pub tls: Option<TlsFile>,
    /// Replicas stream downloads in progress to each other on this port.
    pub peers: Option<PeersFile>,
    /// A local disk tier of hot blobs, at most this size (`10GiB`).
    pub local_cache_size: Option<String>,
    /// Answer blob GETs with a redirect to a presigned URL of the bucket.
    pub redirect: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PeersFile {
    pub port: Option<u16>,
    pub advertise: Option<String>,
    pub token_from_env: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TimeoutsFile {
    pub connect: Option<String>,
    pub response: Option<String>,
    pub stall: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TagRuleFile {
    /// Glob over `registry/repository:tag`; `*` matches any run of characters, `/` included.
    #[serde(rename = "match")]
    pub pattern: String,
    /// `never` or `always`.
    pub policy: Option<String>,
    /// Re-check when the cached tag is older than this.
    pub ttl: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServerTlsFile {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub ca: Option<PathBuf>,
    pub client_auth: Option<String>,
}

impl ServerTlsFile {
    /// `serverTlsConfig: {}` (or only `clientAuth: none`): no TLS, as the
    /// reference reads it.
    pub fn is_empty(&self) -> bool {
        let no_client_auth = self.client_auth.as_deref().is_none_or(|a| a.eq_ignore_ascii_case("none"));
        self.cert.is_none() && self.key.is_none() && self.ca.is_none() && no_client_auth
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PullAuthFile {
    pub htpasswd: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CacheSizeFile {
    /// `20GiB`.
    pub max: Option<String>,
    /// `18GiB`; default: `max`.
    pub target: Option<String>,
}

/// The reference's keys and meanings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PruneConfigFile {
    pub enabled: Option<bool>,
    /// `accessed`, `created` or `pattern`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// `30d`: how long unused (accessed) or since cached (created).
    pub duration: Option<String>,
    /// `1d`: how often the pruner runs.
    pub frequency: Option<String>,
    /// Images pruned per run at most; -1 for no limit.
    pub count: Option<i64>,
    /// Comma-separated regular expressions (type pattern).
    pub expr: Option<String>,
    /// `dryrun` is the spelling the reference's code read.
    #[serde(alias = "dryrun")]
    pub dry_run: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KubernetesApiFile {
    pub server: Option<String>,
    pub token_file: Option<std::path::PathBuf>,
    pub ca_file: Option<std::path::PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AdminAuthFile {
    /// A file holding the bearer token.
    pub token_file: Option<std::path::PathBuf>,
    /// An environment variable holding the bearer token.
    pub token_from_env: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConnectionsFile {
    pub max: Option<usize>,
    pub first_byte_timeout: Option<String>,
    pub idle_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VerifyFile {
    /// `24h`, or `off`.
    pub interval: Option<String>,
    /// Bytes per second, `32MiB`.
    pub rate: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ResilienceFile {
    pub max_concurrent_requests: Option<usize>,
    pub max_background_fills: Option<usize>,
    pub resume_attempts: Option<u32>,
    pub probe_interval: Option<String>,
    pub max_probe_interval: Option<String>,
}

impl File {
    pub fn load(path: &Path) -> Result<File> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        File::parse(&text).with_context(|| format!("in config file {}", path.display()))
    }

    /// The file (when given) with the `OCIREGISTRY_*` environment variables
    /// laid over it.
    pub fn load_with_env(path: Option<&Path>) -> Result<File> {
        let file = match path {
            Some(p) => File::load(p)?,
            None => File::default(),
        };
        let overrides = super::env::overrides(std::env::vars_os())?;
        if overrides.is_empty() {
            return Ok(file);
        }
        // Read again as a tree to lay the variables over: the file itself was
        // checked above, with line numbers in its errors.
        let text = match path {
            Some(p) => {
                std::fs::read_to_string(p).with_context(|| format!("reading config file {}", p.display()))?
            }
            None => String::new(),
        };
        super::env::apply(&text, &overrides).context("in the OCIREGISTRY_* environment variables")
    }

    pub fn parse(text: &str) -> Result<File> {
        if text.trim().is_empty() {
            return Ok(File::default());
        }
        Ok(serde_saphyr::from_str(text)?)
    }

    /// Keys the reference server knows that this version accepts but ignores.
    pub fn inert_keys(&self) -> Vec<&'static str> {
        let top = [
            ("configFile", self.config_file.is_some()),
            ("resolveRef", self.resolve_ref.is_some()),
            ("listConfig", self.list_config.is_some()),
            ("registries[].opts", self.registries.iter().any(|r| r.opts.is_some())),
        ];
        top.into_iter().filter(|(_, set)| *set).map(|(k, _)| k).collect()
    }
}
