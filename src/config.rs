//! Configuration: the YAML file (the reference server's key names), flags and
//! environment, validated once into [`Config`].
//!
//! Two stages: [`File`] mirrors the YAML exactly (serde rejects unknown keys
//! with their line); [`Config::resolve`] turns it plus the flags into checked
//! values, loading certificate files so a bad path stops start-up.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::cache::policy::{Refresh, Revalidate, TagPolicy, TagRule};
use crate::oci::RegistryHost;
use crate::server::{Htpasswd, ServerTls};
use crate::tls::{load_certs, load_key};
use crate::upstream::{ClientTls, Configured as Registry, Credentials, Timeouts};

pub const DEFAULT_IMAGE_PATH: &str = "/var/lib/ociregistry";
pub const DEFAULT_PORT: u16 = 8080;
pub const DEFAULT_HOST: &str = "0.0.0.0";

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

    log_file: Option<IgnoredAny>,
    preload_images: Option<IgnoredAny>,
    image_file: Option<IgnoredAny>,
    resolve_ref: Option<IgnoredAny>,
    os: Option<IgnoredAny>,
    arch: Option<IgnoredAny>,
    prune_config: Option<IgnoredAny>,
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
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthFile {
    pub user: Option<String>,
    pub password: Option<String>,
    pub password_from_env: Option<String>,
    /// Ours: token servers on other hosts that may receive the credentials.
    pub token_hosts: Option<Vec<String>>,
    token: Option<IgnoredAny>,
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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PullAuthFile {
    pub htpasswd: PathBuf,
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

    pub fn parse(text: &str) -> Result<File> {
        if text.trim().is_empty() {
            return Ok(File::default());
        }
        Ok(serde_saphyr::from_str(text)?)
    }

    /// Keys the reference server knows that this version accepts but ignores.
    pub fn inert_keys(&self) -> Vec<&'static str> {
        let top = [
            ("logFile", self.log_file.is_some()),
            ("preloadImages", self.preload_images.is_some()),
            ("imageFile", self.image_file.is_some()),
            ("resolveRef", self.resolve_ref.is_some()),
            ("os", self.os.is_some()),
            ("arch", self.arch.is_some()),
            ("pruneConfig", self.prune_config.is_some()),
            ("listConfig", self.list_config.is_some()),
            (
                "registries[].auth.token",
                self.registries.iter().any(|r| r.auth.as_ref().is_some_and(|a| a.token.is_some())),
            ),
        ];
        top.into_iter().filter(|(_, set)| *set).map(|(k, _)| k).collect()
    }
}

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
}

/// The validated configuration the server runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub image_path: PathBuf,
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
    /// Accepted-but-inert keys, to be logged once logging is up.
    pub warnings: Vec<String>,
}

/// Limits on client connections to the data port.
#[derive(Debug, Clone, Copy)]
pub struct Connections {
    /// Open connections at most; `None`: three quarters of the file descriptor limit.
    pub max: Option<usize>,
    /// How long a new connection may stay silent (no request bytes) before it is closed.
    pub first_byte_timeout: Duration,
    /// How long a connection with no request in flight is kept open.
    pub idle_timeout: Duration,
}

impl Default for Connections {
    fn default() -> Self {
        Connections {
            max: None,
            first_byte_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Verify {
    pub interval: Duration,
    pub rate: Option<u64>,
}

const DEFAULT_VERIFY: Verify = Verify { interval: Duration::from_secs(24 * 3600), rate: Some(32 << 20) };

fn resolve_connections(f: Option<&ConnectionsFile>) -> Result<Connections> {
    let mut c = Connections::default();
    let Some(f) = f else { return Ok(c) };
    if f.max == Some(0) {
        bail!("connections.max: must be at least 1");
    }
    c.max = f.max;
    set_duration("connections.firstByteTimeout", &f.first_byte_timeout, &mut c.first_byte_timeout)?;
    set_duration("connections.idleTimeout", &f.idle_timeout, &mut c.idle_timeout)?;
    if c.first_byte_timeout.is_zero() || c.idle_timeout.is_zero() {
        bail!("connections: firstByteTimeout and idleTimeout must be more than 0");
    }
    Ok(c)
}

fn resolve_verify(f: Option<&VerifyFile>) -> Result<Option<Verify>> {
    let Some(f) = f else { return Ok(Some(DEFAULT_VERIFY)) };
    let mut v = DEFAULT_VERIFY;
    match f.interval.as_deref() {
        Some("off") => return Ok(None),
        other => set_duration("verify.interval", &other.map(str::to_owned), &mut v.interval)?,
    }
    if v.interval.is_zero() {
        bail!("verify.interval: must be more than 0 (or off)");
    }
    if let Some(r) = &f.rate {
        v.rate =
            Some(parse_bytes(r).with_context(|| format!("verify.rate: '{r}' is not a size like 32MiB"))?);
    }
    Ok(Some(v))
}

/// `1048576`, `512KiB`, `32MiB`, `1GiB` (also kB/MB/GB, powers of ten).
fn parse_bytes(s: &str) -> Result<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().context("no number")?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => bail!("unknown unit '{other}'"),
    };
    let v = n.checked_mul(mult).context("too large")?;
    if v == 0 {
        bail!("must be more than 0");
    }
    Ok(v)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Limits and back-offs for upstreams on bad links.
#[derive(Debug, Clone, Copy)]
pub struct Resilience {
    /// Upstream requests in flight per registry (blob downloads included).
    pub max_concurrent_requests: usize,
    /// Downloads allowed to continue after every client that asked has gone.
    pub max_background_fills: usize,
    /// How often a broken blob download is resumed before it is given up.
    pub resume_attempts: u32,
    /// First wait before probing an upstream that went down; doubles up to the max.
    pub probe_interval: Duration,
    pub max_probe_interval: Duration,
}

impl Default for Resilience {
    fn default() -> Self {
        Resilience {
            max_concurrent_requests: 32,
            max_background_fills: 16,
            resume_attempts: 5,
            probe_interval: Duration::from_secs(2),
            max_probe_interval: Duration::from_secs(60),
        }
    }
}

fn resolve_server_tls(f: &ServerTlsFile) -> Result<ServerTls> {
    let (Some(cert), Some(key)) = (&f.cert, &f.key) else {
        bail!("serverTlsConfig: cert and key are both required");
    };
    load_certs(cert).context("serverTlsConfig.cert")?;
    load_key(key).context("serverTlsConfig.key")?;
    let client_ca = match (f.client_auth.as_deref().unwrap_or("none"), &f.ca) {
        ("none", _) => None,
        ("verify", Some(ca)) => {
            load_certs(ca).context("serverTlsConfig.ca")?;
            Some(ca.clone())
        }
        ("verify", None) => bail!("serverTlsConfig.ca: required with clientAuth: verify"),
        (other, _) => bail!("serverTlsConfig.clientAuth: '{other}' must be none or verify"),
    };
    Ok(ServerTls { cert: cert.clone(), key: key.clone(), client_ca })
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

fn resolve_resilience(file: Option<&ResilienceFile>) -> Result<Resilience> {
    let mut r = Resilience::default();
    let Some(f) = file else { return Ok(r) };
    let positive = |key: &str, v: Option<usize>, slot: &mut usize| -> Result<()> {
        match v {
            Some(0) => bail!("resilience.{key}: must be at least 1"),
            Some(n) => *slot = n,
            None => {}
        }
        Ok(())
    };
    positive("maxConcurrentRequests", f.max_concurrent_requests, &mut r.max_concurrent_requests)?;
    positive("maxBackgroundFills", f.max_background_fills, &mut r.max_background_fills)?;
    r.resume_attempts = f.resume_attempts.unwrap_or(r.resume_attempts);
    set_duration("resilience.probeInterval", &f.probe_interval, &mut r.probe_interval)?;
    set_duration("resilience.maxProbeInterval", &f.max_probe_interval, &mut r.max_probe_interval)?;
    r.max_probe_interval = r.max_probe_interval.max(r.probe_interval);
    Ok(r)
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

fn set_duration(key: &str, value: &Option<String>, slot: &mut Duration) -> Result<()> {
    if let Some(v) = value {
        *slot = humantime::parse_duration(v)
            .with_context(|| format!("{key}: '{v}' is not a duration like 10s or 2m"))?;
    }
    Ok(())
}

/// Where Docker Hub's content really lives.
const DOCKER_HUB: (&str, &str) = ("docker.io", "https://registry-1.docker.io");

impl Config {
    pub fn resolve(file: File, flags: Overrides) -> Result<Config> {
        let warnings = file
            .inert_keys()
            .into_iter()
            .map(|k| {
                format!("config key `{k}` is accepted for compatibility but has no effect in this version")
            })
            .collect();

        let log_level = flags.log_level.or(file.log_level).unwrap_or_else(|| "info".into());
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
        let tag_policy =
            TagPolicy::new(resolve_tag_rules(&file.tag_policy)?, file.always_pull_latest.unwrap_or(false));
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
            server_tls: file.server_tls_config.as_ref().map(resolve_server_tls).transpose()?,
            health_port: file.health,
            metrics_port: file.metrics,
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

fn resolve_registry(r: RegistryFile) -> Result<Registry> {
    let host = RegistryHost::parse(&r.name).context("name")?;
    let scheme = r.scheme.as_deref().unwrap_or("https");
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
            let password = match (a.password, a.password_from_env) {
                (Some(_), Some(_)) => {
                    bail!("auth: set either password or passwordFromEnv, not both")
                }
                (Some(p), None) => Some(p),
                (None, Some(var)) => Some(std::env::var(&var).with_context(|| {
                    format!("auth.passwordFromEnv: environment variable {var} is not set")
                })?),
                (None, None) => None,
            };
            match (a.user, password) {
                (Some(user), Some(password)) => Some(Credentials { user, password }),
                (None, None) => None,
                (Some(_), None) => {
                    bail!("auth: user is set but password (or passwordFromEnv) is not")
                }
                (None, Some(_)) => bail!("auth: a password is set but user is not"),
            }
        }
    };

    let tls = match r.tls {
        None => ClientTls::default(),
        Some(t) => {
            let extra_roots = match &t.ca {
                Some(p) => load_certs(p).context("tls.ca")?,
                None => Vec::new(),
            };
            let identity = match (&t.cert, &t.key) {
                (Some(c), Some(k)) => {
                    Some((load_certs(c).context("tls.cert")?, load_key(k).context("tls.key")?))
                }
                (None, None) => None,
                _ => bail!("tls: cert and key must be given together"),
            };
            ClientTls { extra_roots, identity, insecure_skip_verify: t.insecure_skip_verify.unwrap_or(false) }
        }
    };
    Ok(Registry { host, endpoints, credentials, token_hosts, tls })
}

/// A URL with any `user:password@` replaced, for error messages.
fn redact(u: &str) -> String {
    match (u.find("://"), u.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://<redacted>@{}", &u[..s], &u[at + 1..]),
        _ => u.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(yaml: &str) -> Result<Config> {
        Config::resolve(File::parse(yaml)?, Overrides::default())
    }

    fn err(yaml: &str) -> String {
        format!("{:#}", resolve(yaml).unwrap_err())
    }

    #[test]
    fn defaults() {
        let c = resolve("").unwrap();
        assert_eq!(c.image_path, PathBuf::from(DEFAULT_IMAGE_PATH));
        assert_eq!((c.host.as_str(), c.port), (DEFAULT_HOST, DEFAULT_PORT));
        assert!(c.allow_unconfigured);
        assert!(c.registries.is_empty());
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let e = err("port: 1\nbogus: 2\n");
        assert!(e.contains("bogus") && e.contains("line 2"), "{e}");
        let e = err("registries:\n  - name: a.b\n    schem: http\n");
        assert!(e.contains("schem") && e.contains("line 3"), "{e}");
    }

    #[test]
    fn reference_keys_warn() {
        let c = resolve("os: linux\npruneConfig: {enabled: false}\n").unwrap();
        assert_eq!(c.warnings.len(), 2);
        assert!(c.warnings[0].contains("os"));
    }

    #[test]
    fn bad_values_name_the_key() {
        assert!(err("registries:\n  - name: a.b\n    scheme: ftp\n").contains("registries[0]: scheme"));
        assert!(err("defaultNs: 'a b'\n").contains("defaultNs"));
        assert!(err("timeouts: {connect: soon}\n").contains("timeouts.connect"));
        assert!(err("logLevel: loud\n").contains("logLevel"));
        assert!(err("tagPolicy:\n  - {match: '*', ttl: soon}\n").contains("tagPolicy[0].ttl"));
        assert!(err("tagPolicy:\n  - {match: '*', policy: sometimes}\n").contains("tagPolicy[0].policy"));
        assert!(err("tagPolicy:\n  - {match: 'a[', policy: never}\n").contains("tagPolicy[0].match"));
        assert!(err("revalidate: later\n").contains("revalidate"));
        assert!(err("resilience: {maxConcurrentRequests: 0}\n").contains("resilience.maxConcurrentRequests"));
        assert!(
            err("registries:\n  - {name: a.b, endpoint: 'http://x', endpoints: ['http://y']}\n")
                .contains("endpoints")
        );
        assert!(err("tagPolicy:\n  - {match: '*', ttl: soon}\n").contains("tagPolicy[0].ttl"));
        assert!(err("tagPolicy:\n  - {match: '*', policy: sometimes}\n").contains("tagPolicy[0].policy"));
        assert!(err("tagPolicy:\n  - {match: 'a[', policy: never}\n").contains("tagPolicy[0].match"));
        assert!(err("revalidate: later\n").contains("revalidate"));
        assert!(err("resilience: {maxConcurrentRequests: 0}\n").contains("resilience.maxConcurrentRequests"));
        assert!(
            err("registries:\n  - {name: a.b, endpoint: 'http://x', endpoints: ['http://y']}\n")
                .contains("endpoints")
        );
        assert!(err("registries:\n  - name: a.b\n    tls: {ca: /nonexistent.pem}\n").contains("tls.ca"));
        assert!(err("registries:\n  - name: a.b\n  - name: A.B\n").contains("listed twice"));
        let e = err("registries:\n  - {name: a.b, endpoint: 'https://user:s3cret@a.b'}\n");
        assert!(e.contains("registries[0]: endpoint") && e.contains("auth") && !e.contains("s3cret"), "{e}");
        assert!(
            err("registries:\n  - {name: a.b, auth: {tokenHosts: ['a b']}}\n").contains("auth.tokenHosts[0]")
        );
        assert!(
            err("registries:\n  - name: a.b\n    auth: {user: u, passwordFromEnv: OCIREG_NOPE_UNSET}\n")
                .contains("OCIREG_NOPE_UNSET")
        );
    }

    #[test]
    fn connection_limits_and_verification() {
        let c = resolve("connections: {max: 10, firstByteTimeout: 1s}\nverify: {interval: 1h, rate: 2MiB}\n")
            .unwrap();
        assert_eq!(c.connections.max, Some(10));
        assert_eq!(c.connections.first_byte_timeout, Duration::from_secs(1));
        assert_eq!(c.connections.idle_timeout, Duration::from_secs(120));
        let v = c.verify.unwrap();
        assert_eq!((v.interval, v.rate), (Duration::from_secs(3600), Some(2 << 20)));
        assert!(resolve("verify: {interval: 'off'}\n").unwrap().verify.is_none());
        assert!(err("connections: {max: 0}\n").contains("connections.max"));
        assert!(err("connections: {idleTimeout: soon}\n").contains("connections.idleTimeout"));
        assert!(err("verify: {rate: fast}\n").contains("verify.rate"));
    }

    #[test]
    fn docker_hub_endpoint_and_flags_win() {
        let flags = Overrides { port: Some(9), ..Default::default() };
        let c = Config::resolve(File::parse("port: 1\nregistries:\n  - name: docker.io\n").unwrap(), flags)
            .unwrap();
        assert_eq!(c.port, 9);
        assert_eq!(c.registries[0].endpoints[0].as_str(), "https://registry-1.docker.io/");
        let c =
            resolve("pullTimeout: 1500\nregistries:\n  - {name: '127.0.0.1:5000', scheme: http}\n").unwrap();
        assert_eq!(c.registries[0].endpoints[0].as_str(), "http://127.0.0.1:5000/");
        assert_eq!(c.timeouts.response, Duration::from_millis(1500));
    }
}
