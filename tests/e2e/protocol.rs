//! The OCI Distribution protocol details clients depend on: manifest and blob
//! headers, Range requests, the API version header, `OCI-Namespace`, the pull-only
//! surface (405 `UNSUPPORTED`, no catalog) and how upstream failures are reported.

use std::time::{Duration, Instant};

use crate::support::http::{self, ACCEPT_MANIFESTS, Response};
use crate::support::image::{self, Descriptor, Format, ImageSpec};
use crate::support::mirror::{Mirror, RegistryConfig};
use crate::support::proxy::Fault;
use crate::support::scenario::{NAME, REPO, Scenario, TAG};
use crate::support::upstream::Upstream;
use crate::support::{Explain, dead_port, digest_of};

/// A valid digest that no upstream holds.
const ABSENT: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

#[track_caller]
fn assert_header(r: &Response, name: &str, want: &str, what: &str) {
    assert_eq!(r.header(name), Some(want), "{what}: header {name}; all headers: {:?}", r.headers);
}

/// Panics unless `r` answers for the manifest `want`: 200, with its length, digest
/// and media type in the headers.
#[track_caller]
fn assert_manifest_headers(r: &Response, want: &Descriptor, what: &str) {
    assert_eq!(r.status, 200, "{what}");
    // containerd rejects a HEAD that reports size 0.
    assert_header(r, "content-length", &want.size.to_string(), what);
    assert_header(r, "docker-content-digest", &want.digest, what);
    assert_header(r, "content-type", &want.media_type, what);
}

#[test]
fn manifest_head_and_get_headers_cold_and_warm() {
    let s = Scenario::plain_default_ns(&ImageSpec::multi_platform(701, &[1000]));
    let index = &s.image.info.top;
    let amd64 = s.image.info.manifest_for("linux/amd64").descriptor.clone();
    let manifest = |method: &str, reference: &str| {
        http::Request::new(method, &s.mirror.v2(&format!("{REPO}/manifests/{reference}")))
            .accept_manifests()
            .send()
    };
    for (what, reference, want) in [
        ("HEAD by tag, cold", TAG, index),
        ("HEAD by digest, cold", &amd64.digest, &amd64),
        ("GET by tag", TAG, index),
        ("GET by digest", &amd64.digest, &amd64),
        ("GET by tag's digest", &index.digest, index),
        ("HEAD by tag, warm", TAG, index),
        ("HEAD by digest, warm", &amd64.digest, &amd64),
    ] {
        let method = what.split(' ').next().expect("the method starts `what`");
        let r = manifest(method, reference);
        assert_manifest_headers(&r, want, what);
        if method == "HEAD" {
            assert!(r.body.is_empty(), "{what}: a HEAD response has no body");
        } else {
            assert_eq!(digest_of(&r.body), want.digest, "{what}: manifest bytes must be kept as received");
        }
    }
}

#[test]
fn repeated_accept_header_lines_are_merged() {
    // skopeo and podman send each accepted media type as its own Accept line: every
    // line counts, and so do `*/*` and `type/*`. A manifest whose type no line lists
    // is a 404 MANIFEST_UNKNOWN, as registries answer (a client then tries its
    // next host). The tag names an OCI index.
    let s = Scenario::plain_default_ns(&ImageSpec::multi_platform(702, &[1000]));
    let index = &s.image.info.top;
    assert_eq!(index.media_type, image::OCI_INDEX, "the tag should name an OCI index");
    let later_list = format!("{}, {};q=0.9", image::OCI_MANIFEST, image::OCI_INDEX);
    let cases: [(&str, Vec<&str>, bool); 7] = [
        // The index type on neither the first nor the last line: a server reading
        // only one of the lines does not find it.
        (
            "the index type only on the middle one of three lines",
            vec![image::DOCKER_MANIFEST, image::OCI_INDEX, image::OCI_MANIFEST],
            true,
        ),
        (
            "the index type in a later line's list, with a q parameter",
            vec![image::DOCKER_MANIFEST, &later_list],
            true,
        ),
        (
            "lines listing only other manifest types",
            vec![image::OCI_MANIFEST, image::DOCKER_MANIFEST, image::DOCKER_LIST],
            false,
        ),
        ("another type's wildcard", vec!["text/*", image::OCI_MANIFEST], false),
        ("*/*", vec!["*/*"], true),
        ("application/* on a later line", vec![image::DOCKER_MANIFEST, "application/*"], true),
        ("no Accept header at all", vec![], true),
    ];
    let mut failures = Vec::new();
    for (what, lines, served) in &cases {
        for method in ["GET", "HEAD"] {
            let url = s.mirror.v2(&format!("{REPO}/manifests/{TAG}"));
            let r = lines.iter().fold(http::Request::new(method, &url), |r, l| r.header("accept", l)).send();
            let head = method == "HEAD";
            let problem = if *served {
                if r.status != 200 {
                    Some(format!("status {} (wanted 200): {}", r.status, r.text()))
                } else if r.header("content-type") != Some(image::OCI_INDEX) {
                    Some(format!("Content-Type {:?} (wanted the index's)", r.header("content-type")))
                } else if r.header("docker-content-digest") != Some(index.digest.as_str()) {
                    Some(format!("Docker-Content-Digest {:?}", r.header("docker-content-digest")))
                } else if !head && digest_of(&r.body) != index.digest {
                    Some(format!("body digest {} (wanted the index's)", digest_of(&r.body)))
                } else {
                    None
                }
            } else {
                r.oci_error_mismatch_for(method, 404, Some("MANIFEST_UNKNOWN"))
            };
            if let Some(p) = problem {
                failures.push(format!("{method} with {what} (Accept lines {lines:?}): {p}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "every Accept line counts, wildcards too, and an unlisted type is 404 MANIFEST_UNKNOWN:\n  {}\n{}",
        failures.join("\n  "),
        s.mirror.explain()
    );
}

#[test]
fn blob_head_and_get_headers() {
    let s = Scenario::plain_default_ns(&ImageSpec::single(703, &[200_000]));
    let layer = s.image.info.largest_layer();
    let url = s.mirror.v2(&format!("{REPO}/blobs/{}", layer.digest));

    // A HEAD of an uncached blob asks the upstream and answers what it says.
    let r = http::Request::head(&url).send();
    assert_eq!(r.status, 200, "HEAD, cold");
    assert_header(&r, "content-length", &layer.size.to_string(), "HEAD, cold");
    assert_header(&r, "docker-content-digest", &layer.digest, "HEAD, cold");
    assert!(r.body.is_empty());

    let r = http::Request::get(&url).send();
    assert_eq!(r.status, 200, "GET");
    assert_header(&r, "content-type", "application/octet-stream", "GET");
    assert_header(&r, "docker-content-digest", &layer.digest, "GET");
    assert_header(&r, "accept-ranges", "bytes", "GET");
    assert_header(&r, "content-length", &layer.size.to_string(), "GET");
    assert_eq!(digest_of(&r.body), layer.digest);

    let r = http::Request::head(&url).send();
    assert_eq!(r.status, 200, "HEAD, warm");
    assert_header(&r, "content-type", "application/octet-stream", "HEAD, warm");
    assert_header(&r, "docker-content-digest", &layer.digest, "HEAD, warm");
    assert_header(&r, "accept-ranges", "bytes", "HEAD, warm");
    assert_header(&r, "content-length", &layer.size.to_string(), "HEAD, warm");
    assert!(r.body.is_empty());
}

#[test]
fn blob_ranges_are_206_with_content_range() {
    let s = Scenario::plain_default_ns(&ImageSpec::single(704, &[300_000]));
    let layer = s.image.info.largest_layer();
    let size = layer.size;
    let url = s.mirror.v2(&format!("{REPO}/blobs/{}", layer.digest));
    // The true bytes, straight from the upstream.
    let full =
        http::Request::get(&format!("{}/v2/{REPO}/blobs/{}", s.upstream.url(), layer.digest)).send().body;
    assert_eq!(full.len() as u64, size);

    // Cold first (containerd fetches large layers in parallel chunks), then warm.
    let cases: Vec<(&str, String, u64, u64)> = vec![
        ("cold a-b", "bytes=0-99".into(), 0, 99),
        ("warm a-b", "bytes=100-1099".into(), 100, 1099),
        ("warm a-", "bytes=1000-".into(), 1000, size - 1),
        ("warm last byte", format!("bytes={}-{}", size - 1, size - 1), size - 1, size - 1),
        ("warm end past size", format!("bytes=5-{}", size + 1000), 5, size - 1),
    ];
    for (what, range, a, b) in cases {
        let r = http::Request::get(&url).header("range", &range).send();
        assert_eq!(r.status, 206, "{what} ({range}): {}\n{}", r.text(), s.mirror.explain());
        assert_header(&r, "content-range", &format!("bytes {a}-{b}/{size}"), what);
        assert_header(&r, "content-length", &(b - a + 1).to_string(), what);
        assert_header(&r, "accept-ranges", "bytes", what);
        assert_eq!(r.body.as_ref(), &full[a as usize..=b as usize], "{what} ({range}): wrong bytes");
    }
}

#[test]
fn unsatisfiable_ranges_are_416() {
    let s = Scenario::plain_default_ns(&ImageSpec::single(705, &[50_000]));
    let layer = s.image.info.largest_layer();
    let size = layer.size;
    let url = s.mirror.v2(&format!("{REPO}/blobs/{}", layer.digest));
    assert_eq!(http::Request::get(&url).send().status, 200, "warming the cache");
    for range in [format!("bytes={size}-"), format!("bytes={}-{}", size + 10, size + 20)] {
        let r = http::Request::get(&url).header("range", &range).send();
        assert_eq!(r.status, 416, "{range}: {}\n{}", r.text(), s.mirror.explain());
    }
}

#[test]
fn api_version_header_on_every_response() {
    let s = Scenario::plain_default_ns(&ImageSpec::single(706, &[1000]));
    let layer = s.image.info.largest_layer();
    let blob = format!("{REPO}/blobs/{}", layer.digest);
    let manifest = format!("{REPO}/manifests/{TAG}");
    type Headers = Vec<(&'static str, &'static str)>;
    let requests: Vec<(&str, String, Headers)> = vec![
        ("GET", String::new(), vec![]),
        ("HEAD", manifest.clone(), vec![("accept", ACCEPT_MANIFESTS)]),
        ("GET", manifest.clone(), vec![("accept", ACCEPT_MANIFESTS)]),
        ("HEAD", blob.clone(), vec![]),
        ("GET", blob.clone(), vec![]),
        ("GET", blob.clone(), vec![("range", "bytes=0-9")]),
        ("GET", blob.clone(), vec![("range", "bytes=999999999-")]),
        ("GET", format!("{REPO}/manifests/no-such-tag"), vec![]),
        ("GET", format!("{REPO}/blobs/{ABSENT}"), vec![]),
        ("GET", "Bad/Name/manifests/v1".to_string(), vec![]),
        ("GET", format!("{REPO}/blobs/sha256:abc"), vec![]),
        ("DELETE", manifest.clone(), vec![]),
        ("POST", format!("{REPO}/blobs/uploads/"), vec![]),
        ("GET", "_catalog".to_string(), vec![]),
        ("GET", format!("{manifest}?ns={NAME}"), vec![]),
    ];
    let mut missing = Vec::new();
    for (method, path, headers) in &requests {
        let r = http::Request::new(method, &s.mirror.v2(path)).headers(headers).send();
        if r.header("docker-distribution-api-version") != Some("registry/2.0") {
            missing.push(format!("{method} /v2/{path} -> {}: {:?}", r.status, r.headers));
        }
    }
    assert!(
        missing.is_empty(),
        "responses without Docker-Distribution-Api-Version: registry/2.0:\n  {}",
        missing.join("\n  ")
    );
}

#[test]
fn ns_is_echoed_in_oci_namespace() {
    let s = Scenario::start(Upstream::plain(), &ImageSpec::single(707, &[1000]), Format::Oci, |b, _, _| b);
    let layer = s.image.info.largest_layer();
    let q = format!("?ns={NAME}");
    for (method, path) in [
        ("GET", format!("{REPO}/manifests/{TAG}{q}")),
        ("HEAD", format!("{REPO}/manifests/{TAG}{q}")),
        ("GET", format!("{REPO}/blobs/{}{q}", layer.digest)),
        ("HEAD", format!("{REPO}/blobs/{}{q}", layer.digest)),
        ("GET", format!("{REPO}/manifests/no-such-tag{q}")),
    ] {
        let r = http::Request::new(method, &s.mirror.v2(&path)).accept_manifests().send();
        assert_header(&r, "oci-namespace", NAME, &format!("{method} /v2/{path} -> {}", r.status));
    }
}

#[test]
fn writes_are_unsupported_405() {
    let s = Scenario::plain_default_ns(&ImageSpec::single(708, &[1000]));
    let d = &s.image.info.largest_layer().digest;
    let cases: Vec<(&str, String)> = vec![
        ("PUT", format!("{REPO}/manifests/{TAG}")),
        ("PUT", format!("{NAME}/{REPO}/manifests/{TAG}")),
        ("DELETE", format!("{REPO}/manifests/{TAG}")),
        ("DELETE", format!("{REPO}/manifests/{}", s.image.info.top.digest)),
        ("POST", format!("{REPO}/manifests/{TAG}")),
        ("PATCH", format!("{REPO}/manifests/{TAG}")),
        ("DELETE", format!("{REPO}/blobs/{d}")),
        ("PUT", format!("{REPO}/blobs/{d}")),
        ("POST", format!("{REPO}/blobs/uploads/")),
        ("POST", format!("{REPO}/blobs/uploads/?mount={d}&from=other/repo")),
        ("POST", format!("{REPO}/blobs/uploads/?digest={d}")),
        ("PATCH", format!("{REPO}/blobs/uploads/0b1c2d3e-uuid")),
        ("PUT", format!("{REPO}/blobs/uploads/0b1c2d3e-uuid?digest={d}")),
        ("GET", format!("{REPO}/blobs/uploads/0b1c2d3e-uuid")),
        ("HEAD", format!("{REPO}/blobs/uploads/0b1c2d3e-uuid")),
        ("DELETE", format!("{REPO}/blobs/uploads/0b1c2d3e-uuid")),
    ];
    let mut failures = Vec::new();
    for (method, path) in &cases {
        let r = http::Request::new(method, &s.mirror.v2(path))
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .body(if *method == "PUT" || *method == "PATCH" || *method == "POST" { "{}" } else { "" })
            .send();
        if let Some(p) = r.oci_error_mismatch_for(method, 405, Some("UNSUPPORTED")) {
            failures.push(format!("{method} /v2/{path}: {p}"));
        }
    }
    assert!(
        failures.is_empty(),
        "pull-only violations:\n  {}\n{}",
        failures.join("\n  "),
        s.mirror.explain()
    );
    assert_eq!(s.proxy.total(), 0, "writes must never reach the upstream");
}

#[test]
fn catalog_is_not_offered() {
    let s = Scenario::plain_default_ns(&ImageSpec::single(709, &[1000]));
    for path in ["_catalog", "_catalog?n=10"] {
        let r = http::Request::get(&s.mirror.v2(path)).send();
        assert_eq!(r.status, 404, "GET /v2/{path}: {}", r.text());
        assert_header(&r, "docker-distribution-api-version", "registry/2.0", path);
    }
    assert_eq!(s.proxy.total(), 0, "the catalog must not be asked upstream");
}

#[test]
fn upstream_404_is_manifest_or_blob_unknown() {
    let s = Scenario::plain_default_ns(&ImageSpec::single(710, &[1000]));
    let cases = [
        ("GET", format!("{REPO}/manifests/no-such-tag"), 404, "MANIFEST_UNKNOWN"),
        ("GET", format!("{REPO}/manifests/{ABSENT}"), 404, "MANIFEST_UNKNOWN"),
        ("GET", "team/nothing-here/manifests/v1".to_string(), 404, "MANIFEST_UNKNOWN"),
        ("GET", format!("{REPO}/blobs/{ABSENT}"), 404, "BLOB_UNKNOWN"),
        ("GET", format!("team/nothing-here/blobs/{ABSENT}"), 404, "BLOB_UNKNOWN"),
    ];
    for (method, path, status, code) in &cases {
        s.proxy.reset();
        let r = http::Request::new(method, &s.mirror.v2(path)).accept_manifests().send();
        r.assert_oci_error(*status, code, &format!("{method} /v2/{path}"));
        assert!(
            s.proxy.total() > 0,
            "{method} /v2/{path}: the mirror must ask the upstream before answering 404"
        );
    }
    for path in [format!("{REPO}/manifests/no-such-tag"), format!("{REPO}/blobs/{ABSENT}")] {
        let r = http::Request::head(&s.mirror.v2(&path)).send();
        assert_eq!(r.status, 404, "HEAD /v2/{path}");
    }
}

#[test]
fn unreachable_upstream_is_503_unavailable() {
    // A registry whose endpoint nobody listens on …
    let mirror = Mirror::builder()
        .registry(RegistryConfig::new(NAME).endpoint(&format!("http://127.0.0.1:{}", dead_port())))
        .default_ns(NAME)
        .start();
    let paths = [format!("{REPO}/manifests/{TAG}"), format!("{REPO}/blobs/{ABSENT}")];
    for path in &paths {
        let t = Instant::now();
        let r = http::Request::get(&mirror.v2(path)).accept_manifests().send();
        r.assert_oci_error(503, "UNAVAILABLE", &format!("GET /v2/{path}, dead endpoint"));
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "an unreachable upstream must fail fast, took {:?}",
            t.elapsed()
        );
        assert_eq!(http::Request::head(&mirror.v2(path)).send().status, 503, "HEAD /v2/{path}");
    }

    // … and a proxy that resets every connection.
    let s = Scenario::plain_default_ns(&ImageSpec::single(711, &[1000]));
    s.proxy.set_fault(Fault::Refuse);
    for path in &paths {
        let r = http::Request::get(&s.mirror.v2(path)).accept_manifests().send();
        r.assert_oci_error(503, "UNAVAILABLE", &format!("GET /v2/{path}, connections reset"));
    }
}

#[test]
fn unconfigured_loopback_upstream_is_denied_403() {
    // The mirror knows `up.test`; a client naming the proxy's loopback address
    // directly must not make the mirror an open proxy to it.
    let s = Scenario::start(Upstream::plain(), &ImageSpec::single(712, &[1000]), Format::Oci, |b, _, _| b);
    let port = s.proxy.port();
    let cases = [
        format!("{REPO}/manifests/{TAG}?ns=localhost%3A{port}"),
        format!("{REPO}/manifests/{TAG}?ns=localhost:{port}"),
        format!("{REPO}/manifests/{TAG}?ns=127.0.0.1%3A{port}"),
        format!("{REPO}/blobs/{ABSENT}?ns=localhost%3A{port}"),
        format!("localhost:{port}/{REPO}/manifests/{TAG}"),
        format!("127.0.0.1:{port}/{REPO}/manifests/{TAG}"),
    ];
    for path in &cases {
        let r = http::Request::get(&s.mirror.v2(path)).accept_manifests().send();
        r.assert_oci_error(403, "DENIED", &format!("GET /v2/{path}"));
    }
    assert_eq!(
        s.proxy.total() + s.proxy.refused_connections() as usize,
        0,
        "an unconfigured loopback upstream must never be contacted"
    );
}

#[test]
fn no_upstream_determinable_is_400() {
    let up = Upstream::plain();
    let mirror = Mirror::builder().registry(RegistryConfig::direct(NAME, &up)).start();
    for path in [format!("{REPO}/manifests/{TAG}"), format!("{REPO}/blobs/{ABSENT}")] {
        let r = http::Request::get(&mirror.v2(&path)).accept_manifests().send();
        if let Some(p) = r.oci_error_mismatch(400, None) {
            panic!("GET /v2/{path} without ns, in-path host or defaultNs: {p}");
        }
    }
}

#[test]
fn wrong_upstream_credentials_are_denied_403() {
    for up in [Upstream::basic(), Upstream::bearer()] {
        let work = crate::support::tempdir("work");
        image::seed(&up, work.path(), &ImageSpec::single(713, &[1000]), REPO, TAG, Format::Oci);
        let mirror = Mirror::builder()
            .registry(
                RegistryConfig::new(NAME)
                    .endpoint(&up.url())
                    .auth(crate::support::upstream::USER, "wrong-password"),
            )
            .default_ns(NAME)
            .start();
        let r = http::Request::get(&mirror.v2(&format!("{REPO}/manifests/{TAG}"))).accept_manifests().send();
        r.assert_oci_error(403, "DENIED", &format!("{:?} upstream, wrong password", up.auth()));
    }
}
