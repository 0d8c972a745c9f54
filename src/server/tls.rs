//! Serving TLS: the rustls config for the data port, with a certificate that is
//! re-read from disk when its files change (or on SIGHUP), so certificates
//! rotate without a restart, and optional client-certificate verification.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use tracing::{error, info};

use super::ServerTls;
use crate::tls::{load_certs, load_key, provider};

/// How often the certificate files are checked for changes.
const RELOAD_CHECK: Duration = Duration::from_secs(2);

/// Hands every new connection the current certificate.
#[derive(Debug)]
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    current: ArcSwap<CertifiedKey>,
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl ReloadingCert {
    fn load(cert: &Path, key: &Path) -> Result<CertifiedKey> {
        let chain = load_certs(cert).context("serverTlsConfig.cert")?;
        let key = load_key(key).context("serverTlsConfig.key")?;
        let signing = provider()
            .key_provider
            .load_private_key(key)
            .context("serverTlsConfig.key: unsupported private key")?;
        let certified = CertifiedKey::new(chain, signing);
        certified.keys_match().context("serverTlsConfig: the key does not belong to the certificate")?;
        Ok(certified)
    }

    fn reload(&self) {
        match Self::load(&self.cert, &self.key) {
            Ok(c) => {
                self.current.store(Arc::new(c));
                info!(cert = %self.cert.display(), "reloaded the server certificate");
            }
            Err(e) => error!(error = format!("{e:#}"), "keeping the current server certificate"),
        }
    }

    /// Re-reads the files when their modification time changes, and on SIGHUP.
    pub fn watch(self: Arc<Self>) {
        tokio::spawn(async move {
            let mtimes = |c: &ReloadingCert| (mtime(&c.cert), mtime(&c.key));
            let mut seen = mtimes(&self);
            let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            loop {
                let hangup = async {
                    match hup.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = hangup => {
                        info!("SIGHUP: reloading the server certificate");
                        self.reload();
                        seen = mtimes(&self);
                    }
                    () = tokio::time::sleep(RELOAD_CHECK) => {
                        let now = mtimes(&self);
                        if now != seen {
                            seen = now;
                            self.reload();
                        }
                    }
                }
            }
        });
    }
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// The data port's TLS config and its certificate holder (to watch).
pub fn server_config(tls: &ServerTls) -> Result<(Arc<ServerConfig>, Arc<ReloadingCert>)> {
    let certified = ReloadingCert::load(&tls.cert, &tls.key)?;
    let cert = Arc::new(ReloadingCert {
        cert: tls.cert.clone(),
        key: tls.key.clone(),
        current: ArcSwap::from_pointee(certified),
    });
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("serverTlsConfig: TLS protocol versions")?;
    let builder = match (tls.verify_clients, &tls.client_ca) {
        (false, _) => builder.with_no_client_auth(),
        (true, ca) => {
            let mut roots = rustls::RootCertStore::empty();
            match ca {
                Some(ca) => {
                    for c in load_certs(ca).context("serverTlsConfig.ca")? {
                        roots.add(c).context("serverTlsConfig.ca: unusable CA certificate")?;
                    }
                }
                None => {
                    for c in rustls_native_certs::load_native_certs().certs {
                        // The system store may hold certificates rustls cannot use.
                        let _ = roots.add(c);
                    }
                    if roots.is_empty() {
                        anyhow::bail!(
                            "serverTlsConfig: clientAuth: verify without ca, and the system trust store is empty; give ca"
                        );
                    }
                }
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .context("serverTlsConfig.ca: building the client verifier")?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(cert.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((Arc::new(config), cert))
}

/// When a refused client certificate was last logged at `warn` (seconds
/// since 1970): one line per [`REFUSED_CERT_EVERY`] whatever the number of
/// clients, so a misconfigured fleet cannot flood the log.
static REFUSED_CERT_LOGGED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
const REFUSED_CERT_EVERY: u64 = 10;

/// A failed handshake. One the client's certificate failed (`clientAuth:
/// verify`) is the operator's business: why goes to the log at `warn`, a line
/// per 10 s at most. The rest (scanners, plain HTTP on the TLS port, a client
/// giving up) stays at `debug`.
pub(super) fn log_handshake_failure(peer: std::net::SocketAddr, e: &std::io::Error) {
    use std::sync::atomic::Ordering;
    let refused_cert = e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()).is_some_and(|r| {
        matches!(r, rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented)
    });
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let last = REFUSED_CERT_LOGGED.load(Ordering::Relaxed);
    if refused_cert
        && now.saturating_sub(last) >= REFUSED_CERT_EVERY
        && REFUSED_CERT_LOGGED.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    {
        tracing::warn!(%peer, error = %e, "refused a client's certificate (serverTlsConfig.clientAuth: verify): it must be an X.509 v3 certificate for client authentication, signed by serverTlsConfig.ca (or the system trust store); more refusals in the next 10 s are logged at debug");
    } else {
        tracing::debug!(%peer, error = %e, "TLS handshake failed");
    }
}
