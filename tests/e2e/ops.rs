//! Operating the mirror: HTTPS and client certificates on the data port (with
//! certificates rotated on disk), bad TLS material stopping start-up, Prometheus
//! metrics, health and readiness, JSON logs, graceful SIGTERM, version and start-up
//! banner, Basic auth for pulls, and hostile connections (wrong protocol, idle).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::support::containerd::Containerd;
use crate::support::image::{Format, ImageSpec};
use crate::support::mirror::{Mirror, ServerTls, basic_auth, binary};
use crate::support::pki::{self, TlsFiles, leaf_der};
use crate::support::proxy::Fault;
use crate::support::scenario::{NAME, REPO, Scenario, TAG, assert_same_image, raw_pull};
use crate::support::skopeo::Skopeo;
use crate::support::upstream::Upstream;
use crate::support::{Explain, http, require_tool, rt, run, run_ok, tempdir, wait_until};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Whether a text log contains the field `key=value` (bare or quoted).
fn has_field(text: &str, key: &str, value: &str) -> bool {
    let bare = format!("{key}={value}");
    let quoted = format!("{key}=\"{value}\"");
    text.split(|c: char| c.is_whitespace() || c == ',' || c == '{' || c == '}')
        .any(|w| w == bare || w == quoted)
}

/// The first value of the field `key=…` in a text log (quotes stripped).
fn field_value(text: &str, key: &str) -> Option<String> {
    let prefix = format!("{key}=");
    text.split(|c: char| c.is_whitespace() || c == ',')
        .find_map(|w| w.strip_prefix(&prefix))
        .map(|v| v.trim_matches('"').to_string())
}

/// Whether a whitespace-separated word is `uid:gid`, or a field whose value it is
/// (`user=0:0`, `"uid:gid"="0:0"`): not a substring of a timestamp.
fn has_uid_gid_token(text: &str, uid_gid: &str) -> bool {
    text.split(|c: char| c.is_whitespace() || c == ',')
        .map(|w| w.trim_matches(|c| matches!(c, '(' | ')' | '[' | ']' | '"')))
        .any(|w| w == uid_gid || w.rsplit('=').next().is_some_and(|v| v.trim_matches('"') == uid_gid))
}

/// Panics unless the mirror's start-up banner reports the TLS mode `mode`.
#[track_caller]
fn assert_banner_tls(mirror: &Mirror, mode: &str) {
    let found =
        wait_until(Duration::from_secs(5), || has_field(&mirror.log_without_harness_lines(), "tls", mode));
    assert!(found, "the start-up banner should say tls={mode}\n{}", mirror.explain());
}

/// Replaces `dst` with a copy of `src` the way a careful operator (or kubelet)
/// does: write a temporary file in the same directory, then rename over.
fn replace_file(src: &Path, dst: &Path) {
    let bytes = std::fs::read(src).unwrap_or_else(|e| panic!("reading {}: {e}", src.display()));
    write_replacing(dst, &bytes);
}

fn write_replacing(dst: &Path, bytes: &[u8]) {
    let tmp = dst.with_extension("tmp-new");
    std::fs::write(&tmp, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", tmp.display()));
    std::fs::rename(&tmp, dst).unwrap_or_else(|e| panic!("renaming onto {}: {e}", dst.display()));
}

/// Prometheus text exposition: every sample as (name, labels, value).
pub(crate) fn parse_metrics(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name_labels, rest) = match line.find('{') {
            Some(_) => {
                let close = line.rfind('}').unwrap_or_else(|| panic!("unbalanced braces in {line:?}"));
                (&line[..close + 1], line[close + 1..].trim())
            }
            None => {
                let sp = line.find(' ').unwrap_or_else(|| panic!("no value in metrics line {line:?}"));
                (&line[..sp], line[sp + 1..].trim())
            }
        };
        let (name, labels) = match name_labels.find('{') {
            Some(open) => (&name_labels[..open], parse_labels(&name_labels[open + 1..name_labels.len() - 1])),
            None => (name_labels, BTreeMap::new()),
        };
        let value = rest.split_whitespace().next().unwrap_or_default();
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|e| panic!("bad value in metrics line {line:?}: {e}")),
        };
        out.push((name.to_string(), labels, value));
    }
    out
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let eq = rest.find('=').unwrap_or_else(|| panic!("bad labels {s:?}"));
        let key = rest[..eq].trim().trim_start_matches(',').trim().to_string();
        let after = &rest[eq + 1..];
        assert!(after.starts_with('"'), "label value not quoted in {s:?}");
        let mut value = String::new();
        let mut chars = after[1..].char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(match n {
                            'n' => '\n',
                            other => other,
                        });
                    }
                }
                '"' => {
                    end = Some(i + 2);
                    break;
                }
                c => value.push(c),
            }
        }
        let end = end.unwrap_or_else(|| panic!("unterminated label value in {s:?}"));
        out.insert(key, value);
        rest = after[end..].trim_start().trim_start_matches(',').trim_start();
    }
    out
}

/// The sum of the samples named `name` whose labels include all of `labels`
/// (None: no such sample).
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<f64> = parse_metrics(text)
        .into_iter()
        .filter(|(n, l, _)| {
            n == name && labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
        .collect();
    (!matching.is_empty()).then(|| matching.iter().sum())
}

/// Whether some sample is named `name`.
fn metric_present(text: &str, name: &str) -> bool {
    parse_metrics(text).iter().any(|(n, _, _)| n == name)
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

/// The JSON object's field `key`, at top level or under `fields` (tracing's layout).
fn json_field<'a>(v: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
    v.get(key).or_else(|| v.get("fields").and_then(|f| f.get(key)))
}

fn json_str(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Every non-empty line of the server's output parsed as a JSON object; panics
/// naming the first line that is not one.
fn json_lines(mirror: &Mirror) -> Vec<serde_json::Value> {
    let text = mirror.log_without_harness_lines();
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| {
            panic!("log line {} is not JSON ({e}):\n{line}\n---- whole log ----\n{text}", i + 1)
        });
        assert!(v.is_object(), "log line {} is JSON but not an object:\n{line}", i + 1);
        out.push(v);
    }
    assert!(!out.is_empty(), "the mirror logged nothing\n{}", mirror.explain());
    out
}

/// The access lines (objects with method, path, status and outcome) as
/// (method, path, status, outcome).
fn json_access_lines(lines: &[serde_json::Value]) -> Vec<(String, String, String, String)> {
    lines
        .iter()
        .filter_map(|v| {
            Some((
                json_str(json_field(v, "method"))?,
                json_str(json_field(v, "path"))?,
                json_str(json_field(v, "status"))?,
                json_str(json_field(v, "outcome"))?,
            ))
        })
        .collect()
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

    let r = http::h2_get(&format!("{}/v2/", mirror.url()), &tls.ca, None)
        .unwrap_or_else(|e| panic!("GET /v2/ over HTTP/2: {e}\n{}", mirror.explain()));
    assert_eq!(r.status, 200, "GET /v2/ over HTTP/2: {}", r.text());
    let r = mirror.request("GET", "/v2/", &[]).unwrap_or_else(|e| panic!("GET /v2/ over HTTP/1.1: {e}"));
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

    let none = http::try_request_with_ca("GET", &ping, &[], Some(&tls.ca));
    assert!(
        none.is_err(),
        "a client without a certificate must fail the TLS handshake, got status {:?}\n{}",
        none.map(|r| r.status),
        s.mirror.explain()
    );
    let wrong = http::try_request_with_identity("GET", &ping, &[], &tls.ca, (&stranger.cert, &stranger.key));
    assert!(
        wrong.is_err(),
        "a client certificate from another CA must fail the TLS handshake, got status {:?}\n{}",
        wrong.map(|r| r.status),
        s.mirror.explain()
    );
    let good = http::try_request_with_identity("GET", &ping, &[], &tls.ca, (&client.cert, &client.key))
        .unwrap_or_else(|e| panic!("GET /v2/ with a good client certificate: {e}\n{}", s.mirror.explain()));
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
    let again = http::try_request_with_identity("GET", &ping, &[], &tls.ca, (&client.cert, &client.key))
        .unwrap_or_else(|e| panic!("GET /v2/ after refused clients: {e}\n{}", s.mirror.explain()));
    assert_eq!(again.status, 200);
}

#[test]
fn certificate_rotation_is_picked_up_without_restart() {
    let dir = tempdir("rotation");
    let pki_dir = dir.path().join("pki");
    let tls = pki::tls_files(&pki_dir);
    let (b_cert, b_key) = pki::server_cert(&pki_dir, &tls, "b.pem", "b.key", 1002);
    let (c_cert, c_key) = pki::server_cert(&pki_dir, &tls, "c.pem", "c.key", 1003);
    // The mirror reads "live" files, which the test overwrites.
    let live = dir.path().join("live");
    std::fs::create_dir_all(&live).expect("creating the live cert dir");
    let (live_cert, live_key) = (live.join("tls.crt"), live.join("tls.key"));
    replace_file(&tls.cert, &live_cert);
    replace_file(&tls.key, &live_key);
    let server_tls = ServerTls { cert: live_cert.clone(), key: live_key.clone(), ..ServerTls::new(&tls) };
    let mut mirror = Mirror::builder().server_tls(server_tls).start();

    let presented = |m: &Mirror| {
        http::tls_handshake(&m.host_port(), &tls.ca, None, &[b"http/1.1"])
            .unwrap_or_else(|e| panic!("{e}\n{}", m.explain()))
            .leaf
    };
    let (a, b, c) = (leaf_der(&tls.cert), leaf_der(&b_cert), leaf_der(&c_cert));
    assert_eq!(presented(&mirror), a, "the mirror should present certificate A at first");

    // Rotate on disk: key first, then certificate (each an atomic rename).
    replace_file(&b_key, &live_key);
    replace_file(&b_cert, &live_cert);
    let rotated = Instant::now();
    let picked_up = wait_until(Duration::from_secs(8), || presented(&mirror) == b);
    let took = rotated.elapsed();
    eprintln!("certificate B presented {took:?} after the files changed");
    assert!(
        picked_up,
        "8 s after cert+key were replaced on disk, new TLS connections still do not get the new \
         certificate (still A: {})\n{}",
        presented(&mirror) == a,
        mirror.explain()
    );
    assert!(mirror.is_running(), "the mirror must not restart to rotate certificates");
    let r = mirror.request("GET", "/v2/", &[]).unwrap_or_else(|e| panic!("GET /v2/ after rotation: {e}"));
    assert_eq!(r.status, 200);

    // SIGHUP re-reads at once (and does not kill the process).
    replace_file(&c_key, &live_key);
    replace_file(&c_cert, &live_cert);
    mirror.signal(libc::SIGHUP);
    let hup = Instant::now();
    let picked_up = wait_until(Duration::from_secs(1), || presented(&mirror) == c);
    let hup_took = hup.elapsed();
    assert!(mirror.is_running(), "SIGHUP must not stop the mirror\n{}", mirror.explain());
    assert!(
        picked_up,
        "1 s after SIGHUP the mirror still does not present the new certificate C\n{}",
        mirror.explain()
    );
    eprintln!("certificate C presented {hup_took:?} after SIGHUP");
    let r = mirror.request("GET", "/v2/", &[]).unwrap_or_else(|e| panic!("GET /v2/ after SIGHUP: {e}"));
    assert_eq!(r.status, 200);
}

#[test]
fn broken_certificate_on_disk_keeps_the_last_good_one() {
    // Not spelled out in the contract, but the only safe behaviour: a half-written or
    // garbage certificate must neither stop the server nor drop TLS.
    let dir = tempdir("rotation-broken");
    let pki_dir = dir.path().join("pki");
    let tls = pki::tls_files(&pki_dir);
    let (b_cert, b_key) = pki::server_cert(&pki_dir, &tls, "b.pem", "b.key", 1102);
    let live = dir.path().join("live");
    std::fs::create_dir_all(&live).expect("creating the live cert dir");
    let (live_cert, live_key) = (live.join("tls.crt"), live.join("tls.key"));
    replace_file(&tls.cert, &live_cert);
    replace_file(&tls.key, &live_key);
    let server_tls = ServerTls { cert: live_cert.clone(), key: live_key.clone(), ..ServerTls::new(&tls) };
    let mut mirror = Mirror::builder().server_tls(server_tls).start();
    let presented = |m: &Mirror| http::tls_handshake(&m.host_port(), &tls.ca, None, &[b"http/1.1"]);
    let a = leaf_der(&tls.cert);

    write_replacing(
        &live_cert,
        b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n",
    );
    mirror.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        mirror.is_running(),
        "a broken certificate on disk must not stop the mirror\n{}",
        mirror.explain()
    );
    let p = presented(&mirror)
        .unwrap_or_else(|e| panic!("TLS after a broken rotation: {e}\n{}", mirror.explain()));
    assert_eq!(
        p.leaf, a,
        "with a broken certificate on disk the mirror should keep serving the last good one"
    );

    replace_file(&b_key, &live_key);
    replace_file(&b_cert, &live_cert);
    let b = leaf_der(&b_cert);
    assert!(
        wait_until(Duration::from_secs(8), || presented(&mirror).is_ok_and(|p| p.leaf == b)),
        "after the broken file is fixed, the new certificate should be picked up\n{}",
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
            "clientAuth: verify without ca",
            ServerTls { ca: None, client_auth: Some("verify".into()), ..good.clone() },
            &["serverTlsConfig.ca", "serverTlsConfig.clientAuth"],
        ),
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
        metric(&text, "ociregistry_upstream_pulls_by_ns_total", &ns),
        Some(1.0),
        "one cold pull (the tag's manifest fetched upstream)\n{}",
        ctx()
    );
    assert_eq!(
        metric(&text, "ociregistry_cached_pulls_by_ns_total", &ns),
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
        assert!(metric_present(&text, name), "{name} is missing\n{}", ctx());
    }
    for source in ["cache", "upstream"] {
        let v = metric(&text, "ociregistry_served_bytes_total", &[("source", source)]);
        assert!(
            v.is_some_and(|v| v > 0.0),
            "served_bytes_total{{source={source:?}}} should be > 0: {v:?}\n{}",
            ctx()
        );
    }
    assert_eq!(
        metric(&text, "ociregistry_cached_manifest_count", &[]),
        Some(info.manifest_digests().len() as f64),
        "cached manifests: the index and its {} platform manifests\n{}",
        info.manifests.len(),
        ctx()
    );
    assert_eq!(
        metric(&text, "ociregistry_cached_blob_count", &[]),
        Some(info.blobs().len() as f64),
        "cached blobs: every config and layer\n{}",
        ctx()
    );
    let on_disk = metric(&text, "ociregistry_blob_bytes_on_disk_total", &[]);
    assert!(
        on_disk.is_some_and(|v| v > 0.0),
        "blob_bytes_on_disk_total should be > 0: {on_disk:?}\n{}",
        ctx()
    );
    assert_eq!(
        metric(&text, "ociregistry_upstream_up", &[("registry", NAME)]),
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
    let r = http::request(
        "GET",
        &s.mirror.v2(&format!("{REPO}/manifests/not-cached-yet")),
        &[("accept", http::ACCEPT_MANIFESTS)],
    );
    assert_ne!(r.status, 200, "an uncached tag cannot be served with the upstream down");
    let mut last = String::new();
    let down = wait_until(Duration::from_secs(5), || {
        last = s.mirror.metrics_text();
        metric(&last, "ociregistry_upstream_up", &[("registry", NAME)]) == Some(0.0)
    });
    assert!(
        down,
        "after a failed upstream request ociregistry_upstream_up{{registry=\"{NAME}\"}} should be 0\n\
         ---- /metrics ----\n{last}\n{}",
        s.mirror.explain()
    );
    assert!(!last.contains(REPO) && !last.contains("sha256:"), "labels after the failure:\n{last}");
}

/// A cache whose loading takes a noticeable time: one manifest and `tags` tag files
/// pointing at it (`tags/up.test/team/app/_tags/t<N>`).
fn big_cache(dir: &Path, tags: usize) -> String {
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": format!("sha256:{}", "a".repeat(64)),
            "size": 2
        },
        "layers": []
    });
    let bytes = serde_json::to_vec(&manifest).expect("serialising a manifest");
    let digest = crate::support::digest_of(&bytes);
    let hex = crate::support::hex_of(&digest).to_string();
    let mdir = dir.join("manifests").join("sha256").join(&hex[..2]);
    std::fs::create_dir_all(&mdir).expect("creating the manifests dir");
    let mut file = b"application/vnd.oci.image.manifest.v1+json\n".to_vec();
    file.extend_from_slice(&bytes);
    std::fs::write(mdir.join(&hex), file).expect("writing the manifest");
    let tdir = dir.join("tags").join(NAME).join(REPO).join("_tags");
    std::fs::create_dir_all(&tdir).expect("creating the tags dir");
    for i in 0..tags {
        std::fs::write(tdir.join(format!("t{i}")), &digest).expect("writing a tag file");
    }
    digest
}

#[test]
fn health_and_ready() {
    let dir = tempdir("ready-cache");
    let cache = dir.path().join("cache");
    let made = Instant::now();
    big_cache(&cache, 100_000);
    eprintln!("wrote 100000 tag files in {:?}", made.elapsed());

    let mut mirror = Mirror::builder().health().image_path(&cache).spawn();
    let ready_url = format!("{}/ready", mirror.health_url());
    let health_url = format!("{}/health", mirror.health_url());
    let data = mirror.host_port();
    let data_up = || TcpStream::connect_timeout(&data.parse().expect("addr"), Duration::from_secs(2)).is_ok();

    // (time since spawn, /ready status, data port accepting right after the answer)
    let mut seen: Vec<(Duration, u16, bool)> = Vec::new();
    let mut first_health = None;
    let mut data_serving_since: Option<Instant> = None;
    let spawned = Instant::now();
    loop {
        assert!(mirror.is_running(), "the mirror exited while starting\n{}", mirror.explain());
        assert!(
            spawned.elapsed() < Duration::from_secs(90),
            "/ready did not answer 200 within 90 s; seen {seen:?}\n{}",
            mirror.explain()
        );
        match http::try_request("GET", &ready_url, &[]) {
            Err(e) => {
                // Not listening yet. Fail fast if the data port has been serving for
                // 10 s while the health port never answered.
                if data_serving_since.is_none() && data_up() {
                    data_serving_since = Some(Instant::now());
                }
                assert!(
                    data_serving_since.is_none_or(|t| t.elapsed() < Duration::from_secs(10)),
                    "the data port accepts connections but GET {ready_url} has failed for 10 s: {e}\n{}",
                    mirror.explain()
                );
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            Ok(r) => {
                let up = data_up();
                seen.push((spawned.elapsed(), r.status, up));
                if first_health.is_none() {
                    first_health = Some(http::try_request("GET", &health_url, &[]).map(|r| r.status));
                }
                if r.status == 200 {
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // Once ready, it stays ready.
    for _ in 0..20 {
        let r = http::get(&ready_url);
        seen.push((spawned.elapsed(), r.status, true));
        std::thread::sleep(Duration::from_millis(25));
    }
    let n503 = seen.iter().filter(|(_, s, _)| *s == 503).count();
    let first200 = seen.iter().position(|(_, s, _)| *s == 200).expect("a 200 was seen");
    eprintln!(
        "/ready answers: {n503} × 503 (first at {:?}), first 200 at {:?}",
        seen.first().map(|x| x.0),
        seen[first200].0
    );
    for (t, status, up) in &seen {
        assert!(*status == 200 || *status == 503, "/ready answered {status} at {t:?} (only 200 or 503)");
        assert!(
            *status != 200 || *up,
            "/ready said 200 at {t:?} but the data port was not accepting connections\n{}",
            mirror.explain()
        );
        assert!(
            *up || *status == 503,
            "/ready answered {status} at {t:?} while the data port was not yet accepting (must be 503)"
        );
    }
    assert!(seen[first200..].iter().all(|(_, s, _)| *s == 200), "/ready went back from 200 to 503: {seen:?}");
    assert_eq!(
        first_health,
        Some(Ok(200)),
        "/health should answer 200 as soon as the health port is up (alive, even if not ready)"
    );
    assert_eq!(http::get(&health_url).status, 200);
    // Bound to `host` (127.0.0.1), not to every address: 127.0.0.2 reaches only a wildcard bind.
    assert!(
        TcpStream::connect_timeout(
            &format!("127.0.0.2:{}", mirror.health_port()).parse().expect("addr"),
            Duration::from_secs(2)
        )
        .is_err(),
        "the health port should be bound to host (127.0.0.1) only, but 127.0.0.2 reaches it"
    );

    // With a cache this large, a health port that is up while the cache loads must
    // have been seen saying 503.
    mirror.wait_ready();
    let log = mirror.log_without_harness_lines();
    let load_ms: Option<u64> = field_value(&log, "load_ms").and_then(|v| v.parse().ok());
    eprintln!("load_ms from the banner: {load_ms:?}");
    if load_ms.is_some_and(|ms| ms >= 1000) {
        assert!(
            n503 > 0,
            "loading the cache took {load_ms:?} ms but /ready never answered 503: the health port \
             should be up (saying 503) while the cache loads; seen {seen:?}"
        );
    }
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
    assert_eq!(http::get(&missing).status, 404);
    let tag_path = format!("/v2/{REPO}/manifests/{TAG}");
    s.mirror.wait_for_log(&tag_path, Duration::from_secs(5));
    let status = s.mirror.stop();
    assert!(status.is_some_and(|s| s.success()), "SIGTERM should end the mirror with 0: {status:?}");

    let lines = json_lines(&s.mirror);
    let access = json_access_lines(&lines);
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
    let r = m.request("GET", "/v2/", &[]).expect("GET /v2/");
    assert_eq!(r.status, 200);
    m.wait_for_log("/v2/", Duration::from_secs(5));
    m.stop();
    let lines = json_lines(&m);
    assert!(
        json_access_lines(&lines).iter().any(|(_, p, st, _)| p == "/v2/" && st == "200"),
        "--log-format json: no JSON access line for GET /v2/"
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
    let download = rt().spawn(async move { http::stream(&url, &[], Some(p)).await });

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
        (has_field(&log, "uid", &uid.to_string()) && has_field(&log, "gid", &gid.to_string()))
            || (log.contains("uid") && has_uid_gid_token(&log, &format!("{uid}:{gid}"))),
        "uid={uid} gid={gid} (or uid:gid {uid}:{gid}) missing\n{}",
        ctx()
    );
    assert!(has_field(&log, "pid", &mirror.pid().to_string()), "pid={} missing\n{}", mirror.pid(), ctx());
    assert!(has_field(&log, "tls", "off"), "tls=off missing\n{}", ctx());
    let config = mirror.config_path().display().to_string();
    assert!(
        log.contains("serve") && log.contains(&config),
        "the command line (serve --config-file {config}) missing\n{}",
        ctx()
    );
    for key in ["manifests", "blobs", "load_ms"] {
        assert!(field_value(&log, key).is_some(), "{key}= missing\n{}", ctx());
    }
    assert_eq!(field_value(&log, "manifests").as_deref(), Some("0"), "an empty cache has manifests=0");
    assert_eq!(field_value(&log, "blobs").as_deref(), Some("0"), "an empty cache has blobs=0");
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
                    .request(method, path, &headers)
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

    let r = s.mirror.authed_request("GET", "/v2/", &[]).expect("GET /v2/ with credentials");
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
    let r = tls_mirror.request("GET", "/v2/", &[]).unwrap_or_else(|e| panic!("TLS after plain HTTP: {e}"));
    assert_eq!(r.status, 200);

    // And the other way round: TLS to a plain port fails the handshake, the server stays up.
    let plain = Mirror::builder().start();
    let hs = http::tls_handshake(&plain.host_port(), &tls.ca, None, &[b"http/1.1"]);
    assert!(hs.is_err(), "a TLS handshake with the plain-HTTP port cannot succeed");
    let r = plain.request("GET", "/v2/", &[]).unwrap_or_else(|e| panic!("GET /v2/ after a TLS client: {e}"));
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
            .request_within("GET", "/v2/", &[], Duration::from_secs(5))
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
                scope.spawn(move || m.request_within("GET", "/v2/", &[], Duration::from_secs(10)))
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

// ---------------------------------------------------------------------------
// The helpers above, checked on their own
// ---------------------------------------------------------------------------

#[test]
fn metrics_parser_reads_prometheus_text() {
    let text = "# HELP a_total A counter.\n# TYPE a_total counter\n\
                a_total{ns=\"up.test\",kind=\"x\"} 3\n\
                a_total{ns=\"up.test\",kind=\"y\"} 4\n\
                a_total{ns=\"other\"} 100\n\
                b_bucket{le=\"+Inf\"} 7\n\
                c 1.5e3\n\
                d{v=\"q\\\"uote,}\"} 2 1700000000000\n";
    assert_eq!(metric(text, "a_total", &[("ns", "up.test")]), Some(7.0));
    assert_eq!(metric(text, "a_total", &[("ns", "up.test"), ("kind", "y")]), Some(4.0));
    assert_eq!(metric(text, "a_total", &[]), Some(107.0));
    assert_eq!(metric(text, "a_total", &[("ns", "nope")]), None);
    assert_eq!(metric(text, "b_bucket", &[("le", "+Inf")]), Some(7.0));
    assert_eq!(metric(text, "c", &[]), Some(1500.0));
    assert_eq!(metric(text, "d", &[("v", "q\"uote,}")]), Some(2.0));
    assert!(metric_present(text, "c") && !metric_present(text, "a"));
}

#[test]
fn log_field_helpers() {
    let line = "2026-11-27T23:40:05Z INFO ociregistry: start pid=42 tls=\"on\" user=0:0 load_ms=17";
    assert!(has_field(line, "pid", "42") && has_field(line, "tls", "on") && !has_field(line, "tls", "o"));
    assert_eq!(field_value(line, "load_ms").as_deref(), Some("17"));
    assert!(has_uid_gid_token(line, "0:0"));
    assert!(!has_uid_gid_token("2026-11-27T23:40:05Z x", "0:0"), "a timestamp is not uid:gid");
}

#[test]
fn a_failed_start_is_captured() {
    // A config error the server already reports: the fixture sees the exit and stderr.
    let f = Mirror::builder().extra_yaml("notAKnownKey: 1").start_expecting_failure();
    assert!(f.exited && f.code.is_some_and(|c| c != 0), "{f:?}");
    assert!(f.output.contains("notAKnownKey"), "{f:?}");
    assert_eq!(f.plain_http_status, None);
}
