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
        let r = match http::Request::new(c.method, &url).accept_manifests().try_send() {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{}: {} {}: {e}", c.name, c.method, c.path));
                continue;
            }
        };
        if let Some(p) = r.oci_error_mismatch_for(c.method, c.status, Some(c.code)) {
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

#[test]
fn unlisted_non_public_hosts_are_denied() {
    // Every spelling a URL parser reads as loopback, unspecified or v4-embedding
    // (issue 8 item 1): 403 DENIED, as `?ns=` and as an in-path host.
    let s = scenario();
    let p = crate::support::dead_port();
    let enc = |v: &str| -> String { form_urlencoded::byte_serialize(v.as_bytes()).collect() };
    let plain =
        ["2130706433", "127.1", "0x7f.1", "0177.0.0.1", "0x7f000001", "localhost", "0.0.0.0", "127.0.0.1"];
    let bracketed = ["[::1]", "[::ffff:127.0.0.1]", "[64:ff9b::7f00:1]"];
    let mut cases = Vec::new();
    for h in plain.iter().chain(&bracketed) {
        let ns = enc(&format!("{h}:{p}"));
        cases.push(case("ns, manifest", "GET", &format!("/v2/team/app/manifests/v1?ns={ns}"), 403, "DENIED"));
        cases.push(case("ns, blob", "GET", &format!("/v2/team/app/blobs/{ABSENT}?ns={ns}"), 403, "DENIED"));
        cases.push(case("ns, HEAD", "HEAD", &format!("/v2/team/app/manifests/v1?ns={ns}"), 403, "DENIED"));
    }
    for h in plain {
        cases.push(case("in-path", "GET", &format!("/v2/{h}:{p}/team/app/manifests/v1"), 403, "DENIED"));
    }
    check(&s, &cases, true);
}

#[test]
fn malformed_references_are_400_for_any_method() {
    // The OCI conformance suite (issue 8 item 13): the reference is validated before
    // the method, so a write with a malformed digest is 400, not 405.
    let s = scenario();
    let cases = vec![
        case("PUT bad digest", "PUT", "/v2/team/app/manifests/sha256:totallywrong", 400, "DIGEST_INVALID"),
        case(
            "DELETE bad digest",
            "DELETE",
            "/v2/team/app/manifests/sha256:totallywrong",
            400,
            "DIGEST_INVALID",
        ),
        case("POST bad digest", "POST", "/v2/team/app/manifests/sha256:totallywrong", 400, "DIGEST_INVALID"),
        case(
            "PATCH bad digest",
            "PATCH",
            "/v2/team/app/manifests/sha256:totallywrong",
            400,
            "DIGEST_INVALID",
        ),
        case("DELETE bad blob digest", "DELETE", "/v2/team/app/blobs/sha256:abc", 400, "DIGEST_INVALID"),
        case("PUT well-formed", "PUT", "/v2/team/app/manifests/v1", 405, "UNSUPPORTED"),
        case("DELETE well-formed", "DELETE", &format!("/v2/team/app/manifests/{ABSENT}"), 405, "UNSUPPORTED"),
        case("GET bad digest", "GET", "/v2/team/app/manifests/sha256:totallywrong", 400, "DIGEST_INVALID"),
    ];
    check(&s, &cases, true);
}

#[test]
fn credentials_in_endpoint_urls_are_refused_at_start() {
    // issue 8 item 9: userinfo in an endpoint URL leaks into logs and metrics.
    use crate::support::mirror::{Mirror, RegistryConfig};
    const SECRET: &str = "Zq-3e2e-secret";
    let spellings = [
        RegistryConfig::new("a.test").endpoint(&format!("https://user:{SECRET}@a.test")),
        RegistryConfig::new("a.test").endpoint(&format!("https://{SECRET}@a.test")),
        RegistryConfig::new("a.test").endpoint(&format!("https://:{SECRET}@a.test:5000/")),
        RegistryConfig::new("a.test").endpoint(&format!("http://user%40corp:{SECRET}@127.0.0.1:5000")),
        RegistryConfig::new("a.test")
            .endpoints(&["https://mirror.a.test", &format!("https://u:{SECRET}@a.test")]),
    ];
    let mut failures = Vec::new();
    for r in spellings {
        let f = Mirror::builder().registry(r).start_expecting_failure();
        if !(f.exited && f.code.is_some_and(|c| c != 0)) {
            failures.push(format!("started (exit {:?}, exited {}):\n{}", f.code, f.exited, f.config));
        } else if !f.output.contains("registries[0]") || !f.output.contains("auth") {
            failures.push(format!("error names neither registries[0] nor auth:\n{}", f.output));
        }
        if f.output.contains(SECRET) {
            failures.push(format!("the password was printed:\n{}", f.output));
        }
    }
    assert!(
        failures.is_empty(),
        "{} endpoint spellings with credentials:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
