//! Configuration: the YAML file (the reference server's key names), flags and
//! environment, validated once into [`Config`].
//!
//! Two stages: [`File`] mirrors the YAML exactly (serde rejects unknown keys
//! with their line); [`Config::resolve`] turns it plus the flags into checked
//! values, loading certificate files so a bad path stops start-up.

mod capacity;
mod env;
mod file;
mod limits;
mod registry;
mod storage;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::cache::policy::{Refresh, Revalidate, TagPolicy, TagRule};
use crate::oci::RegistryHost;
use crate::server::{Htpasswd, ServerTls};
use crate::tls::{load_certs, load_key};
use crate::upstream::{Configured as Registry, Timeouts};

pub use file::{
    AdminAuthFile, AuthFile, ConnectionsFile, File, PullAuthFile, RegistryFile, ResilienceFile,
    ServerTlsFile, TagRuleFile, TimeoutsFile, TlsFile, VerifyFile,
};
pub use limits::{Connections, Resilience, Verify};
use limits::{resolve_connections, resolve_resilience, resolve_verify};
use registry::resolve_registry;

pub const DEFAULT_IMAGE_PATH: &str = "/var/lib/ociregistry";
pub const DEFAULT_PORT: u16 = 8080;
pub const DEFAULT_HOST: &str = "0.0.0.0";

/// Settings given on the command line; each wins over the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub image_path: Option<PathBuf>,
    pub log_level: Option<String>,
    pub port: Option<u16>,
    pub host: Option<String>,
    pub default_ns: Option<String>,
    pub pull_timeout: Option<u64>,
    pub allow_unconfigured: Option<bool>,
    pub air_gapped: bool,
    pub hello_world: bool,
    pub log_format: Option<String>,
    pub shutdown_grace: Option<Duration>,
    pub preload_images: Option<String>,
    /// The reference server's serve flags.
    pub health_port: Option<u16>,
    pub metrics_port: Option<u16>,
    pub always_pull_latest: bool,
    pub log_file: Option<PathBuf>,
    /// The platform preloading chooses (`os`, `arch`).
    pub os: Option<String>,
    pub arch: Option<String>,
}

/// What `load` and `serve --preload-images` read, and for which platform.
#[derive(Debug, Clone, Default)]
pub struct Load {
    pub preload_images: Option<String>,
    pub image_file: Option<String>,
    pub os: Option<String>,
    pub arch: Option<String>,
}

/// `logFormat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The validated configuration the server runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub image_path: PathBuf,
    /// `storage`: the `imagePath` directory, or a bucket (then `imagePath` stages downloads).
    pub storage: crate::cache::store::Backend,
    pub log_level: String,
    pub host: String,
    pub port: u16,
    pub default_ns: Option<RegistryHost>,
    pub registries: Vec<Registry>,
    pub allow_unconfigured: bool,
    pub timeouts: Timeouts,
    pub air_gapped: bool,
    pub hello_world: bool,
    pub tag_policy: TagPolicy,
    pub revalidate: Revalidate,
    pub resilience: Resilience,
    pub server_tls: Option<ServerTls>,
    pub health_port: Option<u16>,
    pub metrics_port: Option<u16>,
    pub log_format: LogFormat,
    /// `pullAuth.htpasswd`: users and their bcrypt hashes.
    pub pull_auth: Option<Htpasswd>,
    pub shutdown_grace: Duration,
    pub connections: Connections,
    /// Background re-hashing of blobs: every `interval`, at most `rate` bytes/s.
    pub verify: Option<Verify>,
    pub capacity: crate::cache::capacity::Capacity,
    pub prune: Option<crate::cache::capacity::PruneSchedule>,
    /// `manifestCacheBytes`.
    pub manifest_cache_bytes: u64,
    /// `pinRunningImages` with `kubernetesApi`: where to list pods.
    pub kubernetes: Option<crate::kube::Settings>,
    /// `upstreamBandwidth`, bytes per second.
    pub upstream_bandwidth: Option<u64>,
    /// `dockerConfig`, read (and checked) at start-up and again when it changes.
    pub docker_config: Option<std::sync::Arc<crate::upstream::DockerConfig>>,
    /// `loadWindow`: when background loads run.
    pub load_window: Option<crate::upstream::Window>,
    /// `admin`: the admin API's port, and the bearer token it requires.
    pub admin_port: Option<u16>,
    pub admin_token: Option<String>,
    /// `preloadImages`, `imageFile`, `os`, `arch`: what loading fills the cache with.
    pub load: Load,
    /// `logFile` / `--log-file`: logs go here instead of standard error.
    pub log_file: Option<PathBuf>,
    /// Accepted-but-inert keys, to be logged once logging is up.
    pub warnings: Vec<String>,
}

fn resolve_server_tls(f: &ServerTlsFile) -> Result<ServerTls> {
    let (Some(cert), Some(key)) = (&f.cert, &f.key) else {
        bail!("serverTlsConfig: cert and key are both required");
    };
    load_certs(cert).context("serverTlsConfig.cert")?;
    load_key(key).context("serverTlsConfig.key")?;
    let verify_clients = match f.client_auth.as_deref().unwrap_or("none").to_ascii_lowercase().as_str() {
        "none" => false,
        "verify" => true,
        other => bail!("serverTlsConfig.clientAuth: '{other}' must be none or verify"),
    };
    // Without `ca`, client certificates are checked against the system's
    // trust store, as the reference server does.
    let client_ca = match &f.ca {
        Some(ca) if verify_clients => {
            load_certs(ca).context("serverTlsConfig.ca")?;
            Some(ca.clone())
        }
        _ => None,
    };
    Ok(ServerTls { cert: cert.clone(), key: key.clone(), verify_clients, client_ca })
}

fn load_htpasswd(path: &Path) -> Result<Htpasswd> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("pullAuth.htpasswd: reading {}", path.display()))?;
    let mut users = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let Some((user, hash)) = line.trim().split_once(':') else {
            bail!("pullAuth.htpasswd: {} line {}: expected user:hash", path.display(), i + 1);
        };
        if !hash.starts_with("$2") {
            bail!(
                "pullAuth.htpasswd: {} line {}: only bcrypt hashes are accepted (htpasswd -B)",
                path.display(),
                i + 1
            );
        }
        users.push((user.to_owned(), hash.to_owned()));
    }
    if users.is_empty() {
        bail!("pullAuth.htpasswd: {} holds no users", path.display());
    }
    Ok(Htpasswd { path: path.to_owned(), users })
}

fn resolve_tag_rules(rules: &[TagRuleFile]) -> Result<Vec<TagRule>> {
    let mut out = Vec::new();
    for (i, r) in rules.iter().enumerate() {
        let refresh =
            match (r.policy.as_deref(), &r.ttl) {
                (Some("never"), None) => Refresh::Never,
                (Some("always"), None) => Refresh::Always,
                (None, Some(ttl)) => Refresh::After(humantime::parse_duration(ttl).with_context(|| {
                    format!("tagPolicy[{i}].ttl: '{ttl}' is not a duration like 10m or 1h")
                })?),
                (Some(p), None) => {
                    bail!("tagPolicy[{i}].policy: '{p}' must be never or always (or give ttl instead)")
                }
                (Some(_), Some(_)) => bail!("tagPolicy[{i}]: give either policy or ttl, not both"),
                (None, None) => bail!("tagPolicy[{i}]: give policy (never, always) or ttl"),
            };
        let rule = TagRule::new(&r.pattern, refresh)
            .with_context(|| format!("tagPolicy[{i}].match: '{}' is not a valid glob", r.pattern))?;
        out.push(rule);
    }
    Ok(out)
}

pub(super) fn set_duration(key: &str, value: &Option<String>, slot: &mut Duration) -> Result<()> {
    if let Some(v) = value {
        *slot = humantime::parse_duration(v)
            .with_context(|| format!("{key}: '{v}' is not a duration like 10s or 2m"))?;
    }
    Ok(())
}

impl Config {
    pub fn resolve(file: File, flags: Overrides) -> Result<Config> {
        let warnings = file
            .inert_keys()
            .into_iter()
            .map(|k| {
                format!("config key `{k}` is accepted for compatibility but has no effect in this version")
            })
            .collect();

        let cache_capacity = capacity::resolve_capacity(&file)?;
        let prune = capacity::resolve_prune(&file)?;
        let manifest_cache_bytes = capacity::resolve_manifest_cache(&file)?;
        let storage = storage::resolve(file.storage.as_ref())?;
        let admin_token = capacity::resolve_admin_token(file.admin_auth.as_ref())?;
        // RUST_LOG is read when neither the flag nor the file sets a level.
        let log_level = flags
            .log_level
            .or(file.log_level)
            .or_else(|| std::env::var("RUST_LOG").ok().filter(|l| !l.is_empty()))
            .unwrap_or_else(|| "info".into());
        check_log_level(&log_level)?;

        let default_ns = flags
            .default_ns
            .or(file.default_ns)
            .filter(|s| !s.is_empty())
            .map(|s| RegistryHost::parse(&s).context("defaultNs"))
            .transpose()?;

        let mut timeouts = Timeouts::default();
        if let Some(t) = &file.timeouts {
            set_duration("timeouts.connect", &t.connect, &mut timeouts.connect)?;
            set_duration("timeouts.response", &t.response, &mut timeouts.response)?;
            set_duration("timeouts.stall", &t.stall, &mut timeouts.stall)?;
        }
        let resilience = resolve_resilience(file.resilience.as_ref())?;
        let tag_policy = TagPolicy::new(
            resolve_tag_rules(&file.tag_policy)?,
            flags.always_pull_latest || file.always_pull_latest.unwrap_or(false),
        );
        let revalidate = match file.revalidate.as_deref() {
            None | Some("inline") => Revalidate::Inline,
            Some("background") => Revalidate::Background,
            Some(other) => bail!("revalidate: '{other}' must be inline or background"),
        };
        if let Some(ms) = flags.pull_timeout.or(file.pull_timeout) {
            if ms == 0 {
                bail!("pullTimeout: must be more than 0 milliseconds");
            }
            timeouts.response = Duration::from_millis(ms);
        }

        let mut registries: Vec<Registry> = Vec::new();
        for (i, r) in file.registries.into_iter().enumerate() {
            let reg = resolve_registry(r).with_context(|| format!("registries[{i}]"))?;
            if registries.iter().any(|x| x.host == reg.host) {
                bail!("registries[{i}].name: '{}' is listed twice", reg.host);
            }
            registries.push(reg);
        }

        Ok(Config {
            image_path: flags.image_path.or(file.image_path).unwrap_or_else(|| DEFAULT_IMAGE_PATH.into()),
            storage,
            log_level,
            host: flags.host.or(file.host).unwrap_or_else(|| DEFAULT_HOST.into()),
            port: flags.port.or(file.port).unwrap_or(DEFAULT_PORT),
            default_ns,
            registries,
            allow_unconfigured: flags.allow_unconfigured.or(file.allow_unconfigured).unwrap_or(true),
            timeouts,
            air_gapped: flags.air_gapped || file.air_gapped.unwrap_or(false),
            hello_world: flags.hello_world || file.hello_world.unwrap_or(false),
            tag_policy,
            revalidate,
            resilience,
            // The reference's chart writes `serverTlsConfig: {}` for "no TLS".
            server_tls: file
                .server_tls_config
                .as_ref()
                .filter(|t| !t.is_empty())
                .map(resolve_server_tls)
                .transpose()?,
            health_port: flags.health_port.or(file.health),
            metrics_port: flags.metrics_port.or(file.metrics),
            log_file: flags.log_file.or(file.log_file).filter(|p| !p.as_os_str().is_empty()),
            log_format: match flags.log_format.as_deref().or(file.log_format.as_deref()) {
                None | Some("text") => LogFormat::Text,
                Some("json") => LogFormat::Json,
                Some(other) => bail!("logFormat: '{other}' must be text or json"),
            },
            pull_auth: file.pull_auth.as_ref().map(|p| load_htpasswd(&p.htpasswd)).transpose()?,
            shutdown_grace: match (flags.shutdown_grace, &file.shutdown_grace_period) {
                (Some(d), _) => d,
                (None, v) => {
                    let mut d = Duration::from_secs(30);
                    set_duration("shutdownGracePeriod", v, &mut d)?;
                    d
                }
            },
            connections: resolve_connections(file.connections.as_ref())?,
            verify: resolve_verify(file.verify.as_ref())?,
            capacity: cache_capacity,
            manifest_cache_bytes,
            prune,
            kubernetes: file.pin_running_images.unwrap_or(false).then(|| {
                let api = file.kubernetes_api.as_ref();
                crate::kube::Settings {
                    server: api.and_then(|a| a.server.clone()),
                    token_file: api.and_then(|a| a.token_file.clone()),
                    ca_file: api.and_then(|a| a.ca_file.clone()),
                }
            }),
            admin_port: file.admin,
            docker_config: file
                .docker_config
                .as_deref()
                .map(|p| crate::upstream::DockerConfig::load(p).map(std::sync::Arc::new))
                .transpose()?,
            upstream_bandwidth: file
                .upstream_bandwidth
                .as_deref()
                .map(|b| limits::parse_rate("upstreamBandwidth", b))
                .transpose()?,
            load_window: file
                .load_window
                .as_deref()
                .map(|w| crate::upstream::Window::parse(w).map_err(|e| anyhow::anyhow!("loadWindow: {e}")))
                .transpose()?,
            admin_token,
            load: Load {
                preload_images: flags.preload_images.or(file.preload_images).filter(|s| !s.is_empty()),
                image_file: file.image_file.filter(|s| !s.is_empty()),
                os: flags.os.or(file.os).filter(|s| !s.is_empty()),
                arch: flags.arch.or(file.arch).filter(|s| !s.is_empty()),
            },
            warnings,
        })
    }
}

/// A plain word must be a level (`EnvFilter` would take `loud` as a target
/// name); anything with `=` is a full filter directive list.
fn check_log_level(level: &str) -> Result<()> {
    const LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];
    let ok = if level.contains('=') {
        tracing_subscriber::EnvFilter::try_new(level).is_ok()
    } else {
        LEVELS.contains(&level.to_ascii_lowercase().as_str())
    };
    if !ok {
        bail!(
            "logLevel: '{level}' is not one of error, warn, info, debug, trace (or a filter like info,ociregistry=debug)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests;
