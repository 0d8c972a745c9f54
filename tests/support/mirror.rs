//! The server under test: the real `ociregistry` binary, started as
//! `ociregistry serve --config-file <tmp>/config.yaml` with a temporary cache
//! directory (`imagePath`) and a free port, its stdout and stderr in a log file.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::Duration;

use super::proxy::Proxy;
use super::upstream::Upstream;
use super::{Explain, free_port, http, kill_and_reap, sigterm, spawn_logged, tail, wait_or_kill};

/// The binary under test, built by cargo for this test crate.
pub const BIN: &str = env!("CARGO_BIN_EXE_ociregistry");

/// Set to a path to test another build of the server (say a release build).
pub const BIN_OVERRIDE_ENV: &str = "OCIREGISTRY_E2E_BIN";

/// The binary to run: [`BIN_OVERRIDE_ENV`] if set, else [`BIN`].
pub fn binary() -> std::path::PathBuf {
    std::env::var_os(BIN_OVERRIDE_ENV)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(BIN))
}

/// How long the mirror may take to answer `GET /v2/` after starting.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// One entry of the `registries:` list.
#[derive(Debug, Clone, Default)]
pub struct RegistryConfig {
    /// The registry's name as clients address it (`up.test`, `127.0.0.1:5000`).
    pub name: String,
    /// Where its content is really fetched (`http://127.0.0.1:PORT`).
    pub endpoint: Option<String>,
    /// Several endpoints, tried in order (instead of `endpoint`).
    pub endpoints: Vec<String>,
    /// `http` or `https`, for a registry without an endpoint.
    pub scheme: Option<String>,
    pub auth: Option<(String, String)>,
    /// CA (PEM) to trust for this registry.
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) to present to this registry (`tls.cert`).
    pub cert: Option<PathBuf>,
    /// Its private key (PEM) (`tls.key`).
    pub key: Option<PathBuf>,
    pub insecure_skip_verify: Option<bool>,
}

impl RegistryConfig {
    pub fn new(name: &str) -> RegistryConfig {
        RegistryConfig { name: name.to_string(), ..Default::default() }
    }

    /// `name` fetched through `proxy` (in front of `upstream`), with the upstream's
    /// credentials and CA.
    pub fn via_proxy(name: &str, proxy: &Proxy, upstream: &Upstream) -> RegistryConfig {
        Self::direct(name, upstream).endpoint(&proxy.url())
    }

    /// `name` fetched straight from `upstream`, with its credentials, CA and (for
    /// an mTLS upstream) client certificate.
    pub fn direct(name: &str, upstream: &Upstream) -> RegistryConfig {
        let mut r = Self::new(name).endpoint(&upstream.url());
        if let Some((u, p)) = upstream.credentials() {
            r = r.auth(u, p);
        }
        if let Some(ca) = upstream.ca_pem() {
            r = r.ca(&ca);
        }
        if let Some((cert, key)) = upstream.client_identity() {
            r = r.client_cert(&cert, &key);
        }
        r
    }

    pub fn endpoint(mut self, url: &str) -> Self {
        self.endpoint = Some(url.to_string());
        self
    }

    /// Several endpoints tried in order; replaces `endpoint`.
    pub fn endpoints(mut self, urls: &[&str]) -> Self {
        self.endpoint = None;
        self.endpoints = urls.iter().map(|u| u.to_string()).collect();
        self
    }

    pub fn scheme(mut self, scheme: &str) -> Self {
        self.scheme = Some(scheme.to_string());
        self
    }

    pub fn auth(mut self, user: &str, password: &str) -> Self {
        self.auth = Some((user.to_string(), password.to_string()));
        self
    }

    pub fn ca(mut self, ca: &Path) -> Self {
        self.ca = Some(ca.to_path_buf());
        self
    }

    /// `tls.cert` and `tls.key`: the client certificate to present.
    pub fn client_cert(mut self, cert: &Path, key: &Path) -> Self {
        self.cert = Some(cert.to_path_buf());
        self.key = Some(key.to_path_buf());
        self
    }

    /// No `tls.cert`/`tls.key`.
    pub fn without_client_cert(mut self) -> Self {
        self.cert = None;
        self.key = None;
        self
    }

    /// No `tls.ca`.
    pub fn without_ca(mut self) -> Self {
        self.ca = None;
        self
    }

    pub fn insecure_skip_verify(mut self, skip: bool) -> Self {
        self.insecure_skip_verify = Some(skip);
        self
    }

    fn yaml(&self) -> String {
        let mut y = format!("  - name: {}\n", q(&self.name));
        if let Some(e) = &self.endpoint {
            y.push_str(&format!("    endpoint: {}\n", q(e)));
        }
        if !self.endpoints.is_empty() {
            y.push_str("    endpoints:\n");
            for e in &self.endpoints {
                y.push_str(&format!("      - {}\n", q(e)));
            }
        }
        if let Some(s) = &self.scheme {
            y.push_str(&format!("    scheme: {}\n", q(s)));
        }
        if let Some((u, p)) = &self.auth {
            y.push_str(&format!("    auth:\n      user: {}\n      password: {}\n", q(u), q(p)));
        }
        if self.ca.is_some()
            || self.cert.is_some()
            || self.key.is_some()
            || self.insecure_skip_verify.is_some()
        {
            y.push_str("    tls:\n");
            for (key, path) in [("ca", &self.ca), ("cert", &self.cert), ("key", &self.key)] {
                if let Some(p) = path {
                    y.push_str(&format!("      {key}: {}\n", q(&p.display().to_string())));
                }
            }
            if let Some(skip) = self.insecure_skip_verify {
                y.push_str(&format!("      insecureSkipVerify: {skip}\n"));
            }
        }
        y
    }
}

/// A YAML double-quoted scalar (JSON string syntax is valid YAML).
fn q(s: &str) -> String {
    serde_json::to_string(s).expect("serialising a string")
}

/// Builds the mirror's configuration and starts it.
#[derive(Debug, Clone, Default)]
pub struct MirrorBuilder {
    registries: Vec<RegistryConfig>,
    default_ns: Option<String>,
    extra: Vec<String>,
}

impl MirrorBuilder {
    pub fn registry(mut self, r: RegistryConfig) -> Self {
        self.registries.push(r);
        self
    }

    pub fn default_ns(mut self, ns: &str) -> Self {
        self.default_ns = Some(ns.to_string());
        self
    }

    /// Appends raw top-level YAML (e.g. `"logLevel: debug"`).
    pub fn extra_yaml(mut self, yaml: &str) -> Self {
        self.extra.push(yaml.to_string());
        self
    }

    fn yaml(&self, cache: &Path, port: u16) -> String {
        let mut y =
            format!("imagePath: {}\nhost: \"127.0.0.1\"\nport: {port}\n", q(&cache.display().to_string()));
        if let Some(ns) = &self.default_ns {
            y.push_str(&format!("defaultNs: {}\n", q(ns)));
        }
        if self.registries.is_empty() {
            y.push_str("registries: []\n");
        } else {
            y.push_str("registries:\n");
            for r in &self.registries {
                y.push_str(&r.yaml());
            }
        }
        for e in &self.extra {
            y.push_str(e.trim_end());
            y.push('\n');
        }
        y
    }

    /// Starts the mirror on a free port with a fresh cache directory.
    pub fn start(self) -> Mirror {
        let dir = super::tempdir("mirror");
        let cache = dir.path().join("cache");
        let mut m = Mirror {
            config: dir.path().join("config.yaml"),
            log: dir.path().join("mirror.log"),
            cache,
            port: 0,
            child: None,
            builder: self,
            _dir: dir,
        };
        m.start_on_fresh_port();
        m
    }
}

/// The running server under test. Killed when dropped; if the test is failing, the
/// tail of its log is printed first.
pub struct Mirror {
    config: PathBuf,
    log: PathBuf,
    cache: PathBuf,
    port: u16,
    child: Option<Child>,
    builder: MirrorBuilder,
    _dir: tempfile::TempDir,
}

impl Mirror {
    pub fn builder() -> MirrorBuilder {
        MirrorBuilder::default()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT/v2/<rest>`.
    pub fn v2(&self, rest: &str) -> String {
        format!("{}/v2/{rest}", self.url())
    }

    /// `127.0.0.1:PORT`, as an image reference's registry part.
    pub fn host_port(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cache directory (`imagePath`).
    pub fn cache_dir(&self) -> &Path {
        &self.cache
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The configuration file's text.
    pub fn config_text(&self) -> String {
        std::fs::read_to_string(&self.config).unwrap_or_default()
    }

    /// Everything the mirror has logged (all runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A position in the log, for [`Mirror::log_since`].
    pub fn log_mark(&self) -> usize {
        std::fs::metadata(&self.log).map(|m| m.len() as usize).unwrap_or(0)
    }

    /// What the mirror logged after `mark`.
    pub fn log_since(&self, mark: usize) -> String {
        let log = std::fs::read(&self.log).unwrap_or_default();
        String::from_utf8_lossy(log.get(mark..).unwrap_or_default()).into_owned()
    }

    /// Waits up to `timeout` for the log to contain `needle` (access lines are written
    /// when a response body ends, a moment after the client has read it).
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        super::wait_until(timeout, || self.log().contains(needle))
    }

    /// Waits up to `timeout` for a log line with the field `key=value` (bare or
    /// quoted: `outcome=joined` or `outcome="joined"`).
    pub fn wait_for_log_field(&self, key: &str, value: &str, timeout: Duration) -> bool {
        let bare = format!("{key}={value}");
        let quoted = format!("{key}=\"{value}\"");
        super::wait_until(timeout, || {
            let log = self.log();
            log.lines().any(|l| l.split_whitespace().any(|w| w == bare || w == quoted))
        })
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    fn start_on_fresh_port(&mut self) {
        // A bind-and-release port can be taken by a parallel test first; retry then.
        for attempt in 1..=5 {
            self.port = free_port();
            match self.spawn_and_wait() {
                Ok(()) => return,
                Err(why) if attempt < 5 && self.log_tail(20).contains("in use") => {
                    eprintln!("mirror: port {} taken ({why}), retrying", self.port);
                }
                // The log tail follows: Drop prints it while panicking.
                Err(why) => panic!("{why} (mirror config and log below)"),
            }
        }
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        std::fs::write(&self.config, self.builder.yaml(&self.cache, self.port))
            .expect("writing the mirror config");
        let mut cmd = Command::new(binary());
        cmd.arg("serve").arg("--config-file").arg(&self.config).env("RUST_BACKTRACE", "1");
        let mut child = spawn_logged(&mut cmd, &self.log);
        let ping = self.v2("");
        let mut last = String::new();
        let ready = super::wait_until(START_TIMEOUT, || {
            if let Ok(Some(_)) = child.try_wait() {
                return true;
            }
            match http::try_request("GET", &ping, &[]) {
                Ok(r) if r.status == 200 => true,
                Ok(r) => {
                    last = format!("status {}", r.status);
                    false
                }
                Err(e) => {
                    last = e;
                    false
                }
            }
        });
        match child.try_wait() {
            Ok(Some(status)) => Err(format!("the mirror exited ({status}) before answering GET {ping}")),
            _ if !ready => {
                kill_and_reap(&mut child);
                Err(format!(
                    "the mirror did not answer GET {ping} with 200 within {START_TIMEOUT:?} (last: {last})"
                ))
            }
            _ => {
                self.child = Some(child);
                Ok(())
            }
        }
    }

    /// Stops (SIGTERM, then SIGKILL after 10 s) and starts again with the same cache
    /// directory, configuration and port.
    /// Changes the configuration used from the next (re)start on.
    pub fn reconfigure(&mut self, change: impl FnOnce(MirrorBuilder) -> MirrorBuilder) {
        self.builder = change(std::mem::take(&mut self.builder));
    }

    pub fn restart(&mut self) {
        self.stop();
        if let Err(why) = self.spawn_and_wait() {
            panic!("restarting the mirror: {why} (mirror config and log below)");
        }
    }

    /// Like [`Mirror::restart`], on a new free port.
    pub fn restart_on_new_port(&mut self) {
        self.stop();
        self.start_on_fresh_port();
    }

    /// Starts the mirror again after [`Mirror::kill9`] or [`Mirror::stop`].
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "start_again: the mirror is running");
        if let Err(why) = self.spawn_and_wait() {
            panic!("starting the mirror again: {why} (mirror config and log below)");
        }
    }

    /// SIGKILL, no chance to clean up (a crash).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_and_reap(&mut c);
        }
    }

    /// SIGTERM and wait (10 s, then SIGKILL). Returns the exit status, None if it had
    /// to be killed or was not running.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut c = self.child.take()?;
        sigterm(&c);
        wait_or_kill(&mut c, Duration::from_secs(10))
    }
}

impl Explain for Mirror {
    fn explain(&self) -> String {
        format!(
            "---- mirror {} ({}) config {} ----\n{}\n---- mirror log tail: {} ----\n{}\n",
            self.url(),
            self.child.as_ref().map(super::process_state).unwrap_or_else(|| "not running".to_string()),
            self.config.display(),
            self.config_text().trim_end(),
            self.log.display(),
            tail(&self.log, 60)
        )
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.explain());
        }
        self.kill9();
    }
}
