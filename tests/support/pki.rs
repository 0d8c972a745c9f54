//! Test certificates and keys, made with the `openssl` CLI.
//!
//! - a TLS chain: a self-signed CA and a server certificate for `IP:127.0.0.1` and
//!   `DNS:localhost` signed by it (what `docker-registry` serves in TLS mode);
//! - a client certificate signed by the same CA (what an mTLS upstream requires);
//! - a token signing pair: a self-signed RSA certificate whose key signs the Bearer
//!   tokens and which `docker-registry` trusts as its `rootcertbundle`.

use std::path::{Path, PathBuf};
use std::process::Command;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;

use super::{require_tool, run_ok};

/// A CA plus a server certificate signed by it, as PEM files.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The CA certificate (PEM): what clients trust.
    pub ca: PathBuf,
    /// The CA's private key (PEM), to sign more certificates.
    pub ca_key: PathBuf,
    /// The server certificate (PEM), SAN `IP:127.0.0.1, DNS:localhost`.
    pub cert: PathBuf,
    /// The server's private key (PEM, PKCS#8).
    pub key: PathBuf,
    /// A directory holding `ca.crt`, the layout skopeo's `--*-cert-dir` wants.
    pub cert_dir: PathBuf,
}

/// A self-signed RSA certificate and its key, for signing tokens.
#[derive(Debug, Clone)]
pub struct SigningFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn openssl() -> Command {
    Command::new(require_tool("openssl", "openssl"))
}

/// Creates `ca.pem`, `cert.pem`, `key.pem` and `certs/ca.crt` in `dir`.
pub fn tls_files(dir: &Path) -> TlsFiles {
    std::fs::create_dir_all(dir).expect("creating the pki directory");
    let ca_key = dir.join("ca.key");
    let ca = dir.join("ca.pem");
    let key = dir.join("key.pem");
    let cert = dir.join("cert.pem");
    let cert_dir = dir.join("certs");

    run_ok(
        openssl()
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .arg("ec_paramgen_curve:prime256v1")
            .args(["-nodes", "-days", "2", "-subj", "/CN=ociregistry e2e test CA"])
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
            .arg("-keyout")
            .arg(&ca_key)
            .arg("-out")
            .arg(&ca),
        &[],
    );
    sign_server_cert(dir, &ca, &ca_key, "cert.pem", "key.pem", 2);
    std::fs::create_dir_all(&cert_dir).expect("creating the cert dir");
    std::fs::copy(&ca, cert_dir.join("ca.crt")).expect("copying ca.crt into the cert dir");
    TlsFiles { ca, ca_key, cert, key, cert_dir }
}

/// Creates `<cert_name>` and `<key_name>` in `dir`: another server certificate for
/// `IP:127.0.0.1, DNS:localhost` signed by the CA of `tls`, with its own key and
/// `serial` (a rotation: same CA, different certificate).
pub fn server_cert(
    dir: &Path,
    tls: &TlsFiles,
    cert_name: &str,
    key_name: &str,
    serial: u32,
) -> (PathBuf, PathBuf) {
    sign_server_cert(dir, &tls.ca, &tls.ca_key, cert_name, key_name, serial)
}

fn sign_server_cert(
    dir: &Path,
    ca: &Path,
    ca_key: &Path,
    cert_name: &str,
    key_name: &str,
    serial: u32,
) -> (PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).expect("creating the pki directory");
    let key = dir.join(key_name);
    let cert = dir.join(cert_name);
    let csr = dir.join(format!("{cert_name}.csr"));
    let ext = dir.join(format!("{cert_name}.ext"));
    run_ok(
        openssl()
            .args(["req", "-new", "-newkey", "ec", "-pkeyopt"])
            .arg("ec_paramgen_curve:prime256v1")
            .args(["-nodes", "-subj", "/CN=localhost"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&csr),
        &[],
    );
    std::fs::write(
        &ext,
        "basicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth\n\
         subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .expect("writing the server certificate extensions");
    run_ok(
        openssl()
            .args(["x509", "-req", "-days", "2", "-set_serial", &serial.to_string()])
            .arg("-in")
            .arg(&csr)
            .arg("-CA")
            .arg(ca)
            .arg("-CAkey")
            .arg(ca_key)
            .arg("-extfile")
            .arg(&ext)
            .arg("-out")
            .arg(&cert),
        &[],
    );
    (cert, key)
}

/// A client certificate and its key (PEM), signed by a test CA.
#[derive(Debug, Clone)]
pub struct ClientFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Creates `client.pem` and `client.key` in `dir`: a client certificate
/// (`extendedKeyUsage=clientAuth`) signed by the CA of `tls`.
pub fn client_files(dir: &Path, tls: &TlsFiles) -> ClientFiles {
    std::fs::create_dir_all(dir).expect("creating the pki directory");
    let key = dir.join("client.key");
    let csr = dir.join("client.csr");
    let cert = dir.join("client.pem");
    let ext = dir.join("client.ext");
    run_ok(
        openssl()
            .args(["req", "-new", "-newkey", "ec", "-pkeyopt"])
            .arg("ec_paramgen_curve:prime256v1")
            .args(["-nodes", "-subj", "/CN=ociregistry e2e client"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&csr),
        &[],
    );
    std::fs::write(
        &ext,
        "basicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage=clientAuth\n",
    )
    .expect("writing the client certificate extensions");
    run_ok(
        openssl()
            .args(["x509", "-req", "-days", "2", "-set_serial", "3"])
            .arg("-in")
            .arg(&csr)
            .arg("-CA")
            .arg(&tls.ca)
            .arg("-CAkey")
            .arg(&tls.ca_key)
            .arg("-extfile")
            .arg(&ext)
            .arg("-out")
            .arg(&cert),
        &[],
    );
    ClientFiles { cert, key }
}

/// Creates `token.crt` and `token.key` (RSA 2048, self-signed) in `dir`.
pub fn signing_files(dir: &Path) -> SigningFiles {
    std::fs::create_dir_all(dir).expect("creating the pki directory");
    let cert = dir.join("token.crt");
    let key = dir.join("token.key");
    run_ok(
        openssl()
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"])
            .args(["-subj", "/CN=ociregistry e2e token signer"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert),
        &[],
    );
    SigningFiles { cert, key }
}

/// The DER bytes of the first certificate in a PEM file (to compare what a server presents).
pub fn leaf_der(pem: &Path) -> Vec<u8> {
    CertificateDer::pem_file_iter(pem)
        .unwrap_or_else(|e| panic!("reading {}: {e}", pem.display()))
        .next()
        .unwrap_or_else(|| panic!("no certificate in {}", pem.display()))
        .unwrap_or_else(|e| panic!("parsing {}: {e}", pem.display()))
        .as_ref()
        .to_vec()
}
