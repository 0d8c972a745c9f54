//! Self-tests of the fixtures, run without the server under test: each upstream
//! mode (mTLS included) round-trips an image with skopeo directly and through the
//! proxy, the proxy counts, throttles and injects faults (cuts, flipped bytes,
//! replaced responses), containerd pulls straight from the upstream, and the
//! metrics and log parsers read what they should. If these fail, the other tests'
//! failures mean nothing.

use std::time::{Duration, Instant};

use crate::support::containerd::Containerd;
use crate::support::image::{self, Format, ImageSpec};
use crate::support::proxy::{BodyEnd, Canned, Fault, Proxy};
use crate::support::skopeo::Skopeo;
use crate::support::upstream::Upstream;
use crate::support::{Explain, digest_of, http, logs, metrics, tempdir};

/// Seeds `up` with a two-platform image, copies it back directly and through a
/// proxy, and checks digests and the proxy's counts.
fn round_trip(up: &Upstream) {
    let work = tempdir("harness");
    let seeded = image::seed(
        up,
        &work.path().join("layout"),
        &ImageSpec::multi_platform(11, &[2000, 300_000]),
        "team/app",
        "v1",
        Format::Oci,
    );
    assert!(seeded.info.is_index());
    assert_eq!(seeded.info.manifests.len(), 2);

    let direct = Skopeo::new().context(up).copy_to_dir(
        &format!("docker://{}/team/app:v1", up.host_port()),
        &image::upstream_flags(up, "src-"),
        &work.path().join("direct"),
    );
    assert_eq!(direct.top.digest, seeded.info.top.digest);
    assert_eq!(direct.blobs(), seeded.info.blobs());

    let proxy = Proxy::start(up);
    let via = Skopeo::new().context(up).context(&proxy).copy_to_dir(
        &format!("docker://{}/team/app:v1", proxy.host_port()),
        &image::upstream_flags(up, "src-"),
        &work.path().join("via-proxy"),
    );
    assert_eq!(via.top.digest, seeded.info.top.digest);
    assert_eq!(via.manifest_digests(), seeded.info.manifest_digests());
    assert_eq!(via.blobs(), seeded.info.blobs());
    for blob in seeded.info.blobs() {
        assert_eq!(
            proxy.count("GET", &format!("/blobs/{}", blob.digest)),
            1,
            "the proxy should have seen one GET of {}\n{}",
            blob.digest,
            proxy.explain()
        );
    }
    assert!(proxy.count("GET", "/manifests/") >= 3, "{}", proxy.explain());
    if up.credentials().is_some() {
        assert!(
            proxy.requests().iter().any(|r| r.had_authorization),
            "credentials should have been forwarded\n{}",
            proxy.explain()
        );
    }
}

#[test]
fn plain_upstream_round_trip() {
    round_trip(&Upstream::plain());
}

#[test]
fn tls_upstream_round_trip() {
    let up = Upstream::tls();
    // The CA the fixture exposes is the one that verifies the server.
    let r = http::Request::get(&format!("{}/v2/", up.url()))
        .ca(up.ca_pem().expect("a TLS upstream has a CA"))
        .try_send()
        .expect("GET /v2/ over TLS with the test CA");
    assert_eq!(r.status, 200);
    round_trip(&up);
}

#[test]
fn mtls_upstream_round_trip() {
    let up = Upstream::mtls();
    assert!(up.requires_client_cert());
    let ca = up.ca_pem().expect("mTLS mode has a CA");
    let (cert, key) = up.client_identity().expect("mTLS mode has a client identity");
    let ping = format!("{}/v2/", up.url());
    // The registry really refuses a client without a certificate …
    let bare = http::Request::get(&ping).ca(&ca).try_send();
    assert!(
        bare.is_err(),
        "GET /v2/ without a client certificate should fail, got {:?}\n{}",
        bare.map(|r| r.status),
        up.explain()
    );
    // … and accepts the test client certificate.
    let ok = http::Request::get(&ping)
        .ca(&ca)
        .identity(&cert, &key)
        .try_send()
        .unwrap_or_else(|e| panic!("GET /v2/ with the client certificate: {e}\n{}", up.explain()));
    assert_eq!(ok.status, 200);
    // The proxy in front of it is as strict.
    let proxy = Proxy::start(&up);
    let via = format!("{}/v2/", proxy.url());
    assert!(
        http::Request::get(&via).ca(&ca).try_send().is_err(),
        "the proxy in front of an mTLS upstream must require a client certificate too"
    );
    let ok = http::Request::get(&via)
        .ca(&ca)
        .identity(&cert, &key)
        .try_send()
        .unwrap_or_else(|e| panic!("GET /v2/ through the proxy with the client certificate: {e}"));
    assert_eq!(ok.status, 200, "{}", proxy.explain());
    // skopeo finds the client certificate in the cert dir.
    round_trip(&up);
}

#[test]
fn basic_auth_upstream_round_trip() {
    let up = Upstream::basic();
    let r = http::Request::get(&format!("{}/v2/", up.url())).send();
    assert_eq!(r.status, 401, "anonymous /v2/ must be refused");
    assert!(r.header("www-authenticate").unwrap_or_default().starts_with("Basic"), "{:?}", r.headers);
    round_trip(&up);
}

#[test]
fn bearer_upstream_round_trip() {
    let up = Upstream::bearer();
    let r = http::Request::get(&format!("{}/v2/", up.url())).send();
    assert_eq!(r.status, 401, "anonymous /v2/ must be refused");
    let challenge = r.header("www-authenticate").unwrap_or_default().to_string();
    let token = up.token_server().expect("bearer mode has a token server");
    assert!(
        challenge.starts_with("Bearer") && challenge.contains(&token.realm()),
        "challenge {challenge:?} should name realm {}",
        token.realm()
    );
    round_trip(&up);
    assert!(token.issued() > 0, "{}", token.explain());
}

#[test]
fn token_server_checks_credentials_and_signs_with_x5c() {
    let up = Upstream::bearer();
    let token = up.token_server().expect("token server");
    let url = format!("{}?service={}&scope=repository:team/app:pull", token.realm(), token.service());
    let anon = http::Request::get(&url).send();
    assert_eq!(anon.status, 401);
    let wrong = http::Request::get(&url).header("authorization", "Basic d3Jvbmc6d3Jvbmc=").send();
    assert_eq!(wrong.status, 401);
    let (u, p) = up.credentials().expect("credentials");
    use base64::Engine as _;
    let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}")));
    let ok = http::Request::get(&url).header("authorization", &basic).send();
    assert_eq!(ok.status, 200, "{}", ok.text());
    let body: serde_json::Value = serde_json::from_slice(&ok.body).expect("token JSON");
    let jwt = body["token"].as_str().expect("token field");
    assert_eq!(body["access_token"].as_str(), Some(jwt));
    assert_eq!(body["expires_in"].as_u64(), Some(300));
    let header = jwt.split('.').next().expect("JWT header");
    let header: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header).expect("JWT header base64"),
    )
    .expect("JWT header JSON");
    assert_eq!(header["alg"], "RS256");
    assert!(header["x5c"][0].is_string(), "{header}");
    let claims = jwt.split('.').nth(1).expect("JWT claims");
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(claims).expect("JWT claims base64"),
    )
    .expect("JWT claims JSON");
    assert_eq!(claims["aud"], token.service());
    assert_eq!(claims["access"][0]["name"], "team/app");
    assert_eq!(claims["access"][0]["actions"][0], "pull");
    assert_eq!(token.issued(), 1);
    assert_eq!(token.refused(), 2);

    // The registry accepts the token.
    let r = http::Request::get(&format!("{}/v2/team/app/tags/list", up.url()))
        .headers(&[("authorization", &format!("Bearer {jwt}"))])
        .send();
    // 404 NAME_UNKNOWN (nothing pushed) proves the token was accepted (else 401).
    assert_eq!(r.status, 404, "{}\n{}", r.text(), up.explain());
}

#[test]
fn docker_media_types_seed() {
    let up = Upstream::plain();
    let work = tempdir("harness");
    let seeded = image::seed(
        &up,
        work.path(),
        &ImageSpec::multi_platform(12, &[1000]),
        "team/docker",
        "v1",
        Format::Docker,
    );
    assert_eq!(seeded.info.top.media_type, image::DOCKER_LIST);
    for m in &seeded.info.manifests {
        let v: serde_json::Value = serde_json::from_slice(&m.bytes).expect("manifest JSON");
        assert_eq!(v["mediaType"], image::DOCKER_MANIFEST);
    }
    let single = image::seed(
        &up,
        &work.path().join("single"),
        &ImageSpec::single(13, &[1000]),
        "team/docker1",
        "v1",
        Format::Docker,
    );
    assert_eq!(single.info.top.media_type, image::DOCKER_MANIFEST);
}

#[test]
fn image_generation_is_deterministic() {
    let a = tempdir("harness");
    let b = tempdir("harness");
    let spec = ImageSpec::multi_platform(14, &[100, 2 << 20]);
    let la = image::ImageLayout::generate(a.path(), &spec);
    let lb = image::ImageLayout::generate(b.path(), &spec);
    assert_eq!(la.info.top.digest, lb.info.top.digest);
    assert_eq!(la.info.blobs(), lb.info.blobs());
    // Distinct seeds, distinct content.
    let c = tempdir("harness");
    let lc = image::ImageLayout::generate(c.path(), &ImageSpec::multi_platform(15, &[100, 2 << 20]));
    assert_ne!(la.info.top.digest, lc.info.top.digest);
    // A large layer is stored, not compressed: about the payload size.
    let big = la.info.largest_layer();
    assert!(big.size > 2 << 20, "{big:?}");
    let bytes = std::fs::read(la.blob_path(&big.digest)).expect("reading a layer");
    assert_eq!(digest_of(&bytes), big.digest);
}

#[test]
fn proxy_throttles_and_injects_faults() {
    let up = Upstream::plain();
    let work = tempdir("harness");
    let seeded =
        image::seed(&up, work.path(), &ImageSpec::single(16, &[3 << 20]), "team/slow", "v1", Format::Oci);
    let layer = seeded.info.largest_layer();
    let proxy = Proxy::start(&up);
    let url = format!("{}/v2/team/slow/blobs/{}", proxy.url(), layer.digest);

    let t = Instant::now();
    let fast = http::Request::get(&url).send();
    let fast_time = t.elapsed();
    assert_eq!(fast.status, 200);
    assert_eq!(digest_of(&fast.body), layer.digest);

    proxy.set_throttle(Some(2 << 20)); // 2 MiB/s: ~1.5 s for ~3 MiB
    let t = Instant::now();
    let slow = http::Request::get(&url).send();
    let slow_time = t.elapsed();
    assert_eq!(digest_of(&slow.body), layer.digest);
    assert!(
        slow_time >= Duration::from_millis(1200),
        "throttled GET took {slow_time:?} (unthrottled {fast_time:?})"
    );
    let seen = proxy.matching("GET", &layer.digest);
    assert_eq!(seen.len(), 2);
    let last = seen.last().expect("a request");
    assert_eq!(last.body_bytes, layer.size);
    assert!(last.finished.is_some());
    proxy.set_throttle(None);

    // Ranges are forwarded and recorded.
    let r = http::Request::get(&url).header("range", "bytes=0-9").send();
    assert_eq!(r.status, 206);
    assert_eq!(r.body.len(), 10);
    assert_eq!(
        proxy.matching("GET", &layer.digest).last().and_then(|s| s.range.clone()),
        Some("bytes=0-9".to_string())
    );

    proxy.set_fault(Fault::CutBlobBodiesAfter(100_000));
    let cut = http::Request::get(&url).try_send();
    assert!(cut.is_err(), "a cut body must fail the client: {:?}", cut.map(|r| r.status));

    proxy.set_fault(Fault::Status(503));
    assert_eq!(http::Request::get(&url).send().status, 503);

    proxy.set_fault(Fault::Refuse);
    assert!(http::Request::get(&url).try_send().is_err());
    assert!(proxy.refused_connections() >= 1);

    proxy.set_fault(Fault::None);
    assert_eq!(http::Request::get(&url).send().status, 200);
}

#[test]
fn proxy_flips_bytes_cuts_at_blob_offsets_and_replaces_responses() {
    let up = Upstream::plain();
    let work = tempdir("harness");
    let seeded =
        image::seed(&up, work.path(), &ImageSpec::single(18, &[1 << 20]), "team/app", "v1", Format::Oci);
    let layer = seeded.info.largest_layer();
    let proxy = Proxy::start(&up);
    let url = format!("{}/v2/team/app/blobs/{}", proxy.url(), layer.digest);
    let truth = http::Request::get(&url).send();
    assert_eq!(digest_of(&truth.body), layer.digest);

    // FlipByte: one byte inverted, same length, counted from the blob's start.
    proxy.set_fault(Fault::FlipByte { path_part: layer.digest.clone(), offset: 1000 });
    let r = http::Request::get(&url).send();
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), truth.body.len(), "a flip keeps the length");
    let diff: Vec<usize> = (0..r.body.len()).filter(|i| r.body[*i] != truth.body[*i]).collect();
    assert_eq!(diff, vec![1000], "exactly byte 1000 differs");
    assert_eq!(r.body[1000], truth.body[1000] ^ 0xFF);
    assert!(proxy.matching("GET", &layer.digest).last().expect("seen").flipped);
    let r = http::Request::get(&url).header("range", "bytes=600-").send();
    assert_eq!(r.status, 206);
    assert_eq!(r.body[400], truth.body[1000] ^ 0xFF, "offsets count in the blob");
    assert_eq!(&r.body[..400], &truth.body[600..1000]);
    assert_eq!(&r.body[401..], &truth.body[1001..]);
    let r = http::Request::get(&url).header("range", "bytes=2000-").send();
    assert_eq!(r.body.as_ref(), &truth.body[2000..], "a range past the flip is intact");
    // Other paths are forwarded untouched.
    let manifest =
        http::Request::get(&format!("{}/v2/team/app/manifests/v1", proxy.url())).accept_manifests().send();
    assert_eq!(digest_of(&manifest.body), seeded.info.top.digest);

    // CutBlobBodiesAfter counts in the blob: a resume past the cut gets nothing.
    proxy.set_fault(Fault::CutBlobBodiesAfter(1000));
    for (range, want) in [("bytes=400-", 600), ("bytes=1000-", 0), ("bytes=5000-", 0)] {
        let r = crate::support::rt()
            .block_on(http::Request::get(&url).header("range", range).stream(None))
            .expect("a response head");
        assert_eq!(r.status, 206, "{range}");
        assert!(r.error.is_some(), "{range}: a cut body must end with an error");
        assert_eq!(r.bytes, want, "{range}");
        assert_eq!(proxy.matching("GET", &layer.digest).last().expect("seen").end, BodyEnd::Cut);
    }

    // Replace: made-up answers for matching paths, with or without Content-Length.
    let html = "<html><body>captive portal</body></html>\n";
    proxy.set_fault(Fault::Replace {
        path_part: "/manifests/v1".into(),
        response: Canned::new(200, "text/html", html).header("x-e2e", "canned"),
    });
    let manifest_url = format!("{}/v2/team/app/manifests/v1", proxy.url());
    let r = http::Request::get(&manifest_url).send();
    assert_eq!((r.status, r.text().as_str()), (200, html));
    assert_eq!(r.header("content-type"), Some("text/html"));
    assert_eq!(r.header("x-e2e"), Some("canned"));
    assert_eq!(r.header("content-length"), Some(html.len().to_string().as_str()));
    assert_eq!(proxy.matching("GET", "/manifests/v1").last().expect("seen").end, BodyEnd::Replaced);
    assert_eq!(http::Request::get(&url).send().body, truth.body, "other paths are forwarded");
    let big = vec![b'x'; 300_000];
    proxy.set_fault(Fault::Replace {
        path_part: "/manifests/v1".into(),
        response: Canned::new(502, "application/json", big.clone()).chunked(),
    });
    let r = http::Request::get(&manifest_url).send();
    assert_eq!(r.status, 502);
    assert_eq!(r.header("content-length"), None, "{:?}", r.headers);
    assert_eq!(r.body.as_ref(), big.as_slice());
    proxy.set_fault(Fault::None);
    assert_eq!(digest_of(&http::Request::get(&url).send().body), layer.digest);
}

#[test]
fn containerd_pulls_straight_from_the_upstream() {
    let up = Upstream::plain();
    let work = tempdir("harness");
    let seeded = image::seed(
        &up,
        work.path(),
        &ImageSpec::multi_platform(17, &[5000, 200_000]),
        "team/app",
        "v1",
        Format::Oci,
    );
    let amd64 = seeded.info.manifest_for("linux/amd64").clone();
    let reference = "up.test/team/app:v1";

    // hosts.toml: [host."http://127.0.0.1:<upstream port>"], the dead port as server.
    let direct = Containerd::start(&up.url());
    direct.pull(reference, &[&up]);
    direct.assert_unpacked(reference, amd64.layers.len(), &[&up]);
    assert_eq!(direct.image_digest(reference, &[]), seeded.info.top.digest);

    // Again through the proxy, to record what containerd sends to a mirror
    // (printed with --nocapture; OCIREGISTRY_E2E_HTTP_DUMP=1 shows the headers too).
    let proxy = Proxy::start(&up);
    let via = Containerd::start(&proxy.url());
    via.pull(reference, &[&proxy, &up]);
    via.assert_unpacked(reference, amd64.layers.len(), &[&proxy]);
    eprintln!("containerd's requests:\n{}", proxy.explain());
    let reqs = proxy.requests();
    assert!(
        reqs.iter().all(|r| r.path.ends_with("?ns=up.test")),
        "containerd should add ?ns=<registry> to every request\n{}",
        proxy.explain()
    );
    assert_eq!(reqs[0].method, "HEAD", "containerd resolves the tag with a HEAD first");
    assert!(reqs[0].path.starts_with("/v2/team/app/manifests/v1?"));
    assert!(
        reqs.iter().all(|r| !r.path.starts_with("/v2/?") && r.path != "/v2/"),
        "containerd sends no /v2/ ping to a mirror"
    );
    for l in &amd64.layers {
        assert_eq!(proxy.count("GET", &l.digest), 1, "{}", proxy.explain());
    }
}

#[test]
fn containerd_trusts_the_ca_in_hosts_toml() {
    // The hosts.toml the HTTPS-mirror test writes (`ca = "<ca.pem>"`), against the TLS upstream.
    let up = Upstream::tls();
    let work = tempdir("harness");
    let seeded = image::seed(
        &up,
        work.path(),
        &ImageSpec::single(18, &[5000, 100_000]),
        "team/app",
        "v1",
        Format::Oci,
    );
    let ctrd = Containerd::start(&up.url());
    ctrd.mirror_with_ca(&up.url(), &up.ca_pem().expect("TLS upstream has a CA"));
    let reference = "up.test/team/app:v1";
    ctrd.pull(reference, &[&up]);
    ctrd.assert_unpacked(reference, seeded.info.manifests[0].layers.len(), &[&up]);
}

#[test]
fn tls_client_helpers_see_certificate_alpn_and_refusals() {
    let up = Upstream::mtls();
    let ca = up.ca_pem().expect("mTLS mode has a CA");
    let (cert, key) = up.client_identity().expect("mTLS mode has a client identity");
    let t = up.tls_files().expect("TLS files");
    let leaf = crate::support::pki::leaf_der(&t.cert);

    // The proxy serves the upstream's certificate with h2 and http/1.1 over ALPN.
    let proxy = Proxy::start(&up);
    let id = Some((cert.clone(), key.clone()));
    let p =
        http::tls_handshake(&proxy.host_port(), &ca, id.clone(), &[b"h2", b"http/1.1"]).expect("handshake");
    assert_eq!(p.leaf, leaf, "tls_handshake reports the server's leaf certificate");
    assert_eq!(p.alpn.as_deref(), Some(&b"h2"[..]));
    let p = http::tls_handshake(&proxy.host_port(), &ca, id.clone(), &[b"http/1.1"]).expect("handshake");
    assert_eq!(p.alpn.as_deref(), Some(&b"http/1.1"[..]));
    let r = http::Request::get(&format!("{}/v2/", proxy.url()))
        .ca(&ca)
        .identity(&cert, &key)
        .http2()
        .try_send()
        .expect("GET /v2/ over h2");
    assert_eq!(r.status, 200, "{}", r.text());

    // A client certificate from another CA is refused by a real mTLS server (distribution).
    let other = tempdir("harness-other-ca");
    let other_tls = crate::support::pki::tls_files(&other.path().join("pki"));
    let stranger = crate::support::pki::client_files(&other.path().join("client"), &other_tls);
    let ping = format!("{}/v2/", up.url());
    let r = http::Request::get(&ping).ca(&ca).identity(&stranger.cert, &stranger.key).try_send();
    assert!(r.is_err(), "a stranger's client certificate should fail: {:?}", r.map(|r| r.status));

    // Plain HTTP to a TLS port gets no 200 (distribution answers a 400).
    let (answer, _) = http::raw_exchange(
        &up.host_port(),
        b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    );
    let head = String::from_utf8_lossy(&answer);
    assert!(!head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200"), "{head}");
    // And a TLS handshake with a plain-HTTP port fails.
    let plain = Upstream::plain();
    assert!(http::tls_handshake(&plain.host_port(), &ca, None, &[b"http/1.1"]).is_err());
}

#[test]
fn metrics_parser_reads_prometheus_text() {
    let text = "# HELP a_total A counter.\n# TYPE a_total counter\n\
                a_total{ns=\"up.test\",kind=\"x\"} 3\n\
                a_total{ns=\"up.test\",kind=\"y\"} 4\n\
                a_total{ns=\"other\"} 100\n\
                b_bucket{le=\"+Inf\"} 7\n\
                c 1.5e3\n\
                d{v=\"q\\\"uote,}\"} 2 1700000000000\n";
    assert_eq!(metrics::metric(text, "a_total", &[("ns", "up.test")]), Some(7.0));
    assert_eq!(metrics::metric(text, "a_total", &[("ns", "up.test"), ("kind", "y")]), Some(4.0));
    assert_eq!(metrics::metric(text, "a_total", &[]), Some(107.0));
    assert_eq!(metrics::metric(text, "a_total", &[("ns", "nope")]), None);
    assert_eq!(metrics::metric(text, "b_bucket", &[("le", "+Inf")]), Some(7.0));
    assert_eq!(metrics::metric(text, "c", &[]), Some(1500.0));
    assert_eq!(metrics::metric(text, "d", &[("v", "q\"uote,}")]), Some(2.0));
    assert!(metrics::present(text, "c") && !metrics::present(text, "a"));
    assert_eq!(metrics::parse(text).len(), 6);
}

#[test]
fn log_parsers_read_text_and_json_lines() {
    let line = "2026-11-27T23:40:05Z  INFO ociregistry: start pid=42 tls=\"on\" user=0:0 load_ms=17";
    assert!(
        logs::has_field(line, "pid", "42")
            && logs::has_field(line, "tls", "on")
            && !logs::has_field(line, "tls", "o")
    );
    assert_eq!(logs::field_value(line, "load_ms").as_deref(), Some("17"));
    assert!(logs::has_uid_gid_token(line, "0:0"));
    assert!(!logs::has_uid_gid_token("2026-11-27T23:40:05Z x", "0:0"), "a timestamp is not uid:gid");
    assert_eq!(logs::lines_at_level(&format!("{line}\nT  WARN w: slow\n"), "WARN"), ["T  WARN w: slow"]);

    let json = "{\"level\":\"INFO\",\"method\":\"GET\",\"path\":\"/v2/\",\"status\":200,\"outcome\":\"hit\"}\n\
                \n\
                {\"level\":\"WARN\",\"fields\":{\"method\":\"HEAD\",\"path\":\"/x\",\"status\":\"404\",\"outcome\":\"miss\"}}\n\
                {\"level\":\"INFO\",\"message\":\"not an access line\"}\n";
    let lines = logs::json_lines(json);
    assert_eq!(lines.len(), 3, "blank lines are skipped");
    let access = logs::json_access_lines(&lines);
    let want = |m: &str, p: &str, s: &str, o: &str| (m.into(), p.into(), s.into(), o.into());
    assert_eq!(access, [want("GET", "/v2/", "200", "hit"), want("HEAD", "/x", "404", "miss")]);
    let not_json = std::panic::catch_unwind(|| logs::json_lines("{}\nplain text\n"));
    assert!(not_json.is_err(), "a line that is not JSON fails the parse");
}
