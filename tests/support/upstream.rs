//! The upstream: the real `docker-registry serve config.yml` (CNCF distribution 2.8)
//! on a free 127.0.0.1 port, in one of four modes: plain HTTP, TLS, htpasswd Basic
//! auth, or Bearer tokens from the [`TokenServer`] fixture. TLS can also require
//! client certificates signed by the test CA (mTLS, `http.tls.clientcas`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use super::pki::{self, ClientFiles, TlsFiles};
use super::token::TokenServer;
use super::{Explain, free_port, http, kill_and_reap, require_tool, run_ok, spawn_logged, tail};

/// User name the Basic and Bearer modes accept.
pub const USER: &str = "e2e-user";
/// Password the Basic and Bearer modes accept.
pub const PASSWORD: &str = "e2e-secret-pw";

/// How the upstream authenticates clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    Anonymous,
    /// `auth.htpasswd` with a bcrypt file holding [`USER`]/[`PASSWORD`].
    Basic,
    /// `auth.token`, tokens from a [`TokenServer`] that wants [`USER`]/[`PASSWORD`].
    Bearer,
}

/// Builds an [`Upstream`].
#[derive(Debug, Clone)]
pub struct UpstreamBuilder {
    tls: bool,
    client_certs: bool,
    auth: AuthMode,
}

impl UpstreamBuilder {
    pub fn tls(mut self, tls: bool) -> Self {
        self.tls = tls;
        self
    }

    /// Require a client certificate signed by the test CA (implies TLS).
    pub fn client_certs(mut self, required: bool) -> Self {
        self.client_certs = required;
        self.tls |= required;
        self
    }

    pub fn auth(mut self, auth: AuthMode) -> Self {
        self.auth = auth;
        self
    }

    pub fn start(self) -> Upstream {
        require_tool("docker-registry", "docker-registry");
        let dir = super::tempdir("upstream");
        let tls = self.tls.then(|| pki::tls_files(&dir.path().join("pki")));
        let client = self.client_certs.then(|| {
            let tls = tls.as_ref().expect("client certificates imply TLS");
            let client = pki::client_files(&dir.path().join("pki"), tls);
            // skopeo's cert dir convention: `*.cert` + `*.key` is a client identity.
            std::fs::copy(&client.cert, tls.cert_dir.join("client.cert"))
                .expect("copying client.cert into the cert dir");
            std::fs::copy(&client.key, tls.cert_dir.join("client.key"))
                .expect("copying client.key into the cert dir");
            client
        });
        let token = (self.auth == AuthMode::Bearer).then(|| {
            TokenServer::start(
                &dir.path().join("token"),
                "e2e-registry",
                "e2e-issuer",
                Some((USER.to_string(), PASSWORD.to_string())),
            )
        });
        if self.auth == AuthMode::Basic {
            let out = run_ok(
                Command::new(require_tool("htpasswd", "apache2-utils")).args(["-Bbn", USER, PASSWORD]),
                &[],
            );
            std::fs::write(dir.path().join("htpasswd"), &out.stdout).expect("writing the htpasswd file");
        }
        let mut up = Upstream {
            port: 0,
            child: None,
            log: dir.path().join("registry.log"),
            tls,
            client,
            token,
            auth: self.auth,
            dir,
        };
        // A port picked by bind-and-release can be taken by a parallel test before
        // the registry binds it; try a few.
        for _ in 0..5 {
            up.port = free_port();
            if up.try_start() {
                return up;
            }
        }
        // The log tail follows: Drop prints it while panicking.
        panic!("docker-registry did not start after 5 attempts (its log below)");
    }
}

/// A running `docker-registry`. Killed when dropped.
pub struct Upstream {
    port: u16,
    child: Option<Child>,
    log: PathBuf,
    tls: Option<TlsFiles>,
    /// The client certificate an mTLS upstream requires.
    client: Option<ClientFiles>,
    token: Option<TokenServer>,
    auth: AuthMode,
    dir: tempfile::TempDir,
}

impl Upstream {
    pub fn builder() -> UpstreamBuilder {
        UpstreamBuilder { tls: false, client_certs: false, auth: AuthMode::Anonymous }
    }

    /// Plain HTTP, anonymous.
    pub fn plain() -> Upstream {
        Self::builder().start()
    }

    /// HTTPS with a certificate from a test CA ([`Upstream::ca_pem`]), anonymous.
    pub fn tls() -> Upstream {
        Self::builder().tls(true).start()
    }

    /// HTTPS that requires a client certificate signed by the test CA
    /// ([`Upstream::client_identity`]), anonymous.
    pub fn mtls() -> Upstream {
        Self::builder().client_certs(true).start()
    }

    /// Plain HTTP, htpasswd Basic auth.
    pub fn basic() -> Upstream {
        Self::builder().auth(AuthMode::Basic).start()
    }

    /// Plain HTTP, Bearer tokens from a token server that requires Basic credentials.
    pub fn bearer() -> Upstream {
        Self::builder().auth(AuthMode::Bearer).start()
    }

    fn config_yaml(&self) -> String {
        let root = self.dir.path().join("data");
        let mut y = format!(
            "version: 0.1\n\
             log:\n  level: warn\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: e2e-not-secret\n",
            root = root.display(),
            port = self.port
        );
        if let Some(tls) = &self.tls {
            y.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                tls.cert.display(),
                tls.key.display()
            ));
            if self.client.is_some() {
                y.push_str(&format!("    clientcas:\n      - {}\n", tls.ca.display()));
            }
        }
        match self.auth {
            AuthMode::Anonymous => {}
            AuthMode::Basic => y.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: e2e-realm\n    path: {}\n",
                self.dir.path().join("htpasswd").display()
            )),
            AuthMode::Bearer => {
                let t = self.token.as_ref().expect("bearer mode has a token server");
                y.push_str(&format!(
                    "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                    t.realm(),
                    t.service(),
                    t.issuer(),
                    t.cert_path().display()
                ));
            }
        }
        y
    }

    /// Starts the registry on `self.port`; false if it exited before answering.
    fn try_start(&mut self) -> bool {
        let config = self.dir.path().join("config.yml");
        std::fs::write(&config, self.config_yaml()).expect("writing the registry config");
        let mut cmd = Command::new(require_tool("docker-registry", "docker-registry"));
        cmd.arg("serve").arg(&config);
        let mut child = spawn_logged(&mut cmd, &self.log);
        let ping = format!("{}/v2/", self.url());
        let ca = self.ca_pem();
        let identity = self.client_identity();
        let ready = super::wait_until(Duration::from_secs(20), || {
            if let Ok(Some(_)) = child.try_wait() {
                return true;
            }
            let mut req = http::Request::get(&ping);
            if let Some(ca) = &ca {
                req = req.ca(ca);
            }
            if let Some((cert, key)) = &identity {
                req = req.identity(cert, key);
            }
            let r = req.try_send();
            match r {
                Ok(r) => r.status == 200 || r.status == 401,
                Err(_) => false,
            }
        });
        match child.try_wait() {
            Ok(None) if ready => {
                self.child = Some(child);
                true
            }
            Ok(None) => {
                kill_and_reap(&mut child);
                panic!("docker-registry did not answer GET {ping} within 20 s (its log below)");
            }
            _ => false,
        }
    }

    /// `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.port)
    }

    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// `127.0.0.1:PORT`, the registry host as image references spell it.
    pub fn host_port(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn auth(&self) -> AuthMode {
        self.auth
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The TLS files (CA, server certificate and key) in TLS mode.
    pub fn tls_files(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    /// The CA certificate (PEM) clients must trust, in TLS mode.
    pub fn ca_pem(&self) -> Option<PathBuf> {
        self.tls.as_ref().map(|t| t.ca.clone())
    }

    /// Whether TLS clients must present a certificate signed by the test CA.
    pub fn requires_client_cert(&self) -> bool {
        self.client.is_some()
    }

    /// `(certificate, key)` PEM files of a client certificate the upstream accepts,
    /// in mTLS mode.
    pub fn client_identity(&self) -> Option<(PathBuf, PathBuf)> {
        self.client.as_ref().map(|c| (c.cert.clone(), c.key.clone()))
    }

    /// A directory holding `ca.crt` (and in mTLS mode `client.cert`/`client.key`),
    /// for skopeo's `--src-cert-dir`/`--dest-cert-dir`.
    pub fn cert_dir(&self) -> Option<&Path> {
        self.tls.as_ref().map(|t| t.cert_dir.as_path())
    }

    /// `(user, password)` in the Basic and Bearer modes.
    pub fn credentials(&self) -> Option<(&'static str, &'static str)> {
        match self.auth {
            AuthMode::Anonymous => None,
            AuthMode::Basic | AuthMode::Bearer => Some((USER, PASSWORD)),
        }
    }

    /// The token server, in Bearer mode.
    pub fn token_server(&self) -> Option<&TokenServer> {
        self.token.as_ref()
    }

    /// The registry's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills the registry now (the upstream "goes away"); the fixture stays valid.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_and_reap(&mut c);
        }
    }
}

impl Explain for Upstream {
    fn explain(&self) -> String {
        let mut s = format!(
            "---- docker-registry {} ({:?}{}, {}) log tail: {} ----\n{}\n",
            self.url(),
            self.auth,
            match (&self.tls, &self.client) {
                (Some(_), Some(_)) => ", TLS requiring client certificates",
                (Some(_), None) => ", TLS",
                _ => "",
            },
            self.child.as_ref().map(super::process_state).unwrap_or_else(|| "not running".to_string()),
            self.log.display(),
            tail(&self.log, 40)
        );
        if let Some(t) = &self.token {
            s.push_str(&t.explain());
        }
        s
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.explain());
        }
        self.kill();
    }
}
