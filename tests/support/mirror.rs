//! The server under test: the real `ociregistry` binary, started as
//! `ociregistry serve --config-file <tmp>/config.yaml` with a temporary cache
//! directory (`imagePath`) and a free port, its stdout and stderr in a log file.
//!
//! Optionally HTTPS on the data port (`serverTlsConfig`, with client certificates),
//! Basic auth for pulls (`pullAuth`), and health and metrics ports: the readiness
//! probe (`GET /v2/` → 200) then uses the test CA, the client certificate and the
//! credentials. A mirror whose start is expected to fail is
//! [`MirrorBuilder::start_expecting_failure`].

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::Duration;

use base64::Engine as _;

use super::pki::{ClientFiles, TlsFiles};
use super::proxy::Proxy;
use super::upstream::Upstream;
use super::{Explain, free_port, http, kill_and_reap, logs, sigterm, spawn_logged, tail, wait_or_kill};

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
    /// `auth.tokenHosts`: hosts (`host:port`) other than the registry's own that
    /// may receive its credentials as a Bearer token realm.
    pub token_hosts: Vec<String>,
    /// YAML lines appended to the entry as they are (indented for a list item's keys).
    pub raw: String,
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
        // The token server runs on a port of its own: the mirror sends the
        // credentials there only when told to (auth.tokenHosts).
        if let Some(t) = upstream.token_server() {
            r.token_hosts.push(format!("127.0.0.1:{}", t.port()));
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

    /// `auth.tokenHosts`: token realms on these hosts (`host:port`) may get the credentials.
    pub fn token_hosts(mut self, hosts: &[&str]) -> Self {
        self.token_hosts = hosts.iter().map(|h| h.to_string()).collect();
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

    /// Appends `yaml` (keys indented by 4 spaces) to the entry.
    pub fn raw(mut self, yaml: &str) -> Self {
        self.raw.push_str(yaml);
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
        if self.auth.is_some() || !self.token_hosts.is_empty() {
            y.push_str("    auth:\n");
        }
        if let Some((u, p)) = &self.auth {
            y.push_str(&format!("      user: {}\n      password: {}\n", q(u), q(p)));
        }
        if !self.token_hosts.is_empty() {
            let hosts: Vec<String> = self.token_hosts.iter().map(|h| q(h)).collect();
            y.push_str(&format!("      tokenHosts: [{}]\n", hosts.join(", ")));
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
        y.push_str(&self.raw);
        y
    }
}

/// A YAML double-quoted scalar (JSON string syntax is valid YAML).
fn q(s: &str) -> String {
    serde_json::to_string(s).expect("serialising a string")
}

/// `serverTlsConfig`: HTTPS on the data port, and how the harness talks to it.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// `cert`: the server certificate chain (PEM).
    pub cert: PathBuf,
    /// `key`: its private key (PEM).
    pub key: PathBuf,
    /// `ca`: the CA for client certificates.
    pub ca: Option<PathBuf>,
    /// `clientAuth` (`none` | `verify`), if written.
    pub client_auth: Option<String>,
    /// The CA the harness trusts to verify the mirror (not part of the config).
    pub trust: PathBuf,
    /// The client certificate the harness presents (not part of the config).
    pub identity: Option<(PathBuf, PathBuf)>,
}

impl ServerTls {
    /// The server certificate of `tls`, no client certificates; the harness trusts `tls.ca`.
    pub fn new(tls: &TlsFiles) -> ServerTls {
        ServerTls {
            cert: tls.cert.clone(),
            key: tls.key.clone(),
            ca: None,
            client_auth: None,
            trust: tls.ca.clone(),
            identity: None,
        }
    }

    /// `clientAuth: verify` with `ca: <tls.ca>`; the harness presents `client`.
    pub fn verify_clients(mut self, tls: &TlsFiles, client: &ClientFiles) -> ServerTls {
        self.ca = Some(tls.ca.clone());
        self.client_auth = Some("verify".to_string());
        self.identity = Some((client.cert.clone(), client.key.clone()));
        self
    }

    fn yaml(&self) -> String {
        let mut y = "serverTlsConfig:\n".to_string();
        y.push_str(&format!("  cert: {}\n", q(&self.cert.display().to_string())));
        y.push_str(&format!("  key: {}\n", q(&self.key.display().to_string())));
        if let Some(ca) = &self.ca {
            y.push_str(&format!("  ca: {}\n", q(&ca.display().to_string())));
        }
        if let Some(a) = &self.client_auth {
            y.push_str(&format!("  clientAuth: {}\n", q(a)));
        }
        y
    }
}

/// `pullAuth`: Basic credentials required on the data port.
#[derive(Debug, Clone)]
pub struct PullAuth {
    /// `htpasswd`: the bcrypt htpasswd file.
    pub htpasswd: PathBuf,
    /// Credentials the readiness probe sends.
    pub user: String,
    pub password: String,
}

impl PullAuth {
    /// `Authorization: Basic …` for these credentials.
    pub fn header(&self) -> String {
        basic_auth(&self.user, &self.password)
    }
}

/// The value of an `Authorization: Basic` header.
pub fn basic_auth(user: &str, password: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
}

/// Builds the mirror's configuration and starts it.
#[derive(Debug, Clone, Default)]
pub struct MirrorBuilder {
    registries: Vec<RegistryConfig>,
    default_ns: Option<String>,
    extra: Vec<String>,
    tls: Option<ServerTls>,
    pull_auth: Option<PullAuth>,
    health: bool,
    metrics: bool,
    log_format: Option<String>,
    args: Vec<String>,
    image_path: Option<PathBuf>,
    /// Environment variables set on the server process.
    env: Vec<(String, String)>,
    /// RLIMIT_NOFILE (soft and hard) of the server process.
    nofile: Option<u64>,
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

    /// `serverTlsConfig`: HTTPS on the data port.
    pub fn server_tls(mut self, tls: ServerTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// `pullAuth.htpasswd`; the probe sends `user`/`password`.
    pub fn pull_auth(mut self, htpasswd: &Path, user: &str, password: &str) -> Self {
        self.pull_auth = Some(PullAuth {
            htpasswd: htpasswd.to_path_buf(),
            user: user.to_string(),
            password: password.to_string(),
        });
        self
    }

    /// `health: <free port>` (see [`Mirror::health_url`]).
    pub fn health(mut self) -> Self {
        self.health = true;
        self
    }

    /// `metrics: <free port>` (see [`Mirror::metrics_url`]).
    pub fn metrics(mut self) -> Self {
        self.metrics = true;
        self
    }

    /// `logFormat: <format>` (`text` | `json`).
    pub fn log_format(mut self, format: &str) -> Self {
        self.log_format = Some(format.to_string());
        self
    }

    /// Extra command-line arguments after `serve --config-file …` (e.g. `--log-format json`).
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_string());
        self
    }

    /// Sets an environment variable on the server process (e.g. `HTTPS_PROXY`).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Runs the server with RLIMIT_NOFILE `n` (soft and hard): it can hold at most
    /// `n` file descriptors, sockets included.
    pub fn nofile_limit(mut self, n: u64) -> Self {
        self.nofile = Some(n);
        self
    }

    /// Uses an existing (say pre-filled) cache directory instead of a fresh one.
    pub fn image_path(mut self, dir: &Path) -> Self {
        self.image_path = Some(dir.to_path_buf());
        self
    }

    fn yaml(&self, cache: &Path, ports: Ports) -> String {
        let port = ports.data;
        let mut y =
            format!("imagePath: {}\nhost: \"127.0.0.1\"\nport: {port}\n", q(&cache.display().to_string()));
        if let Some(p) = ports.health {
            y.push_str(&format!("health: {p}\n"));
        }
        if let Some(p) = ports.metrics {
            y.push_str(&format!("metrics: {p}\n"));
        }
        if let Some(t) = &self.tls {
            y.push_str(&t.yaml());
        }
        if let Some(a) = &self.pull_auth {
            y.push_str(&format!("pullAuth:\n  htpasswd: {}\n", q(&a.htpasswd.display().to_string())));
        }
        if let Some(f) = &self.log_format {
            y.push_str(&format!("logFormat: {}\n", q(f)));
        }
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

    /// Writes this configuration to `path` with `cache` as `imagePath` (and a free
    /// port), for the cache commands (`load --config-file …`), which read the same
    /// file as `serve`.
    pub fn write_config(&self, path: &Path, cache: &Path) {
        let ports = Ports { data: free_port(), health: None, metrics: None };
        std::fs::write(path, self.yaml(cache, ports))
            .unwrap_or_else(|e| panic!("writing the configuration {}: {e}", path.display()));
    }

    /// Starts the mirror on a free port with a fresh cache directory.
    pub fn start(self) -> Mirror {
        let mut m = self.unstarted();
        m.start_on_fresh_port();
        m
    }

    /// Spawns the mirror on free ports and returns at once, without waiting for it
    /// to answer (for watching it start: [`Mirror::wait_ready`] waits).
    pub fn spawn(self) -> Mirror {
        let mut m = self.unstarted();
        m.pick_ports();
        let child = m.spawn_child();
        m.child = Some(child);
        m
    }

    /// Runs `serve` with this configuration expecting start-up to FAIL: waits up to
    /// 20 s for the process to exit (killing it after that) and reports how it ended.
    pub fn start_expecting_failure(self) -> FailedStart {
        let mut m = self.unstarted();
        m.pick_ports();
        let mut child = m.spawn_child();
        let mut answered = None;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Ok(Some(status)) = child.try_wait() {
                break Some(status);
            }
            if std::time::Instant::now() >= deadline {
                kill_and_reap(&mut child);
                break None;
            }
            // Anything answering plain HTTP on the data port is a silent fallback:
            // no need to wait for the rest of the 20 s.
            if answered.is_none()
                && let Ok(r) = http::Request::get(&format!("http://127.0.0.1:{}/v2/", m.port)).try_send()
            {
                answered = Some(r.status);
                if r.status == 200 {
                    kill_and_reap(&mut child);
                    break None;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        FailedStart {
            code: status.and_then(|s| s.code()),
            exited: status.is_some(),
            plain_http_status: answered,
            output: m.log_without_harness_lines(),
            config: m.config_text(),
        }
    }

    fn unstarted(self) -> Mirror {
        let dir = super::tempdir("mirror");
        let cache = self.image_path.clone().unwrap_or_else(|| dir.path().join("cache"));
        Mirror {
            config: dir.path().join("config.yaml"),
            log: dir.path().join("mirror.log"),
            cache,
            port: 0,
            health_port: None,
            metrics_port: None,
            child: None,
            builder: self,
            _dir: dir,
        }
    }
}

/// The mirror's ports for one start.
#[derive(Debug, Clone, Copy)]
struct Ports {
    data: u16,
    health: Option<u16>,
    metrics: Option<u16>,
}

/// How a start that was expected to fail ended.
#[derive(Debug, Clone)]
pub struct FailedStart {
    /// The exit code (None: killed by a signal, or still running after 20 s).
    pub code: Option<i32>,
    /// Whether it exited by itself within 20 s (false: killed after 20 s, or at once
    /// when it answered plain HTTP with 200).
    pub exited: bool,
    /// The status a plain-HTTP `GET /v2/` on the data port got while it ran, if any.
    pub plain_http_status: Option<u16>,
    /// Its stdout and stderr.
    pub output: String,
    /// The configuration it was given.
    pub config: String,
}

/// The running server under test. Killed when dropped; if the test is failing, the
/// tail of its log is printed first.
pub struct Mirror {
    config: PathBuf,
    log: PathBuf,
    cache: PathBuf,
    port: u16,
    health_port: Option<u16>,
    metrics_port: Option<u16>,
    child: Option<Child>,
    builder: MirrorBuilder,
    _dir: tempfile::TempDir,
}

impl Mirror {
    pub fn builder() -> MirrorBuilder {
        MirrorBuilder::default()
    }

    /// `http://127.0.0.1:PORT` (`https://` with `serverTlsConfig`).
    pub fn url(&self) -> String {
        let scheme = if self.builder.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The server TLS settings, if the data port is HTTPS.
    pub fn server_tls(&self) -> Option<&ServerTls> {
        self.builder.tls.as_ref()
    }

    /// The pull credentials, if `pullAuth` is configured.
    pub fn pull_auth(&self) -> Option<&PullAuth> {
        self.builder.pull_auth.as_ref()
    }

    /// `http://127.0.0.1:HEALTH` (panics unless built with [`MirrorBuilder::health`]).
    pub fn health_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.health_port.expect("the mirror has no health port configured"))
    }

    /// The health port (panics unless built with [`MirrorBuilder::health`]).
    pub fn health_port(&self) -> u16 {
        self.health_port.expect("the mirror has no health port configured")
    }

    /// `http://127.0.0.1:METRICS/metrics` (panics unless built with [`MirrorBuilder::metrics`]).
    pub fn metrics_url(&self) -> String {
        format!(
            "http://127.0.0.1:{}/metrics",
            self.metrics_port.expect("the mirror has no metrics port configured")
        )
    }

    /// `GET /metrics` as text; panics unless 200.
    #[track_caller]
    pub fn metrics_text(&self) -> String {
        let url = self.metrics_url();
        let r = http::Request::get(&url)
            .try_send()
            .unwrap_or_else(|e| panic!("GET {url}: {e}\n{}", self.explain()));
        assert_eq!(r.status, 200, "GET {url}: {}\n{}", r.text(), self.explain());
        r.text()
    }

    /// A request to the data port (`path` starts with `/`), over TLS with the test CA
    /// and client certificate when the mirror is HTTPS; no credentials are added.
    pub fn request(&self, method: &str, path: &str) -> http::Request {
        let r = http::Request::new(method, &format!("{}{path}", self.url()));
        match &self.builder.tls {
            None => r,
            Some(ServerTls { trust, identity: None, .. }) => r.ca(trust),
            Some(ServerTls { trust, identity: Some((cert, key)), .. }) => r.ca(trust).identity(cert, key),
        }
    }

    /// [`Mirror::request`] with the `pullAuth` credentials, if configured.
    pub fn authed_request(&self, method: &str, path: &str) -> http::Request {
        match &self.builder.pull_auth {
            None => self.request(method, path),
            Some(a) => self.request(method, path).header("authorization", &a.header()),
        }
    }

    /// The server process's pid (panics if not running).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the mirror is not running").id()
    }

    /// Sends a signal (`libc::SIGHUP`, …) to the server process.
    pub fn signal(&self, sig: libc::c_int) {
        let c = self.child.as_ref().expect("the mirror is not running");
        let pid = libc::pid_t::try_from(c.id()).expect("pid fits in pid_t");
        // SAFETY: kill(2) on our un-reaped child, whose pid cannot be recycled.
        unsafe {
            libc::kill(pid, sig);
        }
    }

    /// Waits up to `timeout` for the server to exit by itself and reaps it; None
    /// (after a SIGKILL) if it did not.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut c = self.child.take()?;
        wait_or_kill(&mut c, timeout)
    }

    /// The log without the harness's own "spawning" lines (only the server's output).
    pub fn log_without_harness_lines(&self) -> String {
        self.log().lines().filter(|l| !l.starts_with(HARNESS_LINE)).map(|l| format!("{l}\n")).collect()
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

    /// Waits up to `timeout` for what the mirror logs after `mark` (see
    /// [`Mirror::log_mark`]) to contain `needle`.
    pub fn wait_for_log_since(&self, mark: usize, needle: &str, timeout: Duration) -> bool {
        super::wait_until(timeout, || self.log_since(mark).contains(needle))
    }

    /// Waits up to `timeout` for a log line with the field `key=value` (bare or
    /// quoted: `outcome=joined` or `outcome="joined"`).
    pub fn wait_for_log_field(&self, key: &str, value: &str, timeout: Duration) -> bool {
        super::wait_until(timeout, || self.log().lines().any(|l| logs::has_field(l, key, value)))
    }

    /// The server's output as JSON objects (`logFormat: json`); panics at a line
    /// that is not one, or if there is none.
    #[track_caller]
    pub fn json_log(&self) -> Vec<serde_json::Value> {
        let lines = logs::json_lines(&self.log_without_harness_lines());
        assert!(!lines.is_empty(), "the mirror logged nothing\n{}", self.explain());
        lines
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    fn pick_ports(&mut self) {
        self.port = free_port();
        self.health_port = self.builder.health.then(free_port);
        self.metrics_port = self.builder.metrics.then(free_port);
    }

    fn ports(&self) -> Ports {
        Ports { data: self.port, health: self.health_port, metrics: self.metrics_port }
    }

    fn start_on_fresh_port(&mut self) {
        // A bind-and-release port can be taken by a parallel test first; retry then.
        for attempt in 1..=5 {
            self.pick_ports();
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

    /// Writes the config and spawns `serve` (not waiting for it).
    fn spawn_child(&mut self) -> Child {
        std::fs::write(&self.config, self.builder.yaml(&self.cache, self.ports()))
            .expect("writing the mirror config");
        let mut cmd = Command::new(binary());
        cmd.arg("serve")
            .arg("--config-file")
            .arg(&self.config)
            .args(&self.builder.args)
            .env("RUST_BACKTRACE", "1");
        for (k, v) in &self.builder.env {
            cmd.env(k, v);
        }
        if let Some(n) = self.builder.nofile {
            set_nofile_limit(&mut cmd, n);
        }
        spawn_logged(&mut cmd, &self.log)
    }

    /// Waits until a mirror started with [`MirrorBuilder::spawn`] answers `GET /v2/`
    /// with 200; panics (with its log) if it exits or does not within 30 s.
    pub fn wait_ready(&mut self) {
        let child = self.child.take().expect("wait_ready: the mirror is not running");
        if let Err(why) = self.wait_for_child(child) {
            panic!("{why} (mirror config and log below)");
        }
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let child = self.spawn_child();
        self.wait_for_child(child)
    }

    fn wait_for_child(&mut self, mut child: Child) -> Result<(), String> {
        let ping = self.v2("");
        let plain_ping = format!("http://127.0.0.1:{}/v2/", self.port);
        let mut last = String::new();
        let mut plain_http = false;
        let ready = super::wait_until(START_TIMEOUT, || {
            if let Ok(Some(_)) = child.try_wait() {
                return true;
            }
            match self.authed_request("GET", "/v2/").try_send() {
                Ok(r) if r.status == 200 => true,
                Ok(r) => {
                    last = format!("status {}", r.status);
                    false
                }
                Err(e) => {
                    last = e;
                    // An HTTPS mirror answering plain HTTP ignored serverTlsConfig: say so now.
                    plain_http = self.builder.tls.is_some()
                        && last.contains("TLS handshake")
                        && http::Request::get(&plain_ping).try_send().is_ok_and(|r| r.status == 200);
                    plain_http
                }
            }
        });
        match child.try_wait() {
            Ok(Some(status)) => Err(format!("the mirror exited ({status}) before answering GET {ping}")),
            _ if plain_http => {
                kill_and_reap(&mut child);
                Err(format!(
                    "serverTlsConfig is set but the mirror serves plain HTTP: GET {plain_ping} got 200 \
                     (TLS: {last})"
                ))
            }
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

/// Makes `cmd` run with RLIMIT_NOFILE `n` (soft and hard).
fn set_nofile_limit(cmd: &mut Command, n: u64) {
    use std::os::unix::process::CommandExt as _;
    let limit = libc::rlimit { rlim_cur: n as libc::rlim_t, rlim_max: n as libc::rlim_t };
    // SAFETY: setrlimit(2) is async-signal-safe and only touches the child's own
    // limits; `limit` is a plain value copied into the closure.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// How [`super::spawn_logged`] marks its own lines in a log.
pub const HARNESS_LINE: &str = "==== e2e harness:";

impl Explain for Mirror {
    fn explain(&self) -> String {
        format!(
            "---- mirror {}{}{} ({}) config {} ----\n{}\n---- mirror log tail: {} ----\n{}\n",
            self.url(),
            self.health_port.map(|p| format!(", health :{p}")).unwrap_or_default(),
            self.metrics_port.map(|p| format!(", metrics :{p}")).unwrap_or_default(),
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
