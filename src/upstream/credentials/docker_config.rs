//! `dockerConfig`: credentials from a Docker `config.json`, which is also the
//! format of a Kubernetes `kubernetes.io/dockerconfigjson` Secret (and, with no
//! `auths` wrapper, of the older `.dockercfg`). The file is read again when it
//! changes, so a Secret rotated by a CronJob (ECR's 12-hour tokens) is used
//! without a restart.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use tracing::{info, warn};

use super::{Helper, Secret, helper};
use crate::oci::RegistryHost;

/// How often the file's modification time is looked at.
const RECHECK: Duration = Duration::from_secs(10);
/// Larger files are refused: a config.json is a few KiB.
const MAX_FILE: u64 = 4 * 1024 * 1024;

#[derive(Debug)]
pub struct DockerConfig {
    path: PathBuf,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    parsed: Arc<Parsed>,
    stamp: Option<(SystemTime, u64)>,
    checked: Instant,
}

/// What the file says, by registry host.
#[derive(Debug, Default)]
struct Parsed {
    auths: HashMap<String, Secret>,
    /// `credHelpers`: a helper per registry.
    helpers: HashMap<String, Arc<Helper>>,
    /// `credsStore`: the helper for every other registry.
    store: Option<Arc<Helper>>,
}

impl DockerConfig {
    /// Reads the file now: at start-up a missing or unreadable file is a
    /// configuration error.
    pub fn load(path: &Path) -> Result<DockerConfig> {
        let (parsed, stamp) = read(path)?;
        Ok(DockerConfig {
            path: path.to_owned(),
            state: Mutex::new(State { parsed: Arc::new(parsed), stamp, checked: Instant::now() }),
        })
    }

    pub async fn secret(&self, host: &RegistryHost) -> Result<Option<Secret>, String> {
        let parsed = self.current();
        let key = host.as_str();
        if let Some(h) = parsed.helpers.get(key) {
            return h.get(&helper::server_url(host)).await;
        }
        if let Some(s) = parsed.auths.get(key) {
            return Ok(Some(s.clone()));
        }
        match &parsed.store {
            Some(h) => h.get(&helper::server_url(host)).await,
            None => Ok(None),
        }
    }

    /// The parsed file, read again when it changed. A file that turns
    /// unreadable keeps the last good reading: a Secret being rewritten must
    /// not log every pull out.
    fn current(&self) -> Arc<Parsed> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.checked.elapsed() < RECHECK {
            return state.parsed.clone();
        }
        state.checked = Instant::now();
        if stamp(&self.path) == state.stamp {
            return state.parsed.clone();
        }
        match read(&self.path) {
            Ok((parsed, stamp)) => {
                info!(path = %self.path.display(), "dockerConfig changed: using the new credentials");
                state.parsed = Arc::new(parsed);
                state.stamp = stamp;
            }
            Err(e) => {
                warn!(path = %self.path.display(), "dockerConfig: keeping the credentials read before: {e:#}")
            }
        }
        state.parsed.clone()
    }
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

fn read(path: &Path) -> Result<(Parsed, Option<(SystemTime, u64)>)> {
    let stamp = stamp(path);
    let file =
        std::fs::File::open(path).with_context(|| format!("dockerConfig: reading {}", path.display()))?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(file, MAX_FILE + 1), &mut bytes)
        .with_context(|| format!("dockerConfig: reading {}", path.display()))?;
    if bytes.len() as u64 > MAX_FILE {
        bail!("dockerConfig: {} is larger than {MAX_FILE} bytes", path.display());
    }
    let parsed = parse(&bytes).with_context(|| format!("dockerConfig: {}", path.display()))?;
    Ok((parsed, stamp))
}

/// `config.json` / `.dockerconfigjson`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConfigJson {
    auths: Option<HashMap<String, AuthEntry>>,
    cred_helpers: Option<HashMap<String, String>>,
    creds_store: Option<String>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    identitytoken: Option<String>,
    registrytoken: Option<String>,
}

fn parse(bytes: &[u8]) -> Result<Parsed> {
    let value: serde_json::Value = serde_json::from_slice(bytes).context("not JSON")?;
    // `.dockercfg` is the `auths` map itself.
    let config: ConfigJson = if value.get("auths").is_some()
        || value.get("credHelpers").is_some()
        || value.get("credsStore").is_some()
    {
        serde_json::from_value(value).context("not a Docker config.json")?
    } else {
        let auths = serde_json::from_value(value).context("neither a Docker config.json nor a .dockercfg")?;
        ConfigJson { auths: Some(auths), cred_helpers: None, creds_store: None }
    };
    let mut parsed = Parsed::default();
    for (key, entry) in config.auths.unwrap_or_default() {
        let Some(host) = host_of(&key) else {
            warn!("dockerConfig: ignoring auths entry '{key}': not a registry host");
            continue;
        };
        match secret_of(entry) {
            Ok(Some(s)) => {
                parsed.auths.insert(host, s);
            }
            Ok(None) => {}
            Err(why) => warn!("dockerConfig: ignoring auths entry '{key}': {why}"),
        }
    }
    for (key, name) in config.cred_helpers.unwrap_or_default() {
        match host_of(&key) {
            Some(host) if !name.is_empty() => {
                parsed.helpers.insert(host, Arc::new(Helper::new(&name)));
            }
            _ => warn!("dockerConfig: ignoring credHelpers entry '{key}'"),
        }
    }
    parsed.store = config.creds_store.filter(|s| !s.is_empty()).map(|s| Arc::new(Helper::new(&s)));
    Ok(parsed)
}

fn secret_of(e: AuthEntry) -> Result<Option<Secret>, &'static str> {
    if let Some(t) = e.registrytoken.filter(|t| !t.is_empty()) {
        return Ok(Some(Secret::Token(t)));
    }
    if e.identitytoken.as_deref().is_some_and(|t| !t.is_empty()) {
        return Err("identity tokens (OAuth2 refresh tokens) are not supported; use a user and password");
    }
    if let (Some(user), Some(password)) = (e.username.clone(), e.password.clone())
        && !user.is_empty()
    {
        return Ok(Some(Secret::Login { user, password }));
    }
    let Some(auth) = e.auth.filter(|a| !a.is_empty()) else { return Ok(None) };
    Secret::from_basic(&auth).map(Some).ok_or("auth is not base64 of user:password")
}

/// The registry a key names: `https://index.docker.io/v1/`, `quay.io`,
/// `http://10.0.0.5:5000/v2/` and the like, as Docker writes them.
fn host_of(key: &str) -> Option<String> {
    let rest = key.trim().split_once("://").map_or(key.trim(), |(_, r)| r);
    let host = rest.split('/').next()?.to_ascii_lowercase();
    let host = match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => "docker.io".to_owned(),
        _ => host,
    };
    RegistryHost::parse(&host).ok().map(|h| h.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn reads_config_json_dockerconfigjson_and_dockercfg() {
        let json = format!(
            r#"{{"auths": {{"https://index.docker.io/v1/": {{"auth": "{}"}},
                "10.0.0.5:5000": {{"username": "u", "password": "p"}},
                "ghcr.io": {{"registrytoken": "t"}},
                "bad.io": {{"identitytoken": "x"}}}},
              "credHelpers": {{"123.dkr.ecr.us-east-1.amazonaws.com": "ecr-login"}},
              "credsStore": "pass"}}"#,
            b64("hub:pw:with:colons")
        );
        let p = parse(json.as_bytes()).unwrap();
        assert_eq!(
            p.auths["docker.io"],
            Secret::Login { user: "hub".into(), password: "pw:with:colons".into() }
        );
        assert_eq!(p.auths["10.0.0.5:5000"], Secret::Login { user: "u".into(), password: "p".into() });
        assert_eq!(p.auths["ghcr.io"], Secret::Token("t".into()));
        assert!(!p.auths.contains_key("bad.io"), "identity tokens are skipped");
        assert_eq!(
            p.helpers["123.dkr.ecr.us-east-1.amazonaws.com"].program(),
            Path::new("docker-credential-ecr-login")
        );
        assert_eq!(p.store.as_ref().unwrap().program(), Path::new("docker-credential-pass"));

        let cfg = format!(r#"{{"quay.io": {{"auth": "{}", "email": "x@y"}}}}"#, b64("q:w"));
        let p = parse(cfg.as_bytes()).unwrap();
        assert_eq!(p.auths["quay.io"], Secret::Login { user: "q".into(), password: "w".into() });
        assert!(parse(b"[1]").is_err());
    }

    #[test]
    fn keys_name_hosts_as_docker_writes_them() {
        assert_eq!(host_of("https://index.docker.io/v1/").as_deref(), Some("docker.io"));
        assert_eq!(host_of("http://10.0.0.5:5000/v2/").as_deref(), Some("10.0.0.5:5000"));
        assert_eq!(host_of("Quay.IO").as_deref(), Some("quay.io"));
        assert_eq!(host_of("not a host"), None);
    }
}
