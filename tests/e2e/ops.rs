//! Operating the mirror: HTTPS and client certificates on the data port (with
//! certificates rotated on disk), bad TLS material stopping start-up, Prometheus
//! metrics, health and readiness, JSON logs, graceful SIGTERM, version and start-up
//! banner, Basic auth for pulls, and hostile connections (wrong protocol, idle).

use std::io::Write as _;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::support::containerd::Containerd;
use crate::support::image::{self, Format, ImageSpec};
use crate::support::mirror::{Mirror, ServerTls, basic_auth, binary};
use crate::support::pki::{self, TlsFiles, leaf_der};
use crate::support::proxy::Fault;
use crate::support::scenario::{NAME, REPO, Scenario, TAG, assert_same_image, raw_pull};
use crate::support::skopeo::Skopeo;
use crate::support::upstream::Upstream;
use crate::support::{Explain, http, logs, metrics, require_tool, rt, run, run_ok, tempdir, wait_until};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Panics unless the mirror's start-up banner reports the TLS mode `mode`.
#[track_caller]
fn assert_banner_tls(mirror: &Mirror, mode: &str) {
    let found = wait_until(Duration::from_secs(5), || {
        logs::has_field(&mirror.log_without_harness_lines(), "tls", mode)
    });
    assert!(found, "the start-up banner should say tls={mode}\n{}", mirror.explain());
}

/// What the mirror logs when it has swapped in a new server certificate (after
/// the swap), and at error level when the files on disk are unusable.
const CERT_RELOADED: &str = "reloaded the server certificate";
const CERT_KEPT: &str = "keeping the current server certificate";

/// A server certificate the mirror reads from "live" files, which the test
/// replaces the way a careful operator (or kubelet) does: write a temporary file in
/// the same directory, then rename it over.
struct LiveCert {
    dir: tempfile::TempDir,
    tls: TlsFiles,
    cert: PathBuf,
    key: PathBuf,
}

impl LiveCert {
    /// A test CA and certificate A, copied to the live files.
    fn new(name: &str) -> LiveCert {
        let dir = tempdir(name);
        let tls = pki::tls_files(&dir.path().join("pki"));
        let live = dir.path().join("live");
        std::fs::create_dir_all(&live).expect("creating the live cert dir");
        let (cert, key) = (live.join("tls.crt"), live.join("tls.key"));
        let l = LiveCert { dir, tls, cert, key };
        l.install(&l.tls.cert.clone(), &l.tls.key.clone());
        l
    }

    /// `serverTlsConfig` naming the live files.
    fn server_tls(&self) -> ServerTls {
        ServerTls { cert: self.cert.clone(), key: self.key.clone(), ..ServerTls::new(&self.tls) }
    }

    /// Another server certificate from the same CA: (cert, key).
    fn issue(&self, name: &str, serial: u32) -> (PathBuf, PathBuf) {
        let pki_dir = self.dir.path().join("pki");
        pki::server_cert(&pki_dir, &self.tls, &format!("{name}.pem"), &format!("{name}.key"), serial)
    }

    /// Rotates on disk: key first, then certificate (each an atomic rename).
    fn install(&self, cert: &Path, key: &Path) {
        replace_file(&read(key), &self.key, None);
        replace_file(&read(cert), &self.cert, None);
    }

    /// Like [`LiveCert::install`], but the new files keep the old files'
    /// modification times, so only SIGHUP can tell the mirror to look again.
    fn install_keeping_mtimes(&self, cert: &Path, key: &Path) {
        let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).expect("live file mtime");
        replace_file(&read(key), &self.key, Some(mtime(&self.key)));
        replace_file(&read(cert), &self.cert, Some(mtime(&self.cert)));
    }

    /// Replaces the live certificate with `bytes`.
    fn write_cert(&self, bytes: &[u8]) {
        replace_file(bytes, &self.cert, None);
    }

    /// The leaf certificate (DER) a new TLS connection to `mirror` is shown.
    fn presented(&self, mirror: &Mirror) -> Vec<u8> {
        http::tls_handshake(&mirror.host_port(), &self.tls.ca, None, &[b"http/1.1"])
            .unwrap_or_else(|e| panic!("TLS handshake: {e}\n{}", mirror.explain()))
            .leaf
    }
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Writes `bytes` to a temporary file next to `dst` (with the modification time
/// `mtime`, if given) and renames it over `dst`.
fn replace_file(bytes: &[u8], dst: &Path, mtime: Option<std::time::SystemTime>) {
    let tmp = dst.with_extension("tmp-new");
    let f = std::fs::File::create(&tmp).unwrap_or_else(|e| panic!("creating {}: {e}", tmp.display()));
    (&f).write_all(bytes).unwrap_or_else(|e| panic!("writing {}: {e}", tmp.display()));
    if let Some(t) = mtime {
        f.set_modified(t).unwrap_or_else(|e| panic!("setting the mtime of {}: {e}", tmp.display()));
    }
    drop(f);
    std::fs::rename(&tmp, dst).unwrap_or_else(|e| panic!("renaming onto {}: {e}", dst.display()));
}

/// Waits (up to 20 s: the mirror checks the files every few seconds) for the
/// mirror to log `line` after `mark`; panics if it does not.
#[track_caller]
fn wait_for_cert_line(mirror: &Mirror, mark: usize, line: &str, after: &str) {
    assert!(
        mirror.wait_for_log_since(mark, line, Duration::from_secs(20)),
        "{after}, the mirror never logged {line:?}\n{}",
        mirror.explain()
    );
}

/// A test CA and server certificate in a fresh directory (kept alive by the TempDir).
fn test_pki(name: &str) -> (tempfile::TempDir, TlsFiles) {
    let dir = tempdir(name);
    let tls = pki::tls_files(&dir.path().join("pki"));
    (dir, tls)
}

/// An htpasswd file (bcrypt) holding one user.
fn htpasswd_file(dir: &Path, user: &str, password: &str) -> PathBuf {
    let out =
        run_ok(Command::new(require_tool("htpasswd", "apache2-utils")).args(["-Bbn", user, password]), &[]);
    let path = dir.join("htpasswd");
    std::fs::write(&path, &out.stdout).expect("writing the htpasswd file");
    path
}

// ---------------------------------------------------------------------------
// HTTPS on the data port
// ---------------------------------------------------------------------------

#[test]
fn https_mirror_pulls_with_ctr_using_the_ca() {
    let (_pki_dir, tls) = test_pki("https-ctr");
    let s = Scenario::start(
        Upstream::plain(),
        &ImageSpec::multi_platform(901, &[3000, 300_000]),
        Format::Oci,
        |b, _, _| b.server_tls(ServerTls::new(&tls)),
    );
    assert!(s.mirror.url().starts_with("https://"));
    assert_banner_tls(&s.mirror, "on");

    let ctrd = Containerd::start(&s.mirror.url());
    // containerd trusts the test CA for the mirror (and nothing else can be reached).
    ctrd.mirror_with_ca(&s.mirror.url(), &tls.ca);
    let reference = format!("{NAME}/{REPO}:{TAG}");
    ctrd.pull(&reference, &s.context());
    let amd64 = s.image.info.manifest_for("linux/amd64").clone();
    ctrd.assert_unpacked(&reference, amd64.layers.len(), &s.context());
    assert_eq!(
        ctrd.image_digest(&reference, &s.context()),
        s.image.info.top.digest,
        "containerd's image should have the upstream's digest"
    );
    for layer in &amd64.layers {
        assert_eq!(
            s.proxy.count_ok("GET", &format!("/blobs/{}", layer.digest)),
            1,
            "layer {} should have come through the HTTPS mirror from the upstream once\n{}",
            layer.digest,
            s.proxy.explain()
        );
    }
}

#[test]
fn https_mirror_speaks_http2_and_http1_over_alpn() {
    let (_pki_dir, tls) = test_pki("https-alpn");
    let mirror = Mirror::builder().server_tls(ServerTls::new(&tls)).start();
    let both = http::tls_handshake(&mirror.host_port(), &tls.ca, None, &[b"h2", b"http/1.1"])
        .unwrap_or_else(|e| panic!("{e}\n{}", mirror.explain()));
    assert_eq!(
        both.alpn.as_deref(),
        Some(&b"h2"[..]),
        "offered h2 and http/1.1, the mirror should pick h2 (got {:?})",
        both.alpn.as_deref().map(String::from_utf8_lossy)
    );
    assert_eq!(both.leaf, leaf_der(&tls.cert), "the mirror should present the configured certificate");
    let h1 = http::tls_handshake(&mirror.host_port(), &tls.ca, None, &[b"http/1.1"])
        .unwrap_or_else(|e| panic!("{e}\n{}", mirror.explain()));
    assert_eq!(h1.alpn.as_deref(), Some(&b"http/1.1"[..]), "offered only http/1.1");

    let r = http::Request::get(&format!("{}/v2/", mirror.url()))
        .ca(&tls.ca)
        .http2()
        .try_send()
        .unwrap_or_else(|e| panic!("GET /v2/ over HTTP/2: {e}\n{}", mirror.explain()));
    assert_eq!(r.status, 200, "GET /v2/ over HTTP/2: {}", r.text());
    let r =
        mirror.request("GET", "/v2/").try_send().unwrap_or_else(|e| panic!("GET /v2/ over HTTP/1.1: {e}"));
    assert_eq!(r.status, 200, "GET /v2/ over HTTP/1.1: {}", r.text());
    assert_eq!(r.header("docker-distribution-api-version"), Some("registry/2.0"));
}

#[test]
fn client_auth_verify_refuses_without_certificate_and_accepts_with_one() {
    let dir = tempdir("mtls-server");
    let tls = pki::tls_files(&dir.path().join("pki"));
    let client = pki::client_files(&dir.path().join("client"), &tls);
    // A client certificate from another CA the mirror does not trust.
    let other = pki::tls_files(&dir.path().join("other-pki"));
    let stranger = pki::client_files(&dir.path().join("stranger"), &other);

    let s = Scenario::start(
        Upstream::plain(),
        &ImageSpec::single(902, &[3000, 200_000]),
        Format::Oci,
        |b, _, _| b.default_ns(NAME).server_tls(ServerTls::new(&tls).verify_clients(&tls, &client)),
    );
    assert_banner_tls(&s.mirror, "mtls");
    let ping = format!("{}/v2/", s.mirror.url());

    let none = http::Request::get(&ping).ca(&tls.ca).try_send();
    assert!(
        none.is_err(),
        "a client without a certificate must fail the TLS handshake, got status {:?}\n{}",
        none.map(|r| r.status),
        s.mirror.explain()
    );
    let wrong = http::Request::get(&ping).ca(&tls.ca).identity(&stranger.cert, &stranger.key).try_send();
    assert!(
        wrong.is_err(),
        "a client certificate from another CA must fail the TLS handshake, got status {:?}\n{}",
        wrong.map(|r| r.status),
        s.mirror.explain()
    );
    // The operator learns why, once for the burst (a line per 10 s at most).
    let refused = |log: &str| log.lines().filter(|l| l.contains("refused a client's certificate")).count();
    assert!(
        s.mirror.wait_for_log("refused a client's certificate", Duration::from_secs(5)),
        "a refused client certificate is logged with the reason\n{}",
        s.mirror.explain()
    );
    assert_eq!(refused(&s.mirror.log()), 1, "two refusals in a burst make one line\n{}", s.mirror.explain());
    let good =
        http::Request::get(&ping).ca(&tls.ca).identity(&client.cert, &client.key).try_send().unwrap_or_else(
            |e| panic!("GET /v2/ with a good client certificate: {e}\n{}", s.mirror.explain()),
        );
    assert_eq!(good.status, 200, "{}", good.text());
    assert_eq!(s.proxy.total(), 0, "refused clients must not cause upstream traffic");

    // skopeo finds ca.crt + client.cert + client.key in its cert dir.
    let cert_dir = s.out_dir("skopeo-certs");
    std::fs::create_dir_all(&cert_dir).expect("creating the skopeo cert dir");
    std::fs::copy(&tls.ca, cert_dir.join("ca.crt")).expect("copying ca.crt");
    std::fs::copy(&client.cert, cert_dir.join("client.cert")).expect("copying client.cert");
    std::fs::copy(&client.key, cert_dir.join("client.key")).expect("copying client.key");
    let src = format!("docker://{}/{REPO}:{TAG}", s.mirror.host_port());
    let got = Skopeo::new().context(&s.mirror).context(&s.proxy).copy_to_dir(
        &src,
        &["--src-cert-dir".to_string(), cert_dir.display().to_string()],
        &s.out_dir("pull"),
    );
    assert_same_image(&s.image.info, &got, &s.context());

    // The same pull without the client certificate fails.
    let ca_only = s.out_dir("skopeo-ca-only");
    std::fs::create_dir_all(&ca_only).expect("creating the skopeo cert dir");
    std::fs::copy(&tls.ca, ca_only.join("ca.crt")).expect("copying ca.crt");
    let out = Skopeo::new().try_run(&[
        "copy".to_string(),
        "--src-cert-dir".to_string(),
        ca_only.display().to_string(),
        src.clone(),
        format!("dir:{}", s.out_dir("refused").display()),
    ]);
    assert!(
        !out.status.success(),
        "skopeo without a client certificate should be refused by the mTLS mirror\n{}",
        s.mirror.explain()
    );
    // Still serving after the refusals.
    let again = http::Request::get(&ping)
        .ca(&tls.ca)
        .identity(&client.cert, &client.key)
        .try_send()
        .unwrap_or_else(|e| panic!("GET /v2/ after refused clients: {e}\n{}", s.mirror.explain()));
    assert_eq!(again.status, 200);
}

#[test]
fn certificate_rotation_is_picked_up_without_restart() {
    let live = LiveCert::new("rotation");
    let (b_cert, b_key) = live.issue("b", 1002);
    let (c_cert, c_key) = live.issue("c", 1003);
    let (a, b, c) = (leaf_der(&live.tls.cert), leaf_der(&b_cert), leaf_der(&c_cert));
    let mut mirror = Mirror::builder().server_tls(live.server_tls()).start();
    assert_eq!(live.presented(&mirror), a, "the mirror should present certificate A at first");

    // New files on disk: the mirror notices by itself and swaps, then says so.
    let mark = mirror.log_mark();
    let rotated = Instant::now();
    live.install(&b_cert, &b_key);
    wait_for_cert_line(&mirror, mark, CERT_RELOADED, "after cert+key B were written over the live files");
    eprintln!("certificate B reloaded {:?} after the files changed", rotated.elapsed());
    assert_eq!(
        live.presented(&mirror),
        b,
        "the mirror logged {CERT_RELOADED:?} but new TLS connections do not get certificate B (A: {})\n{}",
        live.presented(&mirror) == a,
        mirror.explain()
    );
    assert!(mirror.is_running(), "the mirror must not restart to rotate certificates");
    let r =
        mirror.request("GET", "/v2/").try_send().unwrap_or_else(|e| panic!("GET /v2/ after rotation: {e}"));
    assert_eq!(r.status, 200);

    // Files whose modification times do not change: only SIGHUP makes the mirror
    // read them again (and SIGHUP does not stop it).
    let mark = mirror.log_mark();
    live.install_keeping_mtimes(&c_cert, &c_key);
    mirror.signal(libc::SIGHUP);
    wait_for_cert_line(&mirror, mark, CERT_RELOADED, "after SIGHUP with cert+key C on disk");
    assert!(mirror.is_running(), "SIGHUP must not stop the mirror\n{}", mirror.explain());
    assert_eq!(
        live.presented(&mirror),
        c,
        "after SIGHUP the mirror logged {CERT_RELOADED:?} but does not present certificate C\n{}",
        mirror.explain()
    );
    let r = mirror.request("GET", "/v2/").try_send().unwrap_or_else(|e| panic!("GET /v2/ after SIGHUP: {e}"));
    assert_eq!(r.status, 200);
}

#[test]
fn broken_certificate_on_disk_keeps_the_last_good_one() {
    // Not spelled out in the contract, but the only safe behaviour: a half-written or
    // garbage certificate must neither stop the server nor drop TLS.
    let live = LiveCert::new("rotation-broken");
    let (b_cert, b_key) = live.issue("b", 1102);
    let (a, b) = (leaf_der(&live.tls.cert), leaf_der(&b_cert));
    let mut mirror = Mirror::builder().server_tls(live.server_tls()).start();

    let mark = mirror.log_mark();
    live.write_cert(b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n");
    mirror.signal(libc::SIGHUP);
    wait_for_cert_line(&mirror, mark, CERT_KEPT, "after a broken certificate was written and SIGHUP");
    let since = mirror.log_since(mark);
    let errors = logs::lines_at_level(&since, "ERROR");
    assert!(
        errors.iter().any(|l| l.contains(CERT_KEPT)),
        "{CERT_KEPT:?} should be logged at error level, got:\n{since}"
    );
    assert!(
        !since.contains(CERT_RELOADED),
        "a broken certificate was reported as reloaded:\n{since}\n{}",
        mirror.explain()
    );
    assert!(
        mirror.is_running(),
        "a broken certificate on disk must not stop the mirror\n{}",
        mirror.explain()
    );
    assert_eq!(
        live.presented(&mirror),
        a,
        "with a broken certificate on disk the mirror should keep serving the last good one"
    );

    let mark = mirror.log_mark();
    live.install(&b_cert, &b_key);
    wait_for_cert_line(&mirror, mark, CERT_RELOADED, "after the broken file was replaced by cert+key B");
    assert_eq!(
        live.presented(&mirror),
        b,
        "after the broken file is fixed, the new certificate should be presented\n{}",
        mirror.explain()
    );
}

#[test]
fn bad_tls_material_stops_startup_naming_the_key() {
    let (dir, tls) = test_pki("bad-tls");
    let client = pki::client_files(&dir.path().join("client"), &tls);
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "this is not PEM\n").expect("writing a garbage file");
    let missing = dir.path().join("no-such-dir").join("server.pem");
    let good = ServerTls::new(&tls);

    let cases: Vec<(&str, ServerTls, &[&str])> = vec![
        (
            "unreadable cert path",
            ServerTls { cert: missing.clone(), ..good.clone() },
            &["serverTlsConfig.cert"],
        ),
        (
            "cert that is not PEM",
            ServerTls { cert: garbage.clone(), ..good.clone() },
            &["serverTlsConfig.cert"],
        ),
        // A private key where the certificate should be: PEM, but no certificate in it.
        (
            "cert file holding a key",
            ServerTls { cert: tls.key.clone(), ..good.clone() },
            &["serverTlsConfig.cert"],
        ),
        ("unreadable key path", ServerTls { key: missing.clone(), ..good.clone() }, &["serverTlsConfig.key"]),
        ("key that is not PEM", ServerTls { key: garbage.clone(), ..good.clone() }, &["serverTlsConfig.key"]),
        (
            "clientAuth: verify with an unreadable ca",
            ServerTls { ca: Some(missing.clone()), ..good.clone().verify_clients(&tls, &client) },
            &["serverTlsConfig.ca"],
        ),
        (
            "clientAuth: verify with a ca that is not PEM",
            ServerTls { ca: Some(garbage.clone()), ..good.clone().verify_clients(&tls, &client) },
            &["serverTlsConfig.ca"],
        ),
        (
            "clientAuth: maybe",
            ServerTls { client_auth: Some("maybe".into()), ..good.clone() },
            // An enum error may be worded by the YAML layer: any mention of the key.
            &["clientAuth"],
        ),
    ];
    let mut failures = Vec::new();
    for (what, server_tls, keys) in cases {
        let f = Mirror::builder().server_tls(server_tls).start_expecting_failure();
        let problem = if !f.exited {
            Some(format!(
                "did not exit within 20 s (plain HTTP GET /v2/ on the data port got {:?}: a silent fallback?)",
                f.plain_http_status
            ))
        } else if f.code == Some(0) || f.code.is_none() {
            Some(format!("exit code {:?}, wanted a non-zero exit", f.code))
        } else if f.plain_http_status.is_some() {
            Some(format!("served plain HTTP ({:?}) before exiting", f.plain_http_status))
        } else if f.output.contains("panicked") {
            Some("panicked instead of reporting the error".to_string())
        } else if !keys.iter().any(|k| f.output.contains(k)) {
            Some(format!("the error does not name {}", keys.join(" or ")))
        } else {
            None
        };
        if let Some(p) = problem {
            failures
                .push(format!("{what}: {p}\n---- config ----\n{}---- output ----\n{}", f.config, f.output));
        }
    }
    assert!(failures.is_empty(), "{} case(s) wrong:\n\n{}", failures.len(), failures.join("\n\n"));
}

/// `clientAuth: verify` without `ca`: as the reference server documents, client
/// certificates are checked against the system trust store. The server starts
/// in mTLS mode (it used to refuse to start, a crash loop for users of the
/// reference's chart) and a client without a certificate is turned away.
#[test]
fn client_verification_without_a_ca_uses_the_system_store() {
    let dir = tempdir("mtls-system-store");
    let tls = pki::tls_files(&dir.path().join("pki"));
    let m = Mirror::builder()
        .server_tls(ServerTls { ca: None, client_auth: Some("verify".into()), ..ServerTls::new(&tls) })
        .spawn();
    let ready = wait_until(Duration::from_secs(20), || m.log().contains("ociregistry ready"));
    assert!(ready, "the server should start:\n{}", m.log());
    assert!(m.log().contains("tls=\"mtls\""), "client certificates are required:\n{}", m.log());
    let refused = http::Request::get(&format!("{}/v2/", m.url())).ca(&tls.ca).try_send();
    assert!(
        refused.is_err(),
        "a client without a certificate must fail the handshake: {:?}",
        refused.map(|r| r.status)
    );
}

// ---------------------------------------------------------------------------
// Metrics, health, readiness
// ---------------------------------------------------------------------------

#[test]
fn metrics_after_cold_and_warm_pull() {
    let s = Scenario::start(
        Upstream::plain(),
        &ImageSpec::multi_platform(905, &[3000, 150_000]),
        Format::Oci,
        |b, _, _| b.default_ns(NAME).metrics(),
    );
    let before = s.mirror.metrics_text();
    assert!(
        before.contains("# TYPE"),
        "/metrics should be Prometheus text format (with # TYPE lines):\n{before}"
    );

    raw_pull(&s.mirror, REPO, TAG, ""); // cold: everything from the upstream
    raw_pull(&s.mirror, REPO, TAG, ""); // warm: everything from the cache
    let info = &s.image.info;
    let text = s.mirror.metrics_text();
    let ctx = || format!("---- /metrics ----\n{text}\n{}", s.mirror.explain());
    let ns = [("ns", NAME)];

    assert_eq!(
        metrics::metric(&text, "ociregistry_upstream_pulls_by_ns_total", &ns),
        Some(1.0),
        "one cold pull (the tag's manifest fetched upstream)\n{}",
        ctx()
    );
    assert_eq!(
        metrics::metric(&text, "ociregistry_cached_pulls_by_ns_total", &ns),
        Some(1.0),
        "one warm pull (the tag's manifest served from cache)\n{}",
        ctx()
    );
    for name in [
        "ociregistry_manifest_pulls_total",
        "ociregistry_blob_pulls_total",
        "ociregistry_http_request_duration_seconds_bucket",
        "process_resident_memory_bytes",
        "process_open_fds",
    ] {
        assert!(metrics::present(&text, name), "{name} is missing\n{}", ctx());
    }
    for source in ["cache", "upstream"] {
        let v = metrics::metric(&text, "ociregistry_served_bytes_total", &[("source", source)]);
        assert!(
            v.is_some_and(|v| v > 0.0),
            "served_bytes_total{{source={source:?}}} should be > 0: {v:?}\n{}",
            ctx()
        );
    }
    assert_eq!(
        metrics::metric(&text, "ociregistry_cached_manifest_count", &[]),
        Some(info.manifest_digests().len() as f64),
        "cached manifests: the index and its {} platform manifests\n{}",
        info.manifests.len(),
        ctx()
    );
    assert_eq!(
        metrics::metric(&text, "ociregistry_cached_blob_count", &[]),
        Some(info.blobs().len() as f64),
        "cached blobs: every config and layer\n{}",
        ctx()
    );
    let on_disk = metrics::metric(&text, "ociregistry_blob_bytes_on_disk_total", &[]);
    assert!(
        on_disk.is_some_and(|v| v > 0.0),
        "blob_bytes_on_disk_total should be > 0: {on_disk:?}\n{}",
        ctx()
    );
    assert_eq!(
        metrics::metric(&text, "ociregistry_upstream_up", &[("registry", NAME)]),
        Some(1.0),
        "the upstream answered: up\n{}",
        ctx()
    );
    for forbidden in [REPO, "sha256:"] {
        assert!(
            !text.contains(forbidden),
            "no label may carry a repository name or digest (unbounded cardinality): found {forbidden:?}\n{}",
            ctx()
        );
    }

    // The upstream goes away and a request that needs it fails: up drops to 0.
    s.proxy.set_fault(Fault::Refuse);
    let r = http::Request::get(&s.mirror.v2(&format!("{REPO}/manifests/not-cached-yet")))
        .accept_manifests()
        .send();
    assert_ne!(r.status, 200, "an uncached tag cannot be served with the upstream down");
    let mut last = String::new();
    let down = wait_until(Duration::from_secs(5), || {
        last = s.mirror.metrics_text();
        metrics::metric(&last, "ociregistry_upstream_up", &[("registry", NAME)]) == Some(0.0)
    });
    assert!(
        down,
        "after a failed upstream request ociregistry_upstream_up{{registry=\"{NAME}\"}} should be 0\n\
         ---- /metrics ----\n{last}\n{}",
        s.mirror.explain()
    );
    assert!(!last.contains(REPO) && !last.contains("sha256:"), "labels after the failure:\n{last}");
}

/// How much [`slow_to_load_cache`] writes. Measured on a 2-core machine with the
/// debug build: written in about 1 s, loaded in 2 to 2.5 s (4.5 s while the rest
/// of the suite runs), so `/ready` is seen saying 503 hundreds of times. Most of
/// the load is the big manifests (their references are parsed and linked, which
/// is quicker in a release build); the tags cost the same syscalls in any build.
const BIG_MANIFESTS: usize = 100;
const LAYERS_PER_MANIFEST: usize = 2000;
const EXTRA_TAGS: usize = 20_000;

/// A cache directory that takes the mirror seconds to load but the test well under
/// one to write, in the layout of `src/cache/store/layout.rs`:
/// - [`BIG_MANIFESTS`] image manifests of [`LAYERS_PER_MANIFEST`] layers each, one
///   per repository `up.test/team/app<N>` with the tag `latest`: each is read,
///   verified against its digest and parsed at load, and its references linked to
///   its repository;
/// - [`EXTRA_TAGS`] tags `up.test/team/app/_tags/t<N>` of one small manifest, hard
///   links of a few tag files (one syscall each to write; loading opens, reads and
///   stats each one).
///
/// Returns how many manifests and tags it holds.
fn slow_to_load_cache(dir: &Path) -> (usize, usize) {
    let manifest = |config: &str, layers: &str| {
        format!(
            "{{\"schemaVersion\":2,\"mediaType\":\"{}\",\"config\":{{\"mediaType\":\"{}\",\"digest\":\"{config}\",\
             \"size\":2}},\"layers\":[{layers}]}}",
            image::OCI_MANIFEST,
            image::OCI_CONFIG
        )
    };
    let write_manifest = |bytes: &[u8]| -> String {
        let digest = crate::support::digest_of(bytes);
        let hex = crate::support::hex_of(&digest);
        let mdir = dir.join("manifests").join("sha256").join(&hex[..2]);
        std::fs::create_dir_all(&mdir).expect("creating a manifests dir");
        let mut file = format!("{}\n", image::OCI_MANIFEST).into_bytes();
        file.extend_from_slice(bytes);
        std::fs::write(mdir.join(hex), file).expect("writing a manifest");
        digest
    };
    let tags_dir = |repo: &str| {
        let d = dir.join("tags").join(NAME).join(repo).join("_tags");
        std::fs::create_dir_all(&d).expect("creating a tags dir");
        d
    };
    let fake_digest = |kind: u8, i: usize| format!("sha256:{kind:02x}{i:062x}");

    let layers: Vec<String> = (0..LAYERS_PER_MANIFEST)
        .map(|j| {
            format!(
                "{{\"mediaType\":\"{}\",\"digest\":\"{}\",\"size\":{}}}",
                image::OCI_LAYER_GZIP,
                fake_digest(1, j),
                1000 + j
            )
        })
        .collect();
    let layers = layers.join(",");
    for i in 0..BIG_MANIFESTS {
        let digest = write_manifest(manifest(&fake_digest(2, i), &layers).as_bytes());
        std::fs::write(tags_dir(&format!("{REPO}{i}")).join("latest"), &digest).expect("writing a tag");
    }

    let small = write_manifest(manifest(&fake_digest(3, 0), "").as_bytes());
    let tags = tags_dir(REPO);
    // A file may have only so many links (65000 on ext4): a new one every 10000.
    let mut source = PathBuf::new();
    for i in 0..EXTRA_TAGS {
        let tag = tags.join(format!("t{i}"));
        if i % 10_000 == 0 {
            std::fs::write(&tag, &small).expect("writing a tag");
            source = tag;
        } else {
            std::fs::hard_link(&source, &tag).expect("linking a tag file");
        }
    }
    (BIG_MANIFESTS + 1, BIG_MANIFESTS + EXTRA_TAGS)
}

/// The mirror serves as soon as its port is up, even while a large cache's
/// index is still being read: `/ready` is 200 at once (only ever after the
/// data port accepts), a cached manifest is served from the cache before the
/// "cache index loaded" line, which then counts what was written.
#[test]
fn serves_a_large_cache_before_its_index_is_loaded() {
    let dir = tempdir("ready-cache");
    let cache = dir.path().join("cache");
    let made = Instant::now();
    let (manifests, tags) = slow_to_load_cache(&cache);
    eprintln!("wrote {manifests} manifests and {tags} tags in {:?}", made.elapsed());

    // No registries: nothing can come from an upstream, only from the cache.
    let mut mirror = Mirror::builder().health().image_path(&cache).spawn();
    let ready_url = format!("{}/ready", mirror.health_url());
    let health_url = format!("{}/health", mirror.health_url());
    let data = mirror.host_port();
    let data_up = || TcpStream::connect_timeout(&data.parse().expect("addr"), Duration::from_secs(2)).is_ok();
    const LOADED: &str = "cache index loaded";

    let spawned = Instant::now();
    let mut first_health = None;
    let ready_at = loop {
        assert!(mirror.is_running(), "the mirror exited while starting\n{}", mirror.explain());
        assert!(
            spawned.elapsed() < Duration::from_secs(30),
            "/ready never answered 200\n{}",
            mirror.explain()
        );
        if let Ok(r) = http::Request::get(&ready_url).try_send() {
            let port_up = data_up();
            first_health.get_or_insert_with(|| http::Request::get(&health_url).try_send().map(|r| r.status));
            assert!(r.status == 200 || r.status == 503, "/ready answered {} (only 200 or 503)", r.status);
            assert!(
                r.status != 200 || port_up,
                "/ready said 200 before the data port accepted\n{}",
                mirror.explain()
            );
            if r.status == 200 {
                break spawned.elapsed();
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    // The last repository written, by tag: read from the store on its first lookup.
    let last = format!("{REPO}{}/manifests/latest?ns={NAME}", manifests - 2);
    let r = http::Request::get(&mirror.v2(&last)).header("Accept", image::OCI_MANIFEST).send();
    let served_at = spawned.elapsed();
    let loaded_before = mirror.log().contains(LOADED);
    assert_eq!(r.status, 200, "a cached manifest while the index loads: {}\n{}", r.text(), mirror.explain());
    assert!(mirror.wait_for_log(LOADED, Duration::from_secs(60)), "no '{LOADED}' line\n{}", mirror.explain());
    let log = mirror.log();
    let line = log.lines().find(|l| l.contains(LOADED)).unwrap_or_default();
    eprintln!(
        "/ready 200 at {ready_at:?}; cached manifest served at {served_at:?}, {} the index was loaded ({line})",
        if loaded_before { "after" } else { "before" }
    );
    assert!(
        !loaded_before,
        "the cached manifest was served only after the whole index had loaded (this cache takes seconds \
         to read): start-up should not wait for it\n{line}"
    );
    for (key, want) in [("manifests", manifests), ("tags", tags), ("skipped", 0)] {
        assert_eq!(logs::field_value(line, key), Some(want.to_string()), "the {key}= of: {line}");
    }
    assert_eq!(
        first_health,
        Some(Ok(200)),
        "/health should answer 200 as soon as the health port is up (alive, even if not ready)"
    );
    assert_eq!(http::Request::get(&health_url).send().status, 200);
    // Bound to `host` (127.0.0.1), not to every address: 127.0.0.2 reaches only a wildcard bind.
    assert!(
        TcpStream::connect_timeout(
            &format!("127.0.0.2:{}", mirror.health_port()).parse().expect("addr"),
            Duration::from_secs(2)
        )
        .is_err(),
        "the health port should be bound to host (127.0.0.1) only, but 127.0.0.2 reaches it"
    );
    mirror.wait_ready();
}

/// Resident memory of a process, in bytes.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("reading /proc/PID/status");
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS in /proc/PID/status");
    kib * 1024
}

/// Manifest bodies stay on disk: with 40 manifests of 2 MiB cached (80 MiB)
/// and each one served, the mirror holds about what it holds with an empty
/// cache (plus `manifestCacheBytes`), not the bodies.
#[test]
fn memory_does_not_grow_with_cached_manifest_bodies() {
    const COUNT: usize = 40;
    const PAD: usize = 2 << 20;
    let dir = tempdir("big-manifests");
    let full = dir.path().join("full");
    let mut digests = Vec::new();
    for i in 0..COUNT {
        let body = format!(
            "{{\"schemaVersion\":2,\"mediaType\":\"{}\",\"config\":{{\"mediaType\":\"{}\",\"digest\":\"sha256:{:064x}\",\
             \"size\":2}},\"layers\":[],\"annotations\":{{\"pad\":\"{}\"}}}}",
            image::OCI_MANIFEST,
            image::OCI_CONFIG,
            i,
            "x".repeat(PAD)
        );
        let digest = crate::support::digest_of(body.as_bytes());
        let hex = crate::support::hex_of(&digest);
        let mdir = full.join("manifests/sha256").join(&hex[..2]);
        std::fs::create_dir_all(&mdir).expect("creating a manifests dir");
        std::fs::write(mdir.join(hex), format!("{}\n{body}", image::OCI_MANIFEST))
            .expect("writing a manifest");
        let tags = full.join("tags").join(NAME).join(format!("{REPO}{i}")).join("_tags");
        std::fs::create_dir_all(&tags).expect("creating a tags dir");
        std::fs::write(tags.join("big"), &digest).expect("writing a tag");
        digests.push(digest);
    }
    let measure = |cache: &Path, serve_all: bool| {
        let mirror = Mirror::builder().image_path(cache).start();
        assert!(mirror.wait_for_log("cache index loaded", Duration::from_secs(60)), "{}", mirror.explain());
        if serve_all {
            for (i, digest) in digests.iter().enumerate() {
                let r = http::Request::get(&mirror.v2(&format!("{REPO}{i}/manifests/big?ns={NAME}")))
                    .header("Accept", image::OCI_MANIFEST)
                    .send();
                assert_eq!(r.status, 200, "{}\n{}", r.text(), mirror.explain());
                assert_eq!(r.header("docker-content-digest"), Some(digest.as_str()));
                assert!(r.body.len() > PAD, "the whole body");
            }
        }
        rss_bytes(mirror.pid())
    };
    let empty = measure(&dir.path().join("empty"), false);
    let loaded = measure(&full, true);
    eprintln!("RSS: empty cache {} MiB, {COUNT} × 2 MiB manifests served {} MiB", empty >> 20, loaded >> 20);
    assert!(
        loaded < empty + (16 << 20),
        "RSS grew from {} MiB (empty cache) to {} MiB with {} MiB of manifests cached and served: bodies are \
         held in memory beyond manifestCacheBytes (4 MiB)",
        empty >> 20,
        loaded >> 20,
        (COUNT * PAD) >> 20
    );
}

// ---------------------------------------------------------------------------
// Logs, signals, version
// ---------------------------------------------------------------------------

#[test]
fn json_logs_are_json() {
    let mut s = Scenario::start(
        Upstream::plain(),
        &ImageSpec::single(907, &[2000, 50_000]),
        Format::Oci,
        |b, _, _| b.default_ns(NAME).log_format("json"),
    );
    raw_pull(&s.mirror, REPO, TAG, "");
    let missing = s.mirror.v2(&format!("{REPO}/manifests/sha256:{}", "0".repeat(64)));
    assert_eq!(http::Request::get(&missing).send().status, 404);
    let tag_path = format!("/v2/{REPO}/manifests/{TAG}");
    s.mirror.wait_for_log(&tag_path, Duration::from_secs(5));
    let status = s.mirror.stop();
    assert!(status.is_some_and(|s| s.success()), "SIGTERM should end the mirror with 0: {status:?}");

    let lines = s.mirror.json_log();
    let access = logs::json_access_lines(&lines);
    assert!(
        access.iter().any(|(m, p, st, _)| m == "GET" && p == &tag_path && st == "200"),
        "no JSON access line for GET {tag_path} with status 200 (fields method, path, status, outcome); \
         access lines: {access:?}"
    );
    assert!(
        access.iter().any(|(m, _, st, _)| m == "GET" && st == "404"),
        "no JSON access line with status 404: {access:?}"
    );

    // The flag does the same.
    let mut m = Mirror::builder().arg("--log-format").arg("json").start();
    let r = m.request("GET", "/v2/").try_send().expect("GET /v2/");
    assert_eq!(r.status, 200);
    m.wait_for_log("/v2/", Duration::from_secs(5));
    m.stop();
    let lines = m.json_log();
    assert!(
        logs::json_access_lines(&lines).iter().any(|(_, p, st, _)| p == "/v2/" && st == "200"),
        "--log-format json: no JSON access line for GET /v2/"
    );
}

#[test]
fn every_request_has_one_access_line_under_load_and_at_shutdown() {
    // Busy workers batch their lines and hand them over when they run out of
    // work or stop: none may be lost or doubled, even when SIGTERM follows the
    // last response at once.
    let mut m = Mirror::builder().start();
    let clients: Vec<_> = (0..16)
        .map(|t| {
            let base = m.url();
            std::thread::spawn(move || {
                for i in 0..40 {
                    let url = format!("{base}/v2/line-{t}-{i}");
                    let r = http::Request::get(&url).send();
                    assert_eq!(r.status, 404, "GET {url}");
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("a client thread panicked");
    }
    let status = m.stop();
    assert!(status.is_some_and(|s| s.success()), "SIGTERM should end the mirror with 0: {status:?}");
    let log = m.log();
    let mut missing = Vec::new();
    for t in 0..16 {
        for i in 0..40 {
            let field = format!(" path=/v2/line-{t}-{i} ");
            match log.matches(&field).count() {
                1 => {}
                n => missing.push(format!("/v2/line-{t}-{i}: {n} lines")),
            }
        }
    }
    assert!(
        missing.is_empty(),
        "640 requests, one access line each; not so for {} of them: {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
}

#[test]
fn sigterm_finishes_in_flight_download_and_exits_zero() {
    // 8 MiB at 2 MiB/s: the download takes about 4 s.
    let mut s = Scenario::plain_default_ns(&ImageSpec::single(908, &[8 << 20]));
    let layer = s.image.info.largest_layer();
    s.proxy.set_throttle(Some(2 << 20));
    let url = s.mirror.v2(&format!("{REPO}/blobs/{}", layer.digest));
    let progress = Arc::new(AtomicU64::new(0));
    let p = progress.clone();
    let download = rt().spawn(async move { http::Request::get(&url).stream(Some(p)).await });

    assert!(
        wait_until(Duration::from_secs(30), || progress.load(Ordering::SeqCst) >= 256 << 10),
        "the download did not start\n{}",
        s.mirror.explain()
    );
    let port = s.mirror.port();
    s.mirror.signal(libc::SIGTERM);
    let signalled = Instant::now();

    // New connections are refused while the download is still running.
    let refused = wait_until(Duration::from_secs(3), || {
        TcpStream::connect(("127.0.0.1", port))
            .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
    });
    let at_refusal = progress.load(Ordering::SeqCst);
    assert!(refused, "3 s after SIGTERM the data port still accepts new connections\n{}", s.mirror.explain());
    assert!(
        at_refusal < layer.size,
        "the download finished before new connections were refused: the test proves nothing \
         (make the blob larger or the throttle slower)"
    );
    eprintln!(
        "new connections refused {:?} after SIGTERM, {at_refusal} of {} bytes sent",
        signalled.elapsed(),
        layer.size
    );

    let got = rt()
        .block_on(download)
        .expect("download task")
        .unwrap_or_else(|e| panic!("the in-flight download failed: {e}\n{}", s.mirror.explain()));
    assert_eq!(got.status, 200);
    assert_eq!(got.error, None, "the in-flight body broke off after SIGTERM\n{}", s.mirror.explain());
    assert_eq!(got.bytes, layer.size, "the in-flight body is incomplete");
    assert_eq!(got.digest, layer.digest, "the in-flight body has wrong bytes");

    let status = s.mirror.wait_exit(Duration::from_secs(30));
    assert!(
        status.is_some_and(|st| st.code() == Some(0)),
        "after finishing the download the mirror should exit 0, got {status:?}\n{}",
        s.mirror.explain()
    );
}

#[test]
fn version_prints_commit_and_build_date() {
    let out = run(Command::new(binary()).arg("version"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "`ociregistry version` failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("ociregistry"), "{stdout}");
    assert!(stdout.contains(env!("CARGO_PKG_VERSION")), "version missing: {stdout}");
    let words: Vec<&str> =
        stdout.split(|c: char| c.is_whitespace() || matches!(c, ',' | '(' | ')' | '=' | ':')).collect();
    let commit = words
        .iter()
        .position(|w| w.eq_ignore_ascii_case("commit"))
        .and_then(|i| words[i + 1..].iter().find(|w| !w.is_empty()))
        .unwrap_or_else(|| panic!("no `commit <hash>` in {stdout:?}"));
    assert!(
        commit.len() >= 7 && commit.chars().all(|c| c.is_ascii_hexdigit()),
        "the commit should be a (short) git hash, got {commit:?} in {stdout:?}"
    );
    let has_date = stdout.as_bytes().windows(10).any(|w| {
        w.iter().enumerate().all(|(i, b)| if i == 4 || i == 7 { *b == b'-' } else { b.is_ascii_digit() })
    });
    assert!(has_date && stdout.contains("built"), "no `built YYYY-MM-DD` in {stdout:?}");
}

#[test]
fn startup_banner_says_who_and_how() {
    let mirror = Mirror::builder().start();
    assert!(
        wait_until(Duration::from_secs(5), || mirror.log_without_harness_lines().contains("load_ms=")),
        "no `load_ms=` in the start-up banner\n{}",
        mirror.explain()
    );
    let log = mirror.log_without_harness_lines();
    let ctx = || mirror.explain();
    assert!(log.contains("ociregistry"), "name missing\n{}", ctx());
    assert!(log.contains(env!("CARGO_PKG_VERSION")), "version missing\n{}", ctx());
    assert!(log.contains(&mirror.port().to_string()), "port missing\n{}", ctx());
    // SAFETY: getuid/getgid cannot fail and touch no memory.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    assert!(
        (logs::has_field(&log, "uid", &uid.to_string()) && logs::has_field(&log, "gid", &gid.to_string()))
            || (log.contains("uid") && logs::has_uid_gid_token(&log, &format!("{uid}:{gid}"))),
        "uid={uid} gid={gid} (or uid:gid {uid}:{gid}) missing\n{}",
        ctx()
    );
    assert!(
        logs::has_field(&log, "pid", &mirror.pid().to_string()),
        "pid={} missing\n{}",
        mirror.pid(),
        ctx()
    );
    assert!(logs::has_field(&log, "tls", "off"), "tls=off missing\n{}", ctx());
    let config = mirror.config_path().display().to_string();
    assert!(
        log.contains("serve") && log.contains(&config),
        "the command line (serve --config-file {config}) missing\n{}",
        ctx()
    );
    for key in ["startup_ms", "manifests", "blobs", "load_ms"] {
        assert!(logs::field_value(&log, key).is_some(), "{key}= missing\n{}", ctx());
    }
    assert_eq!(logs::field_value(&log, "manifests").as_deref(), Some("0"), "an empty cache has manifests=0");
    assert_eq!(logs::field_value(&log, "blobs").as_deref(), Some("0"), "an empty cache has blobs=0");
}

// ---------------------------------------------------------------------------
// Pull authentication
// ---------------------------------------------------------------------------

#[test]
fn pull_auth_htpasswd() {
    const USER: &str = "puller";
    const PASSWORD: &str = "s3cret-pass";
    let dir = tempdir("pull-auth");
    let htpasswd = htpasswd_file(dir.path(), USER, PASSWORD);
    let s = Scenario::start(
        Upstream::plain(),
        &ImageSpec::single(910, &[2000, 80_000]),
        Format::Oci,
        |b, _, _| b.default_ns(NAME).pull_auth(&htpasswd, USER, PASSWORD),
    );
    let layer = s.image.info.largest_layer();
    let paths = [
        "/v2/".to_string(),
        format!("/v2/{REPO}/manifests/{TAG}"),
        format!("/v2/{REPO}/blobs/{}", layer.digest),
    ];
    let wrong = basic_auth(USER, "wrong");
    let stranger = basic_auth("nobody", PASSWORD);
    for path in &paths {
        for (what, headers) in [
            ("without credentials", vec![]),
            ("with a wrong password", vec![("authorization", wrong.as_str())]),
            ("with an unknown user", vec![("authorization", stranger.as_str())]),
        ] {
            for method in ["GET", "HEAD"] {
                let r = s
                    .mirror
                    .request(method, path)
                    .headers(&headers)
                    .try_send()
                    .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
                assert_eq!(r.status, 401, "{method} {path} {what}: {}\n{}", r.text(), s.mirror.explain());
                let challenge = r.header("www-authenticate").unwrap_or_default();
                assert!(
                    challenge.starts_with("Basic") && challenge.contains("realm=\"ociregistry\""),
                    "{method} {path} {what}: WWW-Authenticate should be Basic realm=\"ociregistry\", got {challenge:?}"
                );
            }
        }
    }
    assert_eq!(
        s.proxy.total(),
        0,
        "unauthenticated requests must not reach the upstream\n{}",
        s.proxy.explain()
    );

    let r = s.mirror.authed_request("GET", "/v2/").try_send().expect("GET /v2/ with credentials");
    assert_eq!(r.status, 200, "{}", r.text());
    let src = format!("docker://{}/{REPO}:{TAG}", s.mirror.host_port());
    let got = Skopeo::new().context(&s.mirror).context(&s.proxy).copy_to_dir(
        &src,
        &["--src-tls-verify=false".to_string(), "--src-creds".to_string(), format!("{USER}:{PASSWORD}")],
        &s.out_dir("pull"),
    );
    assert_same_image(&s.image.info, &got, &s.context());
    let out = Skopeo::new().try_run(&[
        "copy".to_string(),
        "--src-tls-verify=false".to_string(),
        src,
        format!("dir:{}", s.out_dir("anonymous").display()),
    ]);
    assert!(!out.status.success(), "skopeo without credentials should be refused");
}

// ---------------------------------------------------------------------------
// Wrong protocols and idle connections on the data port
// ---------------------------------------------------------------------------

#[test]
fn plain_http_to_tls_port_is_not_served() {
    let (_pki_dir, tls) = test_pki("plain-to-tls");
    let tls_mirror = Mirror::builder().server_tls(ServerTls::new(&tls)).start();
    let request =
        format!("GET /v2/ HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", tls_mirror.host_port());
    let (answer, closed) =
        http::raw_exchange(&tls_mirror.host_port(), request.as_bytes(), Duration::from_secs(10));
    let head = String::from_utf8_lossy(&answer[..answer.len().min(200)]).into_owned();
    eprintln!("plain HTTP to the TLS port: closed={closed}, answer starts {head:?}");
    assert!(
        !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200"),
        "a plain-HTTP request to the TLS port must not be served: {head:?}\n{}",
        tls_mirror.explain()
    );
    let r =
        tls_mirror.request("GET", "/v2/").try_send().unwrap_or_else(|e| panic!("TLS after plain HTTP: {e}"));
    assert_eq!(r.status, 200);

    // And the other way round: TLS to a plain port fails the handshake, the server stays up.
    let plain = Mirror::builder().start();
    let hs = http::tls_handshake(&plain.host_port(), &tls.ca, None, &[b"http/1.1"]);
    assert!(hs.is_err(), "a TLS handshake with the plain-HTTP port cannot succeed");
    let r = plain
        .request("GET", "/v2/")
        .try_send()
        .unwrap_or_else(|e| panic!("GET /v2/ after a TLS client: {e}"));
    assert_eq!(r.status, 200);
}

/// Opens `n` connections to `host_port` that each send `prefix` and then nothing.
fn hold_connections(host_port: &str, n: usize, prefix: &[u8]) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let mut c =
                TcpStream::connect(host_port).unwrap_or_else(|e| panic!("connecting to {host_port}: {e}"));
            if !prefix.is_empty() {
                c.write_all(prefix).expect("sending a partial request");
            }
            c
        })
        .collect()
}

/// Panics unless `count` sequential `GET /v2/` each succeed within 5 s.
fn assert_served_promptly(what: &str, count: usize, mirror: &Mirror) {
    for i in 0..count {
        let r = mirror
            .request("GET", "/v2/")
            .timeout(Duration::from_secs(5))
            .try_send()
            .unwrap_or_else(|e| panic!("{what}: request {i} failed (blocked by idle connections?): {e}"));
        assert_eq!(r.status, 200, "{what}: request {i}");
    }
}

#[test]
fn idle_connections_do_not_block_others() {
    let (_pki_dir, tls) = test_pki("idle");
    let mut plain = Mirror::builder().start();
    let mut tls_mirror = Mirror::builder().server_tls(ServerTls::new(&tls)).start();

    // Plain port: silent connections, and request heads that never end.
    let mut held = hold_connections(&plain.host_port(), 30, b"");
    held.extend(hold_connections(&plain.host_port(), 10, b"GET /v2/ HTTP/1.1\r\nHost: x\r\n"));
    // TLS port: silent connections, and a ClientHello record header with no body (the
    // handshake never finishes: it must not hold up the accept loop).
    held.extend(hold_connections(&tls_mirror.host_port(), 30, b""));
    held.extend(hold_connections(&tls_mirror.host_port(), 10, &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]));
    // A plain-HTTP head to the TLS port that never ends either.
    held.extend(hold_connections(&tls_mirror.host_port(), 5, b"GET /v2/ HTTP/1.1\r\n"));

    assert_served_promptly("plain port with idle connections open", 10, &plain);
    assert_served_promptly("TLS port with idle connections open", 10, &tls_mirror);
    // Concurrent clients too.
    let results: Vec<Result<http::Response, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let m = if i % 2 == 0 { &plain } else { &tls_mirror };
                scope.spawn(move || m.request("GET", "/v2/").timeout(Duration::from_secs(10)).try_send())
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("client thread")).collect()
    });
    for r in results {
        assert_eq!(r.expect("concurrent request with idle connections open").status, 200);
    }
    assert!(plain.is_running() && tls_mirror.is_running(), "both mirrors must survive idle connections");
    drop(held);
}

#[test]
fn a_failed_start_is_captured() {
    // A config error the server already reports: the fixture sees the exit and stderr.
    let f = Mirror::builder().extra_yaml("notAKnownKey: 1").start_expecting_failure();
    assert!(f.exited && f.code.is_some_and(|c| c != 0), "{f:?}");
    assert!(f.output.contains("notAKnownKey"), "{f:?}");
    assert_eq!(f.plain_http_status, None);
}
