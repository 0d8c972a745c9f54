//! Security hardening (issue 8), tried as an attacker would against the real
//! binary: no address spelling reaches loopback, client-visible errors give a
//! short reason and no transport detail, per-host state stays bounded, one
//! registry's fill, manifest or credentials never serve another, the proxy
//! environment does not bypass the address filter, endpoint URLs hold no
//! credentials, silent connections are dropped, htpasswd users are not
//! discoverable by timing, corrupted cache files are never served, and a
//! malformed reference is 400 for any method.

use std::collections::BTreeSet;
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::support::http::{self, ACCEPT_MANIFESTS};
use crate::support::image::{self, DOCKER_MANIFEST, Format, ImageInfo, ImageLayout, ImageSpec, OCI_MANIFEST};
use crate::support::listener::CountingListener;
use crate::support::mirror::{Mirror, RegistryConfig, basic_auth, binary};
use crate::support::proxy::{BodyEnd, Canned, Fault, Proxy};
use crate::support::scenario::{NAME, REPO, Scenario, TAG, raw_pull};
use crate::support::upstream::Upstream;
use crate::support::{
    Explain, dead_port, digest_of, explain_all, files_under, hex_of, logs, metrics, require_tool, rt, run,
    run_ok, tempdir, wait_until,
};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A query-string value, percent-encoded (`[::1]:5000` → `%5B%3A%3A1%5D%3A5000`).
fn enc(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// Every error message of an OCI error envelope, joined (empty if the body is not one).
fn error_messages(r: &http::Response) -> String {
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
    v.get("errors")
        .and_then(|e| e.as_array())
        .map(|errors| {
            errors.iter().filter_map(|e| e.get("message")?.as_str().map(str::to_owned)).collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .join(" | ")
}

/// Whether `text` holds `number` as a whole number (not as part of a longer one).
fn has_number(text: &str, number: u16) -> bool {
    let n = number.to_string();
    text.split(|c: char| !c.is_ascii_digit()).any(|w| w == n)
}

/// `Threads` and `VmRSS` (bytes) of a process, from `/proc/<pid>/status`.
fn threads_and_rss(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/status: {e}"));
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status:\n{status}"))
    };
    (field("Threads:"), field("VmRSS:") * 1024)
}

/// The server's log lines at WARN level (the harness's own lines excluded).
fn warn_lines(mirror: &Mirror) -> Vec<String> {
    logs::lines_at_level(&mirror.log_without_harness_lines(), "WARN")
}

/// Waits up to `limit` for the server to close `conn` (EOF or reset), reading and
/// discarding whatever it sends; how long that took, None if it is still open.
fn wait_closed(conn: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.checked_sub(start.elapsed()).filter(|l| !l.is_zero())?;
        conn.set_read_timeout(Some(left)).expect("setting a read timeout");
        match conn.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return None;
            }
            // Reset by the server: closed too.
            Err(_) => return Some(start.elapsed()),
        }
    }
}

/// Reads one HTTP/1.1 response (head and a `Content-Length` body) from `conn`;
/// returns its head.
fn read_http1_response(conn: &mut TcpStream) -> Result<String, String> {
    conn.set_read_timeout(Some(Duration::from_secs(10))).expect("setting a read timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match conn.read(&mut buf) {
            Ok(0) => return Err(format!("connection closed before a full response head: {got:?}")),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("reading the response head: {e}")),
        }
    };
    let head = String::from_utf8_lossy(&got[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case("content-length").then(|| v.trim().parse().ok())?
        })
        .ok_or_else(|| format!("no Content-Length in {head:?}"))?;
    while got.len() < head_end + length {
        match conn.read(&mut buf) {
            Ok(0) => return Err("connection closed before the end of the body".to_string()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("reading the body: {e}")),
        }
    }
    Ok(head)
}

/// A request that must succeed within `limit` (connection errors are retried
/// within it, as a real client would); the response, or why not.
fn request_succeeding_within(
    mirror: &Mirror,
    path: &str,
    headers: &[(&str, &str)],
    limit: Duration,
) -> Result<(http::Response, Duration), String> {
    let start = Instant::now();
    let mut errors = Vec::new();
    loop {
        let Some(left) = limit.checked_sub(start.elapsed()).filter(|l| !l.is_zero()) else {
            return Err(format!("no response within {limit:?}; attempts: {errors:?}"));
        };
        match mirror.request("GET", path).headers(headers).timeout(left).try_send() {
            Ok(r) => return Ok((r, start.elapsed())),
            Err(e) => errors.push(e),
        }
    }
}

/// `ociregistry verify --image-path <cache>`: (exit code, stdout + stderr).
fn verify(cache: &Path) -> (Option<i32>, String) {
    let out = run(Command::new(binary()).arg("verify").arg("--image-path").arg(cache));
    let text = format!(
        "---- stdout ----\n{}\n---- stderr ----\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// Every manifest digest (top and per platform) and blob of an image.
fn all_digests(info: &ImageInfo) -> (Vec<String>, Vec<String>) {
    let manifests = info.manifest_digests();
    let blobs = info.blobs().into_iter().map(|b| b.digest).collect();
    (manifests, blobs)
}

// ---------------------------------------------------------------------------
// 1. Address spellings
// ---------------------------------------------------------------------------

/// Counting listeners on 127.0.0.1:P and, when this host has IPv6 loopback, [::1]:P.
struct Loopback {
    v4: CountingListener,
    v6: Option<CountingListener>,
}

impl Loopback {
    fn start() -> Loopback {
        let v4 = CountingListener::loopback();
        v4.self_check();
        let v6 = CountingListener::bind(SocketAddr::from((Ipv6Addr::LOCALHOST, v4.port()))).ok();
        match &v6 {
            Some(l) => l.self_check(),
            None => eprintln!("[::1]:{} cannot be bound here: only 127.0.0.1 counts", v4.port()),
        }
        Loopback { v4, v6 }
    }

    fn port(&self) -> u16 {
        self.v4.port()
    }

    fn connections(&self) -> usize {
        self.v4.count() + self.v6.as_ref().map_or(0, |l| l.count())
    }
}

impl Explain for Loopback {
    fn explain(&self) -> String {
        format!("{}{}", self.v4.explain(), self.v6.as_ref().map(|l| l.explain()).unwrap_or_default())
    }
}

#[test]
fn every_spelling_of_a_non_public_address_is_denied_without_connecting() {
    // One loopback port for the `?ns=` cases and another for the in-path ones, so
    // each spelling names a host the mirror has not seen before.
    let for_ns = Loopback::start();
    let for_path = Loopback::start();
    let mirror = Mirror::builder().start();

    // Spellings a URL parser reads as a loopback, unspecified or v4-embedding address.
    let plain =
        ["2130706433", "127.1", "0x7f.1", "0177.0.0.1", "0x7f000001", "localhost", "0.0.0.0", "127.0.0.1"];
    let bracketed = ["[::1]", "[::ffff:127.0.0.1]", "[64:ff9b::7f00:1]"];
    let mut cases: Vec<(String, &Loopback)> = Vec::new();
    for h in plain.iter().chain(&bracketed) {
        let host = format!("{h}:{}", for_ns.port());
        cases.push((format!("/v2/x/y/manifests/latest?ns={}", enc(&host)), &for_ns));
    }
    // In-path hosts, where the path grammar allows one (not bracketed IPv6).
    for h in plain {
        cases.push((format!("/v2/{h}:{}/x/y/manifests/latest", for_path.port()), &for_path));
    }

    let mut failures = Vec::new();
    for (path, listener) in &cases {
        let before = listener.connections();
        let mut problems = Vec::new();
        match mirror.request("GET", path).accept_manifests().timeout(Duration::from_secs(20)).try_send() {
            Ok(r) => problems.extend(r.oci_error_mismatch(403, Some("DENIED"))),
            Err(e) => problems.push(e),
        }
        let made = listener.connections() - before;
        if made > 0 {
            problems.push(format!("the mirror opened {made} connection(s) to the loopback listener"));
        }
        if !problems.is_empty() {
            failures.push(format!("GET {path}: {}", problems.join("; ")));
        }
    }
    let context: [&dyn Explain; 3] = [&mirror, &for_ns, &for_path];
    assert!(
        failures.is_empty(),
        "a registry that is not configured and not at a public address must be refused with \
         403 DENIED before any connection is made; {} of {} requests were not:\n  {}\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n  "),
        explain_all(&context)
    );
    let total = for_ns.connections() + for_path.connections();
    assert_eq!(total, 0, "connections reached loopback later\n{}", explain_all(&context));
}

// ---------------------------------------------------------------------------
// 2. Error bodies
// ---------------------------------------------------------------------------

#[test]
fn client_errors_give_a_short_reason_and_no_transport_detail() {
    let closed = dead_port();
    let mirror = Mirror::builder()
        .registry(RegistryConfig::new("closed.test").endpoint(&format!("http://127.0.0.1:{closed}")))
        .start();
    let unlisted = dead_port();
    let absent = format!("sha256:{}", "0".repeat(64));
    let cases = [
        (
            "configured, closed port: manifest",
            "/v2/team/app/manifests/v1?ns=closed.test".to_string(),
            Some(closed),
        ),
        (
            "configured, closed port: manifest again",
            "/v2/team/app/manifests/v2?ns=closed.test".to_string(),
            Some(closed),
        ),
        (
            "configured, closed port: blob",
            format!("/v2/team/app/blobs/{absent}?ns=closed.test"),
            Some(closed),
        ),
        // The client named this port itself: only the transport detail is forbidden.
        (
            "unconfigured localhost",
            format!("/v2/team/app/manifests/v1?ns={}", enc(&format!("localhost:{unlisted}"))),
            None,
        ),
        ("unconfigured localhost, in-path", format!("/v2/localhost:{unlisted}/team/app/manifests/v1"), None),
    ];
    let forbidden = ["os error", "connection refused", "refused", "resolves", "127.0.0.1"];
    let reasons = ["unreachable", "not allowed", "timed out"];
    let mut failures = Vec::new();
    for (what, path, port) in &cases {
        let r = match mirror.request("GET", path).accept_manifests().try_send() {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{what}: GET {path}: {e}"));
                continue;
            }
        };
        if let Some(problem) = r.oci_error_mismatch(r.status, None) {
            failures.push(format!("{what}: GET {path}: not an OCI error: {problem}"));
            continue;
        }
        if r.status < 400 {
            failures.push(format!("{what}: GET {path}: status {} for an unreachable upstream", r.status));
        }
        let message = error_messages(&r);
        let lower = message.to_lowercase();
        for f in forbidden {
            if lower.contains(f) {
                failures.push(format!("{what}: GET {path}: the message reveals {f:?}: {message:?}"));
            }
        }
        if let Some(port) = port
            && has_number(&message, *port)
        {
            failures.push(format!(
                "{what}: GET {path}: the message reveals the endpoint port {port}: {message:?}"
            ));
        }
        if !reasons.iter().any(|reason| lower.contains(reason)) {
            failures.push(format!(
                "{what}: GET {path}: the message should give one of the short reasons {reasons:?}: {message:?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "client-visible errors must carry a short, stable reason, never transport detail \
         (a port and DNS scanner otherwise):\n  {}\n{}",
        failures.join("\n  "),
        mirror.explain()
    );
    let log = mirror.log_without_harness_lines();
    assert!(
        log.contains("Connection refused") || log.contains("os error"),
        "the operator's log should keep the transport detail of the closed port\n{}",
        mirror.explain()
    );
}

// ---------------------------------------------------------------------------
// 3. Bounded per-host state
// ---------------------------------------------------------------------------

/// How many distinct client-named registries the flood uses.
const FLOOD: usize = 2000;
/// How long the flood may take (a few seconds are enough for a healthy server).
const FLOOD_DEADLINE: Duration = Duration::from_secs(30);

#[test]
fn thousands_of_client_named_hosts_leave_bounded_state() {
    let s = Scenario::start(Upstream::plain(), &ImageSpec::single(1301, &[1000]), Format::Oci, |b, _, _| {
        b.metrics()
    });
    // Client-named registries that fail fast without any network: `localhost`
    // resolves from /etc/hosts, to loopback, which the address rule refuses. (Names
    // that need DNS are no good here: this machine kind's resolver drops queries
    // under load, a 5 s wait each.)
    let names: Vec<String> = (0..FLOOD).map(|i| format!("localhost:{}", 20000 + i)).collect();
    let base = s.mirror.url();
    let started = Instant::now();
    // 16 clients at a time. Each request fails fast by itself; a server whose
    // per-host background work (probes, lookups) swamps it does not finish in time.
    let outcomes: Vec<Result<u16, String>> = rt().block_on(async {
        let gate = Arc::new(tokio::sync::Semaphore::new(16));
        let tasks: Vec<_> = names
            .iter()
            .map(|n| {
                let url = format!("{base}/v2/x/y/manifests/latest?ns={}", enc(n));
                let gate = gate.clone();
                tokio::spawn(async move {
                    let _permit = gate.acquire_owned().await.expect("semaphore");
                    http::Request::get(&url).try_send_async().await.map(|r| r.status)
                })
            })
            .collect();
        let deadline = tokio::time::Instant::now() + FLOOD_DEADLINE;
        let mut out = Vec::new();
        for t in tasks {
            let abort = t.abort_handle();
            out.push(match tokio::time::timeout_at(deadline, t).await {
                Ok(joined) => joined.unwrap_or_else(|e| Err(format!("client task: {e}"))),
                Err(_) => {
                    abort.abort();
                    Err(format!("not answered within {FLOOD_DEADLINE:?} of the flood's start"))
                }
            });
        }
        out
    });
    let took = started.elapsed();
    let unanswered: Vec<&String> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    eprintln!("{FLOOD} client-named registries asked for in {took:?}; {} unanswered", unanswered.len());
    let mut failures = Vec::new();
    if !unanswered.is_empty() {
        failures.push(format!(
            "{} of {FLOOD} requests were not answered within {FLOOD_DEADLINE:?} (each fails fast on \
             its own: per-host background work is swamping the server), e.g. {:?}",
            unanswered.len(),
            unanswered.first()
        ));
    }
    assert!(
        outcomes.iter().all(|o| o.as_ref().map_or(true, |s| *s >= 400)),
        "a client-named registry that cannot be reached answered 2xx"
    );

    // The configured registry still works and keeps its own label.
    raw_pull(&s.mirror, REPO, TAG, &format!("?ns={NAME}"));

    let text = s.mirror.metrics_text();
    let samples = metrics::parse(&text);
    let registries: BTreeSet<&str> =
        samples.iter().filter_map(|s| s.labels.get("registry").map(String::as_str)).collect();
    let up: Vec<String> = samples
        .iter()
        .filter(|s| s.name == "ociregistry_upstream_up")
        .map(|s| format!("{:?} {}", s.labels, s.value))
        .collect();
    let up_unconfigured: Vec<&String> =
        up.iter().filter(|l| !l.contains(&format!("\"registry\": \"{NAME}\""))).collect();
    let (threads, rss) = threads_and_rss(s.mirror.pid());
    let warns = warn_lines(&s.mirror);
    eprintln!(
        "after the flood: {} registry label values, {} upstream_up series ({} not configured), \
         {threads} threads, RSS {} MiB, {} WARN lines",
        registries.len(),
        up.len(),
        up_unconfigured.len(),
        rss >> 20,
        warns.len()
    );

    if registries.len() > 70 {
        failures.push(format!("{} distinct registry= label values (at most ~70)", registries.len()));
    }
    if !registries.contains(NAME) {
        failures.push(format!("the configured registry {NAME} lost its own registry= label: {registries:?}"));
    }
    if !up_unconfigured.is_empty() {
        failures.push(format!(
            "ociregistry_upstream_up has {} series for registries that are not configured (only {NAME} is), e.g. {:?}",
            up_unconfigured.len(),
            up_unconfigured.iter().take(3).collect::<Vec<_>>()
        ));
    }
    if threads >= 64 {
        failures.push(format!("{threads} threads (fewer than 64 expected)"));
    }
    if rss >= 64 << 20 {
        failures.push(format!("RSS {} MiB (under 64 MiB expected)", rss >> 20));
    }
    if warns.len() >= 50 {
        failures.push(format!(
            "{} WARN lines in the log (fewer than 50 expected), e.g.:\n    {}",
            warns.len(),
            warns.iter().take(5).cloned().collect::<Vec<_>>().join("\n    ")
        ));
    }
    assert!(
        failures.is_empty(),
        "{FLOOD} client-named registries must leave bounded state (a bounded cache, no background \
         probes, no unbounded labels):\n  {}\n{}",
        failures.join("\n  "),
        s.mirror.explain()
    );
}

// ---------------------------------------------------------------------------
// 4. Fills are per (registry, digest)
// ---------------------------------------------------------------------------

#[test]
fn a_stalled_fill_through_one_registry_does_not_hold_up_another() {
    let slow_up = Upstream::plain();
    let good_up = Upstream::plain();
    let work = tempdir("fill-sharing");
    let layout = ImageLayout::generate(&work.path().join("layout"), &ImageSpec::single(1401, &[4 << 20]));
    let on_slow = image::seed_layout(&slow_up, &layout, REPO, TAG, Format::Oci);
    let on_good = image::seed_layout(&good_up, &layout, REPO, TAG, Format::Oci);
    assert_eq!(on_slow.info.blobs(), on_good.info.blobs(), "both upstreams must hold the same blobs");
    let layer = on_slow.info.largest_layer();
    let blob_path = format!("/blobs/{}", layer.digest);

    let slow = Proxy::start(&slow_up);
    let good = Proxy::start(&good_up);
    // 256 KiB, then nothing for 20 s: a client dripping a popular layer.
    slow.set_fault(Fault::StallBlobBodiesAfter(256 << 10, 20));
    let mirror = Mirror::builder()
        .registry(RegistryConfig::via_proxy("slow.test", &slow, &slow_up))
        .registry(RegistryConfig::via_proxy("good.test", &good, &good_up))
        .start();

    let slow_url = mirror.v2(&format!("{REPO}/blobs/{}?ns=slow.test", layer.digest));
    let slow_client = rt().spawn(async move { http::Request::get(&slow_url).stream(None).await });
    let stalled = wait_until(Duration::from_secs(10), || {
        slow.matching("GET", &blob_path).iter().any(|r| r.body_bytes >= 256 << 10)
    });
    assert!(
        stalled,
        "the download through slow.test should have started\n{}",
        explain_all(&[&mirror, &slow])
    );

    let t = Instant::now();
    let r = mirror
        .request("GET", &format!("/v2/{REPO}/blobs/{}?ns=good.test", layer.digest))
        .timeout(Duration::from_secs(5))
        .try_send();
    let took = t.elapsed();
    slow_client.abort();
    let context: [&dyn Explain; 3] = [&mirror, &slow, &good];
    let r = r.unwrap_or_else(|e| {
        panic!(
            "GET of the layer through good.test while slow.test's download of the same digest is \
             stalled: {e} — good.test's client waited on slow.test's download (fills must be \
             single-flight per registry and digest)\n{}",
            explain_all(&context)
        )
    });
    assert_eq!(r.status, 200, "through good.test: {}\n{}", r.text(), explain_all(&context));
    assert_eq!(digest_of(&r.body), layer.digest, "through good.test: wrong bytes\n{}", explain_all(&context));
    assert!(took < Duration::from_secs(5), "through good.test took {took:?}");
    assert!(
        good.count_ok("GET", &blob_path) >= 1,
        "good.test's own upstream should have served the layer\n{}",
        explain_all(&context)
    );
}

// ---------------------------------------------------------------------------
// 5. A cached manifest is never overwritten
// ---------------------------------------------------------------------------

#[test]
fn a_cached_manifest_keeps_its_media_type_when_another_registry_says_otherwise() {
    let upstream = Upstream::plain();
    let work = tempdir("manifest-type");
    let img = image::seed(&upstream, work.path(), &ImageSpec::single(1501, &[1000]), REPO, TAG, Format::Oci);
    let digest = img.info.top.digest.clone();
    assert_eq!(img.info.top.media_type, OCI_MANIFEST, "the test image is an OCI image manifest");
    let honest = Proxy::start(&upstream);
    // b.test serves the very same bytes, labelled as a Docker manifest.
    let liar = Proxy::start(&upstream);
    liar.set_fault(Fault::Replace {
        path_part: "/manifests/".to_string(),
        response: Canned::new(200, DOCKER_MANIFEST, img.info.top_bytes.clone())
            .header("docker-content-digest", &digest),
    });
    let mut mirror = Mirror::builder()
        .registry(RegistryConfig::via_proxy("a.test", &honest, &upstream))
        .registry(RegistryConfig::via_proxy("b.test", &liar, &upstream))
        .start();

    let fetch = |mirror: &Mirror, method: &str, ns: &str, reference: &str| -> http::Response {
        let path = format!("/v2/{REPO}/manifests/{reference}?ns={ns}");
        mirror
            .request(method, &path)
            .accept_manifests()
            .try_send()
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", mirror.explain()))
    };
    let check = |mirror: &Mirror, when: &str, cases: &[(&str, &str, &str)]| {
        let mut failures = Vec::new();
        for (method, ns, reference) in cases {
            let r = fetch(mirror, method, ns, reference);
            let ct = r.header("content-type").unwrap_or_default().to_string();
            if r.status != 200 {
                failures.push(format!("{method} {ns} {reference}: status {}: {}", r.status, r.text()));
            } else if ct != OCI_MANIFEST {
                failures.push(format!("{method} {ns} {reference}: Content-Type {ct:?}"));
            } else if *method == "GET" && r.body.as_ref() != img.info.top_bytes.as_slice() {
                failures.push(format!("{method} {ns} {reference}: other bytes than the manifest's"));
            }
        }
        assert!(
            failures.is_empty(),
            "{when}: the manifest's own mediaType is {OCI_MANIFEST}; a cached manifest must keep \
             it whatever another registry's Content-Type says:\n  {}\n{}",
            failures.join("\n  "),
            explain_all(&[mirror as &dyn Explain, &liar])
        );
    };

    check(&mirror, "fetched through a.test", &[("GET", "a.test", &digest)]);
    // Through b.test: by tag (a fresh fetch of the same digest) and by digest.
    for reference in [TAG, digest.as_str()] {
        let r = fetch(&mirror, "GET", "b.test", reference);
        eprintln!("GET b.test {reference}: {} Content-Type {:?}", r.status, r.header("content-type"));
    }
    assert!(
        liar.matching("GET", "/manifests/").iter().any(|r| r.end == BodyEnd::Replaced),
        "b.test's upstream should have been asked for the manifest (and lied about its type)\n{}",
        liar.explain()
    );
    let after = [
        ("GET", "a.test", digest.as_str()),
        ("HEAD", "a.test", digest.as_str()),
        ("GET", "b.test", digest.as_str()),
        ("GET", "b.test", TAG),
    ];
    check(&mirror, "after fetching through b.test", &after);
    mirror.restart();
    check(&mirror, "after a restart", &after);
}

// ---------------------------------------------------------------------------
// 6. Content is served only where it is linked
// ---------------------------------------------------------------------------

/// GETs and HEADs every manifest and blob of `info` through `public.test` (by `?ns=`
/// and in-path) and through another repository of `private.test`; none may be
/// served. With `want_404`, each must be the 404 the upstream's answer means.
#[track_caller]
fn assert_not_served_elsewhere(
    mirror: &Mirror,
    info: &ImageInfo,
    want_404: bool,
    with_other_repo: bool,
    when: &str,
) {
    let (manifests, blobs) = all_digests(info);
    let mut places = vec![
        (format!("/v2/{REPO}"), "?ns=public.test".to_string()),
        (format!("/v2/public.test/{REPO}"), String::new()),
    ];
    if with_other_repo {
        places.push(("/v2/other/repo".to_string(), "?ns=private.test".to_string()));
    }
    let mut failures = Vec::new();
    let mut total = 0;
    for (prefix, query) in &places {
        for (kind, digests, code) in
            [("manifests", &manifests, "MANIFEST_UNKNOWN"), ("blobs", &blobs, "BLOB_UNKNOWN")]
        {
            for d in digests {
                let path = format!("{prefix}/{kind}/{d}{query}");
                for method in ["GET", "HEAD"] {
                    total += 1;
                    let r = match mirror.request(method, &path).accept_manifests().try_send() {
                        Ok(r) => r,
                        Err(e) => {
                            failures.push(format!("{method} {path}: {e}"));
                            continue;
                        }
                    };
                    if (200..300).contains(&r.status) {
                        failures.push(format!("{method} {path}: SERVED ({})", r.status));
                    } else if want_404 && let Some(p) = r.oci_error_mismatch_for(method, 404, Some(code)) {
                        failures.push(format!("{method} {path}: {p}"));
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{when}: content cached from the credentialed private.test/{REPO} must not be readable \
         by digest through a name it is not linked to; {} of {total} requests:\n  {}\n{}",
        failures.len(),
        failures.join("\n  "),
        mirror.explain()
    );
}

#[test]
fn private_content_is_not_readable_through_another_registry_or_repository() {
    let mut private = Upstream::basic();
    let mut public = Upstream::plain();
    let work = tempdir("links");
    let img = image::seed(
        &private,
        work.path(),
        &ImageSpec::multi_platform(1601, &[1500, 40_000]),
        REPO,
        TAG,
        Format::Oci,
    );
    let mut mirror = Mirror::builder()
        .registry(RegistryConfig::direct("private.test", &private))
        .registry(RegistryConfig::direct("public.test", &public))
        .start();
    let private_ns = "?ns=private.test";
    let got = raw_pull(&mirror, REPO, TAG, private_ns);
    assert_eq!(got.top.digest, img.info.top.digest);
    let got = raw_pull(&mirror, &format!("private.test/{REPO}"), TAG, "");
    assert_eq!(got.top.digest, img.info.top.digest);

    // public.test answers 404 for all of it: so must the mirror.
    assert_not_served_elsewhere(&mirror, &img.info, true, true, "public.test up");

    public.kill();
    assert_not_served_elsewhere(&mirror, &img.info, false, false, "public.test down");

    // Links persist: with the private upstream gone too, a restarted mirror still
    // serves the image through private.test, and still not through public.test.
    private.kill();
    mirror.restart();
    let got = raw_pull(&mirror, REPO, TAG, private_ns);
    assert_eq!(got.top.digest, img.info.top.digest, "offline, after a restart, through private.test");
    assert_not_served_elsewhere(&mirror, &img.info, false, false, "both upstreams down, after a restart");

    mirror.reconfigure(|b| b.extra_yaml("airGapped: true"));
    mirror.restart();
    let got = raw_pull(&mirror, REPO, TAG, private_ns);
    assert_eq!(got.top.digest, img.info.top.digest, "air-gapped, through private.test");
    assert_not_served_elsewhere(&mirror, &img.info, true, false, "air-gapped");
}

// ---------------------------------------------------------------------------
// 7. Credentials go only to the registry's own token hosts
// ---------------------------------------------------------------------------

#[test]
fn credentials_are_not_sent_to_a_token_realm_on_another_host() {
    let upstream = Upstream::bearer();
    let work = tempdir("realm");
    let img = image::seed(&upstream, work.path(), &ImageSpec::single(1701, &[1000]), REPO, TAG, Format::Oci);
    let token = upstream.token_server().expect("a Bearer upstream has a token server");
    // The realm is http://127.0.0.1:<token port>/token: plain HTTP, another host:port
    // than the registry's endpoint http://127.0.0.1:<registry port>.
    assert_ne!(token.port(), upstream.port());
    token.reset();
    // No auth.tokenHosts: the realm's host:port is not the registry's own.
    let mirror =
        Mirror::builder().registry(RegistryConfig::direct("tok.test", &upstream).token_hosts(&[])).start();
    let r = mirror
        .request("GET", &format!("/v2/{REPO}/manifests/{TAG}?ns=tok.test"))
        .accept_manifests()
        .try_send()
        .unwrap_or_else(|e| panic!("GET manifest through tok.test: {e}"));
    let seen = token.requests();
    let with_credentials: Vec<_> = seen.iter().filter(|t| t.user.is_some()).collect();
    assert!(
        with_credentials.is_empty(),
        "the configured credentials were sent to the token realm {} (plain HTTP, another \
         host:port than the registry): {with_credentials:?}\n{}",
        token.realm(),
        explain_all(&[&mirror, &upstream])
    );
    eprintln!("token server requests without credentials: {}", seen.len());
    if let Some(problem) = r.oci_error_mismatch(403, Some("DENIED")) {
        panic!("a refused token realm should be 403 DENIED for the client: {problem}\n{}", mirror.explain());
    }

    // Listed under auth.tokenHosts (and the registry is plain http): the pull works.
    drop(mirror);
    token.reset();
    let token_host = format!("127.0.0.1:{}", token.port());
    let allowed = Mirror::builder()
        .registry(RegistryConfig::direct("tok.test", &upstream).scheme("http").token_hosts(&[&token_host]))
        .start();
    let got = raw_pull(&allowed, REPO, TAG, "?ns=tok.test");
    assert_eq!(got.top.digest, img.info.top.digest);
    assert!(
        token.issued() >= 1,
        "with tokenHosts the token server should have issued a token\n{}",
        token.explain()
    );
}

// ---------------------------------------------------------------------------
// 8. Proxy environment variables
// ---------------------------------------------------------------------------

#[test]
fn proxy_environment_does_not_carry_unlisted_hosts_past_the_filter() {
    let proxy = CountingListener::loopback();
    proxy.self_check();
    let url = proxy.url();
    let mut builder = Mirror::builder();
    for key in ["HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy", "http_proxy", "all_proxy"] {
        builder = builder.env(key, &url);
    }
    let mirror = builder.env("NO_PROXY", "").env("no_proxy", "").start();
    let mut failures = Vec::new();
    for ns in ["example.com", "localhost:1234", "kubernetes.default.svc"] {
        let before = proxy.count();
        let path = format!("/v2/library/alpine/manifests/latest?ns={}", enc(ns));
        match mirror.request("GET", &path).accept_manifests().timeout(Duration::from_secs(20)).try_send() {
            Ok(r) if r.status == 200 => failures.push(format!("ns={ns}: 200?")),
            Ok(_) => {}
            Err(e) => failures.push(format!("ns={ns}: {e}")),
        }
        let made = proxy.count() - before;
        if made > 0 {
            failures.push(format!("ns={ns}: {made} connection(s) to the HTTPS_PROXY {url}"));
        }
    }
    assert!(
        failures.is_empty(),
        "with HTTPS_PROXY set, requests for unlisted hosts must not go to the proxy (it would \
         resolve localhost or cluster names itself):\n  {}\n{}",
        failures.join("\n  "),
        explain_all(&[&mirror, &proxy])
    );
}

// ---------------------------------------------------------------------------
// 9. No credentials in endpoint URLs
// ---------------------------------------------------------------------------

#[test]
fn credentials_in_an_endpoint_url_stop_start_up() {
    const PASSWORD: &str = "Pw-9f3kq-e2e";
    let f = Mirror::builder()
        .registry(RegistryConfig::new("a.test").endpoint(&format!("https://user:{PASSWORD}@a.test")))
        .start_expecting_failure();
    assert!(
        f.exited && f.code.is_some_and(|c| c != 0),
        "an endpoint with user:password@ must stop start-up (it would leak into logs and \
         metrics): {f:#?}"
    );
    for needle in ["registries[0]", "endpoint", "auth"] {
        assert!(f.output.contains(needle), "the error should mention `{needle}`:\n{}", f.output);
    }
    assert!(!f.output.contains(PASSWORD), "the error must not print the password:\n{}", f.output);
}

// ---------------------------------------------------------------------------
// 10. Silent and idle connections
// ---------------------------------------------------------------------------

#[test]
fn silent_and_half_open_connections_are_closed_after_the_first_byte_timeout() {
    let mirror = Mirror::builder().extra_yaml("connections: {firstByteTimeout: 1s}").start();
    let limit = Duration::from_secs(3);
    let mut failures = Vec::new();
    for (what, prefix) in
        [("a socket that sends nothing", &b""[..]), ("a partial HTTP/2 preface", &b"PRI * HTTP/2.0\r\n"[..])]
    {
        let mut c = TcpStream::connect(mirror.host_port()).expect("connecting to the mirror");
        if !prefix.is_empty() {
            c.write_all(prefix).expect("sending the prefix");
        }
        match wait_closed(&mut c, limit) {
            Some(after) => eprintln!("{what}: closed after {after:?}"),
            None => failures.push(format!("{what}: still open after {limit:?}")),
        }
    }
    assert!(
        failures.is_empty(),
        "with connections.firstByteTimeout 1s the server must close connections that send no \
         complete request:\n  {}\n{}",
        failures.join("\n  "),
        mirror.explain()
    );
    let r = mirror.request("GET", "/v2/").try_send().expect("GET /v2/");
    assert_eq!(r.status, 200, "a prompt client is served");
}

#[test]
fn idle_keep_alive_and_http2_connections_are_closed_after_the_idle_timeout() {
    let mirror = Mirror::builder().extra_yaml("connections: {idleTimeout: 1s}").start();
    let limit = Duration::from_secs(3);
    let mut failures = Vec::new();

    // HTTP/1.1 keep-alive: one complete request, then nothing.
    let mut c = TcpStream::connect(mirror.host_port()).expect("connecting to the mirror");
    c.write_all(format!("GET /v2/ HTTP/1.1\r\nHost: {}\r\n\r\n", mirror.host_port()).as_bytes())
        .expect("sending a request");
    match read_http1_response(&mut c) {
        Ok(head) if head.starts_with("HTTP/1.1 200") => match wait_closed(&mut c, limit) {
            Some(after) => eprintln!("HTTP/1.1 keep-alive: closed {after:?} after the response"),
            None => failures.push(format!("HTTP/1.1 keep-alive: still open {limit:?} after the response")),
        },
        Ok(head) => failures.push(format!("HTTP/1.1: unexpected response {head:?}")),
        Err(e) => failures.push(format!("HTTP/1.1: {e}")),
    }

    // HTTP/2 with prior knowledge (h2c): one request, then idle (the client keeps
    // its end open and answers pings).
    let host_port = mirror.host_port();
    let h2: Result<Option<Duration>, String> = rt().block_on(async {
        let tcp = tokio::net::TcpStream::connect(&host_port).await.map_err(|e| format!("connecting: {e}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
        let conn = tokio::spawn(conn);
        let req = ::http::Request::get(format!("http://{host_port}/v2/"))
            .body(Full::new(Bytes::new()))
            .map_err(|e| format!("building the request: {e}"))?;
        let resp = sender.send_request(req).await.map_err(|e| format!("HTTP/2 request: {e}"))?;
        let status = resp.status();
        resp.into_body().collect().await.map_err(|e| format!("HTTP/2 body: {e}"))?;
        if status != 200 {
            return Err(format!("HTTP/2 GET /v2/: status {status}"));
        }
        let idle_from = Instant::now();
        let closed = tokio::time::timeout(limit, conn).await.is_ok().then(|| idle_from.elapsed());
        drop(sender);
        Ok(closed)
    });
    match h2 {
        Ok(Some(after)) => eprintln!("h2c: closed {after:?} after the response"),
        Ok(None) => failures.push(format!("h2c: still open {limit:?} after the response")),
        Err(e) => failures.push(format!("h2c: {e}")),
    }
    assert!(
        failures.is_empty(),
        "with connections.idleTimeout 1s idle connections must be closed:\n  {}\n{}",
        failures.join("\n  "),
        mirror.explain()
    );
}

#[test]
fn five_hundred_silent_sockets_do_not_lock_out_a_real_pull() {
    let s = Scenario::start(Upstream::plain(), &ImageSpec::single(1801, &[1000]), Format::Oci, |b, _, _| {
        b.default_ns(NAME).metrics().nofile_limit(256).extra_yaml("connections: {max: 100}")
    });
    let addr: SocketAddr = s.mirror.host_port().parse().expect("mirror address");
    let silent: Vec<tokio::net::TcpStream> = rt().block_on(async {
        let tasks: Vec<_> = (0..500)
            .map(|_| {
                tokio::spawn(async move {
                    tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr))
                        .await
                        .ok()?
                        .ok()
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            if let Ok(Some(c)) = t.await {
                out.push(c);
            }
        }
        out
    });
    eprintln!("{} of 500 silent sockets connected", silent.len());

    let limit = Duration::from_secs(1);
    let mut failures = Vec::new();
    for (path, headers) in [
        ("/v2/".to_string(), vec![]),
        (format!("/v2/{REPO}/manifests/{TAG}"), vec![("accept", ACCEPT_MANIFESTS)]),
    ] {
        match request_succeeding_within(&s.mirror, &path, &headers, limit) {
            Ok((r, took)) if r.status == 200 => eprintln!("GET {path}: 200 in {took:?}"),
            Ok((r, _)) => failures.push(format!("GET {path}: status {}: {}", r.status, r.text())),
            Err(e) => failures.push(format!("GET {path}: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "with 500 silent sockets open (connections.max 100, RLIMIT_NOFILE 256) a real client must \
         still be served within {limit:?}:\n  {}\n{}",
        failures.join("\n  "),
        explain_all(&s.context())
    );
    drop(silent);

    let text = s.mirror.metrics_text();
    assert!(
        metrics::present(&text, "ociregistry_connections_open"),
        "ociregistry_connections_open is missing\n{text}"
    );
    assert!(
        metrics::parse(&text)
            .iter()
            .any(|s| s.name == "ociregistry_connections_closed_total" && s.labels.contains_key("reason")),
        "ociregistry_connections_closed_total{{reason=…}} is missing\n{text}"
    );
    let about_connections: Vec<String> =
        warn_lines(&s.mirror).into_iter().filter(|l| l.to_lowercase().contains("connection")).collect();
    assert!(
        about_connections.len() < 5,
        "the connection limit (and fd exhaustion) should be warned about once, rate-limited; \
         got {} WARN lines:\n  {}",
        about_connections.len(),
        about_connections.iter().take(10).cloned().collect::<Vec<_>>().join("\n  ")
    );
}

// ---------------------------------------------------------------------------
// 11. htpasswd: no user discovery by timing, slow-down of repeated failures
// ---------------------------------------------------------------------------

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
fn htpasswd_users_are_not_discoverable_by_timing_and_failures_slow_down() {
    const USER: &str = "puller";
    const PASSWORD: &str = "right-pass-e2e";
    let dir = tempdir("htpasswd-timing");
    // bcrypt cost 10: tens of milliseconds per check, well above a request's own cost.
    let out = run_ok(
        Command::new(require_tool("htpasswd", "apache2-utils")).args(["-nbB", "-C", "10", USER, PASSWORD]),
        &[],
    );
    let htpasswd: PathBuf = dir.path().join("htpasswd");
    std::fs::write(&htpasswd, &out.stdout).expect("writing the htpasswd file");
    let mirror = Mirror::builder().pull_auth(&htpasswd, USER, PASSWORD).start();
    let url = mirror.v2("");

    // Each attempt from its own client address (127.0.0.0/8 is all loopback), so
    // the per-address slow-down does not mix into the comparison.
    let attempt = |from: IpAddr, auth: &str| -> (u16, Duration) {
        let t = Instant::now();
        let r = http::Request::get(&url)
            .from(from)
            .header("authorization", auth)
            .try_send()
            .unwrap_or_else(|e| panic!("GET {url} from {from}: {e}\n{}", mirror.explain()));
        (r.status, t.elapsed())
    };
    let unknown_user = basic_auth("nobody-here", "wrong-pass");
    let wrong_password = basic_auth(USER, "wrong-pass");
    let (mut unknown, mut known) = (Vec::new(), Vec::new());
    for i in 0..10u8 {
        let (s1, t1) = attempt(IpAddr::V4(Ipv4Addr::new(127, 10 + 2 * i, 0, 1)), &unknown_user);
        let (s2, t2) = attempt(IpAddr::V4(Ipv4Addr::new(127, 11 + 2 * i, 0, 1)), &wrong_password);
        assert_eq!((s1, s2), (401, 401), "wrong credentials must be 401");
        unknown.push(t1);
        known.push(t2);
    }
    let (mu, mk) = (median(unknown.clone()), median(known.clone()));
    eprintln!("unknown user: median {mu:?} {unknown:?}\nknown user, wrong password: median {mk:?} {known:?}");
    assert!(
        mu * 2 >= mk,
        "a wrong password for an unknown user answers in {mu:?} (median), for a known user in {mk:?}: \
         user names can be discovered by timing (the unknown user must cost the same bcrypt work)\n{}",
        mirror.explain()
    );

    // One address, repeated failures: after 5, each further one is slowed down.
    let from = IpAddr::V4(Ipv4Addr::new(127, 200, 0, 1));
    for _ in 0..5 {
        assert_eq!(attempt(from, &wrong_password).0, 401);
    }
    let mut fast = Vec::new();
    for i in 0..3 {
        let (status, took) = attempt(from, &wrong_password);
        assert_eq!(status, 401);
        if took < Duration::from_millis(500) {
            fast.push(format!("failure {} took {took:?}", 6 + i));
        }
    }
    assert!(
        fast.is_empty(),
        "after 5 consecutive failures from one address each further failure should take at least \
         500 ms: {fast:?}\n{}",
        mirror.explain()
    );
    let (status, took) = attempt(from, &basic_auth(USER, PASSWORD));
    assert_eq!(status, 200, "the right password still works from that address");
    assert!(took < Duration::from_secs(5), "the right password took {took:?}");
}

// ---------------------------------------------------------------------------
// 12. Corruption on disk
// ---------------------------------------------------------------------------

#[test]
fn a_truncated_cached_blob_is_never_served_as_complete() {
    let mut s = Scenario::plain_default_ns(&ImageSpec::single(1201, &[300_000]));
    raw_pull(&s.mirror, REPO, TAG, "");
    let layer = s.image.info.largest_layer();
    let path = s.cached_blob_path(&layer.digest);
    s.mirror.stop();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    f.set_len(layer.size / 2).expect("truncating the cached blob");
    drop(f);
    s.mirror.start_again();
    s.proxy.reset();

    let url = s.mirror.v2(&format!("{REPO}/blobs/{}", layer.digest));
    let r = rt().block_on(http::Request::get(&url).stream(None)).unwrap_or_else(|e| panic!("GET {url}: {e}"));
    eprintln!("GET of the truncated blob: {} ({} bytes, error {:?})", r.status, r.bytes, r.error);
    assert!(
        !(r.status == 200 && r.error.is_none() && r.digest != layer.digest),
        "a cached blob truncated to {} of its {} bytes was served as a complete 200 ({} bytes, \
         digest {}); its size disagrees with its descriptor, so it must be fetched again or refused\n{}",
        layer.size / 2,
        layer.size,
        r.bytes,
        r.digest,
        explain_all(&s.context())
    );
}

#[test]
fn verify_quarantines_a_corrupted_blob_which_is_then_fetched_again() {
    let mut s = Scenario::plain_default_ns(&ImageSpec::single(1202, &[200_000, 300_000]));
    raw_pull(&s.mirror, REPO, TAG, "");
    s.mirror.stop();
    let cache = s.mirror.cache_dir().to_path_buf();
    let (code, out) = verify(&cache);
    assert_eq!(code, Some(0), "`ociregistry verify` of a clean cache should exit 0:\n{out}");

    let layer = s.image.info.largest_layer();
    let path = s.cached_blob_path(&layer.digest);
    let mut bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let at = bytes.len() / 2;
    bytes[at] ^= 0xFF;
    std::fs::write(&path, &bytes).expect("writing the corrupted blob");

    let (code, out) = verify(&cache);
    assert_eq!(code, Some(1), "`ociregistry verify` with a corrupted blob should exit 1:\n{out}");
    assert!(
        out.contains(&layer.digest) || out.contains(hex_of(&layer.digest)),
        "verify should name {}:\n{out}",
        layer.digest
    );
    assert!(!path.exists(), "the corrupted blob should have left blobs/ ({})\n{out}", path.display());
    let quarantined: Vec<PathBuf> = files_under(&cache.join("quarantine"))
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().contains(hex_of(&layer.digest))))
        .collect();
    assert!(
        !quarantined.is_empty(),
        "the corrupted blob should be under {}/quarantine/:\n{out}",
        cache.display()
    );

    s.mirror.start_again();
    s.proxy.reset();
    let r = http::Request::get(&s.mirror.v2(&format!("{REPO}/blobs/{}", layer.digest))).send();
    assert_eq!(r.status, 200, "{}\n{}", r.text(), explain_all(&s.context()));
    assert_eq!(digest_of(&r.body), layer.digest, "the quarantined blob should be fetched again, correct");
    assert_eq!(s.proxy.count_ok("GET", &format!("/blobs/{}", layer.digest)), 1, "{}", s.proxy.explain());
}

// ---------------------------------------------------------------------------
// 13. Conformance: a malformed reference is 400 for any method
// ---------------------------------------------------------------------------

#[test]
fn a_malformed_digest_is_400_for_any_method_and_writes_are_405() {
    let mirror = Mirror::builder()
        .registry(RegistryConfig::new("up.test").endpoint(&format!("http://127.0.0.1:{}", dead_port())))
        .default_ns("up.test")
        .start();
    let good = format!("sha256:{}", "0".repeat(64));
    let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#;
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("PUT", "/v2/x/y/manifests/sha256:totallywrong".into(), 400, "DIGEST_INVALID"),
        ("DELETE", "/v2/x/y/manifests/sha256:totallywrong".into(), 400, "DIGEST_INVALID"),
        ("GET", "/v2/x/y/manifests/sha256:totallywrong".into(), 400, "DIGEST_INVALID"),
        ("PUT", "/v2/x/y/manifests/v1".into(), 405, "UNSUPPORTED"),
        ("DELETE", format!("/v2/x/y/manifests/{good}"), 405, "UNSUPPORTED"),
        ("POST", "/v2/x/y/blobs/uploads/".into(), 405, "UNSUPPORTED"),
        ("PATCH", "/v2/x/y/blobs/uploads/some-session".into(), 405, "UNSUPPORTED"),
        ("DELETE", format!("/v2/x/y/blobs/{good}"), 405, "UNSUPPORTED"),
        ("GET", "/v2/x/y/manifests/-not-a-tag".into(), 404, "MANIFEST_UNKNOWN"),
    ];
    let mut failures = Vec::new();
    for (method, path, status, code) in &cases {
        let body: &[u8] = if matches!(*method, "PUT" | "POST" | "PATCH") { manifest } else { b"" };
        let r = http::Request::new(method, &format!("{}{path}", mirror.url()))
            .header("content-type", OCI_MANIFEST)
            .body(Bytes::copy_from_slice(body))
            .send();
        if let Some(p) = r.oci_error_mismatch(*status, Some(code)) {
            failures.push(format!("{method} {path}: {p}"));
        }
    }
    assert!(
        failures.is_empty(),
        "the reference is validated first (400 for any method), then writes are 405:\n  {}\n{}",
        failures.join("\n  "),
        mirror.explain()
    );
}
