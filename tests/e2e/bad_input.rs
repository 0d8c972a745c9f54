//! Malformed requests get their 4xx with the OCI error envelope, and never reach
//! the upstream: bad repository names, bad digests, malformed tags.
//!
//! Each table runs against one mirror; every case is checked and all mismatches are
//! reported together, each naming its case.

use crate::support::Explain;
use crate::support::http;
use crate::support::image::ImageSpec;
use crate::support::scenario::Scenario;

/// A valid digest that no upstream holds.
const ABSENT: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

struct Case {
    name: &'static str,
    method: &'static str,
    path: String,
    status: u16,
    code: &'static str,
}

fn case(name: &'static str, method: &'static str, path: &str, status: u16, code: &'static str) -> Case {
    Case { name, method, path: path.to_string(), status, code }
}

/// Runs every case; checks status, envelope and code (HEAD: status only, no body),
/// and, if `upstream_untouched`, that no request reached the upstream.
fn check(s: &Scenario, cases: &[Case], upstream_untouched: bool) {
    let mut failures = Vec::new();
    for c in cases {
        s.proxy.reset();
        let url = format!("{}{}", s.mirror.url(), c.path);
        let r = match http::try_request(c.method, &url, &[("accept", http::ACCEPT_MANIFESTS)]) {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{}: {} {}: {e}", c.name, c.method, c.path));
                continue;
            }
        };
        let problem = if c.method == "HEAD" {
            (r.status != c.status).then(|| format!("status {} (wanted {})", r.status, c.status))
        } else {
            r.oci_error_mismatch(c.status, Some(c.code))
        };
        if let Some(p) = problem {
            failures.push(format!("{}: {} {}: {p}", c.name, c.method, c.path));
        }
        if r.header("docker-distribution-api-version") != Some("registry/2.0") {
            failures.push(format!(
                "{}: {} {}: no Docker-Distribution-Api-Version: registry/2.0",
                c.name, c.method, c.path
            ));
        }
        if upstream_untouched && s.proxy.total() > 0 {
            failures.push(format!(
                "{}: {} {}: reached the upstream:\n{}",
                c.name,
                c.method,
                c.path,
                s.proxy.explain()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n  {}\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n  "),
        s.mirror.explain()
    );
}

fn scenario() -> Scenario {
    Scenario::plain_default_ns(&ImageSpec::single(601, &[1000]))
}

#[test]
fn bad_repository_names_are_name_invalid() {
    let s = scenario();
    let long = "a".repeat(256);
    let cases = vec![
        case("dot-dot component", "GET", "/v2/team/../app/manifests/v1", 400, "NAME_INVALID"),
        case("leading dot-dot", "GET", "/v2/../team/app/manifests/v1", 400, "NAME_INVALID"),
        case("encoded dot-dot", "GET", "/v2/team/%2e%2e/app/manifests/v1", 400, "NAME_INVALID"),
        case("encoded DOT-DOT", "GET", "/v2/team/%2E%2E/app/manifests/v1", 400, "NAME_INVALID"),
        case("encoded slash", "GET", "/v2/team%2Fapp/manifests/v1", 400, "NAME_INVALID"),
        case("encoded slash lower", "GET", "/v2/team%2fapp/manifests/v1", 400, "NAME_INVALID"),
        case("empty component", "GET", "/v2/team//app/manifests/v1", 400, "NAME_INVALID"),
        case("uppercase", "GET", "/v2/Team/app/manifests/v1", 400, "NAME_INVALID"),
        case("trailing separator", "GET", "/v2/team/app-/manifests/v1", 400, "NAME_INVALID"),
        case("too long", "GET", &format!("/v2/team/{long}/manifests/v1"), 400, "NAME_INVALID"),
        case("blob, dot-dot", "GET", &format!("/v2/team/../app/blobs/{ABSENT}"), 400, "NAME_INVALID"),
        case("blob, uppercase", "GET", &format!("/v2/Team/app/blobs/{ABSENT}"), 400, "NAME_INVALID"),
        case("blob, empty component", "GET", &format!("/v2/team//app/blobs/{ABSENT}"), 400, "NAME_INVALID"),
        case("HEAD, uppercase", "HEAD", "/v2/Team/app/manifests/v1", 400, "NAME_INVALID"),
    ];
    check(&s, &cases, true);
}

#[test]
fn bad_blob_digests_are_digest_invalid() {
    let s = scenario();
    let cases = vec![
        case("md5", "GET", "/v2/team/app/blobs/md5:d41d8cd98f00b204e9800998ecf8427e", 400, "DIGEST_INVALID"),
        case("too short", "GET", "/v2/team/app/blobs/sha256:abc", 400, "DIGEST_INVALID"),
        case("too long", "GET", &format!("/v2/team/app/blobs/{ABSENT}0"), 400, "DIGEST_INVALID"),
        case(
            "not hex",
            "GET",
            &format!("/v2/team/app/blobs/sha256:{}", "z".repeat(64)),
            400,
            "DIGEST_INVALID",
        ),
        case("no algorithm", "GET", &format!("/v2/team/app/blobs/{}", "0".repeat(64)), 400, "DIGEST_INVALID"),
        case("empty hex", "GET", "/v2/team/app/blobs/sha256:", 400, "DIGEST_INVALID"),
        case("HEAD too short", "HEAD", "/v2/team/app/blobs/sha256:abc", 400, "DIGEST_INVALID"),
    ];
    check(&s, &cases, true);
}

#[test]
fn malformed_tags_are_manifest_unknown() {
    // The OCI conformance suite expects 404 MANIFEST_UNKNOWN for these.
    let s = scenario();
    let long = "t".repeat(129);
    let cases = vec![
        case("leading dash", "GET", "/v2/team/app/manifests/-v1", 404, "MANIFEST_UNKNOWN"),
        case("leading dot", "GET", "/v2/team/app/manifests/.v1", 404, "MANIFEST_UNKNOWN"),
        case("129 characters", "GET", &format!("/v2/team/app/manifests/{long}"), 404, "MANIFEST_UNKNOWN"),
        case("HEAD leading dash", "HEAD", "/v2/team/app/manifests/-v1", 404, "MANIFEST_UNKNOWN"),
    ];
    check(&s, &cases, false);
}
