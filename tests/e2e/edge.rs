//! Behaviour on bad links (issue: edge resilience): an upstream marked down costs
//! cached pulls nothing, uncached requests fail fast and recover without a restart,
//! broken downloads resume with `Range`, tag TTLs with stale-if-error, air-gapped
//! mode, endpoint fail-over and offline tag lists.

use std::time::{Duration, Instant};

use crate::support::containerd::Containerd;
use crate::support::http;
use crate::support::image::{self, Format, ImageSpec};
use crate::support::mirror::RegistryConfig;
use crate::support::proxy::{BodyEnd, Fault};
use crate::support::scenario::{NAME, REPO, Scenario, TAG, raw_pull};
use crate::support::skopeo::Skopeo;
use crate::support::upstream::Upstream;
use crate::support::{Explain, dead_port, digest_of, wait_until};

const ABSENT_TAG: &str = "never-pushed";

/// Plain upstream behind the proxy, `defaultNs: up.test`, plus `yaml`.
fn scenario(spec: &ImageSpec, yaml: &str) -> Scenario {
    let yaml = yaml.to_string();
    Scenario::start(Upstream::plain(), spec, Format::Oci, move |b, _, _| b.default_ns(NAME).extra_yaml(&yaml))
}

fn manifest_url(s: &Scenario, reference: &str) -> String {
    s.mirror.v2(&format!("{REPO}/manifests/{reference}"))
}

fn get_manifest(s: &Scenario, reference: &str) -> http::Response {
    http::Request::get(&manifest_url(s, reference)).accept_manifests().send()
}

/// Each request of a cached image, timed one by one.
#[track_caller]
fn assert_each_request_fast(s: &Scenario, limit: Duration) {
    let mut urls = vec![manifest_url(s, TAG)];
    urls.extend(s.image.info.manifest_digests().iter().map(|d| manifest_url(s, d)));
    urls.extend(s.image.info.blobs().iter().map(|b| s.mirror.v2(&format!("{REPO}/blobs/{}", b.digest))));
    for url in urls {
        let t = Instant::now();
        let r = http::Request::get(&url).accept_manifests().send();
        let took = t.elapsed();
        assert_eq!(r.status, 200, "GET {url}: {}\n{}", r.text(), s.mirror.explain());
        assert!(took < limit, "GET {url} took {took:?} with the upstream down (limit {limit:?})");
    }
}

#[test]
fn upstream_down_cached_pulls_make_no_attempts_and_uncached_fails_fast() {
    // A 30 s connect timeout: any per-request wait for the dead upstream would show.
    // No probe during the test (60 s), so every connection the proxy sees is a request's.
    let mut s = scenario(
        &ImageSpec::multi_platform(801, &[1500, 90_000]),
        "timeouts: {connect: 30s, response: 30s}\nresilience: {probeInterval: 60s}",
    );
    raw_pull(&s.mirror, REPO, TAG, "");

    s.upstream.kill();
    s.proxy.set_fault(Fault::Refuse);
    // The first uncached request finds the upstream gone and marks it down.
    let t = Instant::now();
    get_manifest(&s, ABSENT_TAG).assert_oci_error(503, "UNAVAILABLE", "uncached manifest, upstream gone");
    assert!(t.elapsed() < Duration::from_secs(5), "first failure took {:?}", t.elapsed());
    assert!(s.proxy.refused_connections() > 0, "the first uncached request should have tried the upstream");
    assert!(s.mirror.wait_for_log("upstream is unreachable", Duration::from_secs(5)), "no down event logged");

    s.proxy.reset();
    assert_each_request_fast(&s, Duration::from_secs(1));
    let got = Skopeo::new().context(&s.mirror).pull_via_mirror(
        &s.mirror,
        &format!("{REPO}:{TAG}"),
        &s.out_dir("p"),
    );
    assert_eq!(got.top.digest, s.image.info.top.digest);
    let ctrd = Containerd::start(&s.mirror.url());
    ctrd.pull(&format!("{NAME}/{REPO}:{TAG}"), &s.context());

    // Uncached content while down: fails at once, without an attempt, saying since when.
    for _ in 0..3 {
        let t = Instant::now();
        let r = get_manifest(&s, ABSENT_TAG);
        r.assert_oci_error(503, "UNAVAILABLE", "uncached manifest while the upstream is down");
        assert!(r.text().contains("unreachable since"), "the error should say since when: {}", r.text());
        assert!(t.elapsed() < Duration::from_secs(1), "took {:?}", t.elapsed());
    }
    assert_eq!(s.proxy.total(), 0, "requests reached the upstream while it was marked down");
    assert_eq!(
        s.proxy.refused_connections(),
        0,
        "connections were attempted while the upstream was marked down"
    );
    let downs = s.mirror.log().matches("upstream is unreachable").count();
    assert_eq!(downs, 1, "the down state should be logged once, not per request");
}

#[test]
fn upstream_back_is_noticed_by_the_probe_without_restart() {
    let s =
        scenario(&ImageSpec::single(802, &[2000]), "resilience: {probeInterval: 1s, maxProbeInterval: 2s}");
    s.proxy.set_fault(Fault::Refuse);
    get_manifest(&s, TAG).assert_oci_error(503, "UNAVAILABLE", "upstream refusing connections");
    s.proxy.set_fault(Fault::None);
    let mut status = 0;
    let back = wait_until(Duration::from_secs(10), || {
        status = get_manifest(&s, TAG).status;
        status == 200
    });
    assert!(
        back,
        "the mirror did not notice the upstream was back (last status {status})\n{}",
        s.mirror.explain()
    );
    assert!(
        s.mirror.wait_for_log("upstream is reachable again", Duration::from_secs(2)),
        "no recovery logged"
    );
    raw_pull(&s.mirror, REPO, TAG, "");
}

#[test]
fn reset_mid_blob_resumes_with_a_range_request() {
    let size = 8 << 20;
    let s = scenario(&ImageSpec::single(803, &[size]), "");
    let layer = s.image.info.largest_layer();
    s.proxy.set_fault(Fault::CutBlobBodiesAfter(layer.size / 2));
    let url = s.mirror.v2(&format!("{REPO}/blobs/{}", layer.digest));
    let client = std::thread::spawn({
        let url = url.clone();
        move || http::Request::get(&url).send()
    });
    // Once the connection has been reset, the link "comes back" before the resume.
    let blob_path = format!("/blobs/{}", layer.digest);
    let cut = wait_until(Duration::from_secs(10), || {
        s.proxy.matching("GET", &blob_path).first().is_some_and(|g| g.end == BodyEnd::Cut)
    });
    assert!(cut, "the proxy should have cut the first download\n{}", s.proxy.explain());
    s.proxy.set_fault(Fault::None);
    let r = client.join().expect("client thread");
    assert_eq!(r.status, 200, "{}\n{}", r.text(), s.mirror.explain());
    assert_eq!(r.body.len() as u64, layer.size, "the client should receive the whole blob despite the reset");
    assert_eq!(digest_of(&r.body), layer.digest, "the client received wrong bytes");

    let gets = s.proxy.matching("GET", &blob_path);
    assert_eq!(gets.len(), 2, "one download and one resume expected: {gets:?}");
    assert_eq!(gets[0].range, None, "the first download asks for the whole blob");
    let from: u64 = gets[1]
        .range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the resume must be a Range request for the remainder: {:?}", gets[1]));
    assert!(from > 0 && from <= layer.size / 2, "resume from byte {from}; the cut was at {}", layer.size / 2);
    assert_eq!(gets[1].status, Some(206), "{:?}", gets[1]);
    let transferred: u64 = gets.iter().map(|g| g.body_bytes).sum();
    assert!(
        transferred < layer.size * 3 / 2,
        "{transferred} bytes fetched for a {}-byte blob: resumes should not start over",
        layer.size
    );
    let cached = s.cached_blob_path(&layer.digest);
    assert!(wait_until(Duration::from_secs(5), || cached.exists()), "the resumed blob was not cached");
    assert_eq!(crate::support::digest_of_file(&cached), layer.digest);
    let tmp = s.mirror.cache_dir().join("tmp");
    let leftovers = || std::fs::read_dir(&tmp).map(|d| d.count()).unwrap_or(0);
    assert!(wait_until(Duration::from_secs(5), || leftovers() == 0), "tmp/ still holds partial files");
    let blobs = walk_files(&s.mirror.cache_dir().join("blobs"));
    assert_eq!(blobs.iter().filter(|p| p.ends_with(crate::support::hex_of(&layer.digest))).count(), 1);
    assert!(s.mirror.log().contains("resumed blob download with a Range request"), "resume not logged");
}

fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() { stack.push(p) } else { out.push(p) }
        }
    }
    out
}

#[test]
fn tag_ttl_picks_up_a_moved_tag_after_the_ttl_and_serves_stale_when_down() {
    let ttl = Duration::from_secs(3);
    let s = scenario(&ImageSpec::single(804, &[1000]), "tagPolicy:\n  - {match: \"up.test/*\", ttl: 3s}");
    let first = get_manifest(&s, TAG);
    assert_eq!(first.status, 200);
    let old = digest_of(&first.body);
    let pulled_at = Instant::now();

    // The tag moves upstream (pushed straight to the registry, not through the mirror).
    let moved = image::seed(
        &s.upstream,
        &s.out_dir("moved"),
        &ImageSpec::single(805, &[1100]),
        REPO,
        TAG,
        Format::Oci,
    );
    let new = moved.info.top.digest.clone();
    assert_ne!(old, new);
    s.proxy.reset();
    let r = get_manifest(&s, TAG);
    assert!(pulled_at.elapsed() < ttl, "test too slow to check the before-TTL case");
    assert_eq!(digest_of(&r.body), old, "within the TTL the cached digest is served");
    assert_eq!(s.proxy.count_any("/manifests/"), 0, "within the TTL the upstream is not asked");

    std::thread::sleep(ttl.saturating_sub(pulled_at.elapsed()) + Duration::from_millis(300));
    let r = get_manifest(&s, TAG);
    assert_eq!(r.status, 200);
    assert_eq!(digest_of(&r.body), new, "after the TTL the moved tag is picked up");
    assert!(s.proxy.count("HEAD", &format!("/manifests/{TAG}")) >= 1, "re-checks should use HEAD");

    // Upstream down and the TTL over again: the last digest keeps being served.
    s.proxy.set_fault(Fault::Refuse);
    std::thread::sleep(ttl + Duration::from_millis(300));
    for _ in 0..3 {
        let r = get_manifest(&s, TAG);
        assert_eq!(r.status, 200, "stale-if-error: {}", r.text());
        assert_eq!(digest_of(&r.body), new);
    }
    // Log lines go through a writer thread: give it a moment on a busy machine.
    let logged = wait_until(Duration::from_secs(5), || s.mirror.log().contains("stale-if-error"));
    assert!(logged, "stale serve not logged");
}

#[test]
fn air_gapped_never_touches_the_network() {
    let mut s = scenario(&ImageSpec::single(806, &[1000, 5000]), "");
    raw_pull(&s.mirror, REPO, TAG, "");
    s.mirror.reconfigure(|b| b.extra_yaml("airGapped: true"));
    s.mirror.restart();
    s.proxy.reset();

    // Cached: served. Uncached: 404 at once.
    raw_pull(&s.mirror, REPO, TAG, "");
    let t = Instant::now();
    get_manifest(&s, ABSENT_TAG).assert_oci_error(404, "MANIFEST_UNKNOWN", "uncached tag, air-gapped");
    let absent = format!("sha256:{}", "0".repeat(64));
    http::Request::get(&s.mirror.v2(&format!("{REPO}/blobs/{absent}"))).send().assert_oci_error(
        404,
        "BLOB_UNKNOWN",
        "uncached blob, air-gapped",
    );
    assert_eq!(http::Request::head(&s.mirror.v2(&format!("{REPO}/blobs/{absent}"))).send().status, 404);
    assert!(t.elapsed() < Duration::from_secs(1), "air-gapped misses took {:?}", t.elapsed());
    assert_eq!(s.proxy.total(), 0, "an air-gapped mirror sent requests upstream");
    assert_eq!(s.proxy.refused_connections(), 0, "an air-gapped mirror opened connections");
}

#[test]
fn endpoints_fail_over_in_order_and_skip_a_down_one() {
    let upstream = Upstream::plain();
    let work = tempfile::tempdir().expect("tempdir");
    let seeded =
        image::seed(&upstream, work.path(), &ImageSpec::single(807, &[1000]), REPO, TAG, Format::Oci);
    let proxy = crate::support::proxy::Proxy::start(&upstream);
    let dead = format!("http://127.0.0.1:{}", dead_port());
    let mirror = crate::support::mirror::Mirror::builder()
        .registry(RegistryConfig::new(NAME).endpoints(&[&dead, &proxy.url()]))
        .default_ns(NAME)
        .extra_yaml("resilience: {probeInterval: 60s}")
        .start();
    let got = raw_pull(&mirror, REPO, TAG, "");
    assert_eq!(got.top.digest, seeded.info.top.digest);
    assert!(proxy.total() > 0, "the second endpoint should have served the pull");
    let log = mirror.log();
    assert_eq!(
        log.matches("upstream is unreachable").count(),
        1,
        "the dead endpoint is marked down once:\n{log}"
    );
    assert!(log.contains(&dead), "the down endpoint should be named in the log");
}

#[test]
fn tags_list_passes_through_and_falls_back_to_the_cache() {
    let s = scenario(&ImageSpec::single(808, &[1000]), "");
    image::seed(&s.upstream, &s.out_dir("v2"), &ImageSpec::single(809, &[1000]), REPO, "v2", Format::Oci);
    let list = |s: &Scenario| -> Vec<String> {
        let out = Skopeo::new().context(&s.mirror).run(&[
            "list-tags".to_string(),
            "--tls-verify=false".to_string(),
            format!("docker://{}/{NAME}/{REPO}", s.mirror.host_port()),
        ]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("skopeo list-tags prints JSON");
        let mut tags: Vec<String> = v["Tags"]
            .as_array()
            .expect("Tags")
            .iter()
            .filter_map(|t| t.as_str().map(str::to_owned))
            .collect();
        tags.sort();
        tags
    };
    assert_eq!(list(&s), vec!["v1", "v2"], "online: the upstream's tags");
    get_manifest(&s, TAG);
    s.proxy.set_fault(Fault::Refuse);
    assert_eq!(list(&s), vec!["v1"], "offline: the cached tags");
}

#[test]
fn rate_limit_retry_after_is_honoured() {
    let s = scenario(&ImageSpec::single(810, &[1000]), "");
    s.proxy.set_fault(Fault::StatusRetryAfter(429, 2));
    let limited_at = Instant::now();
    let r = get_manifest(&s, TAG);
    r.assert_oci_error(429, "TOOMANYREQUESTS", "upstream 429");
    assert!(r.header("retry-after").is_some(), "the 429 should carry Retry-After");
    assert_eq!(s.proxy.total(), 1);

    // The upstream would answer now, but asked for 2 s: the mirror must not ask sooner.
    s.proxy.set_fault(Fault::None);
    s.proxy.reset();
    while limited_at.elapsed() < Duration::from_millis(1700) {
        let r = get_manifest(&s, TAG);
        assert_eq!(r.status, 429, "within Retry-After: {}", r.text());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(s.proxy.total(), 0, "the mirror asked the upstream within its Retry-After");
    std::thread::sleep(
        Duration::from_secs(2).saturating_sub(limited_at.elapsed()) + Duration::from_millis(200),
    );
    let r = get_manifest(&s, TAG);
    assert_eq!(r.status, 200, "after Retry-After: {}", r.text());
    assert!(s.mirror.log().contains("pausing requests"), "the pause should be logged");
}

#[test]
fn stalled_download_times_out_and_resumes() {
    let size = 4 << 20;
    let s = scenario(&ImageSpec::single(811, &[size]), "timeouts: {stall: 1s}");
    let layer = s.image.info.largest_layer();
    s.proxy.set_fault(Fault::StallBlobBodiesAfter(layer.size / 2, 30));
    let t = Instant::now();
    let r = http::Request::get(&s.mirror.v2(&format!("{REPO}/blobs/{}", layer.digest))).send();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(digest_of(&r.body), layer.digest, "the client received wrong bytes");
    assert!(t.elapsed() < Duration::from_secs(20), "a 1 s stall timeout should not wait out a 30 s stall");
    let gets = s.proxy.matching("GET", &format!("/blobs/{}", layer.digest));
    assert!(
        gets.len() >= 2 && gets[1].range.is_some(),
        "the stalled download should resume with Range: {gets:?}"
    );
}

#[test]
fn download_finishes_after_its_client_disconnects() {
    let size = 4 << 20;
    let s = scenario(&ImageSpec::single(812, &[size]), "");
    let layer = s.image.info.largest_layer();
    s.proxy.set_throttle(Some(2 << 20));
    let url = s.mirror.v2(&format!("{REPO}/blobs/{}", layer.digest));
    // Read a little, then hang up.
    let partial = crate::support::rt().block_on(async {
        tokio::time::timeout(Duration::from_millis(600), http::Request::get(&url).stream(None)).await
    });
    assert!(partial.is_err(), "the client should have hung up mid-download");
    let cached = s.cached_blob_path(&layer.digest);
    assert!(
        wait_until(Duration::from_secs(15), || cached.exists()),
        "the download should complete (and be cached) without its client\n{}",
        s.mirror.explain()
    );
    s.proxy.set_throttle(None);
    let r = http::Request::get(&url).send();
    assert_eq!(digest_of(&r.body), layer.digest);
    assert_eq!(s.proxy.count("GET", &format!("/blobs/{}", layer.digest)), 1, "one upstream download only");
}

#[test]
fn background_revalidation_serves_at_once_then_the_new_digest() {
    let s = scenario(
        &ImageSpec::single(813, &[1000]),
        "revalidate: background\ntagPolicy:\n  - {match: \"*\", ttl: 1s}",
    );
    let old = digest_of(&get_manifest(&s, TAG).body);
    let moved = image::seed(
        &s.upstream,
        &s.out_dir("moved"),
        &ImageSpec::single(814, &[1100]),
        REPO,
        TAG,
        Format::Oci,
    );
    std::thread::sleep(Duration::from_millis(1300));
    // Stale: answered from the cache at once, re-checked behind the response.
    let r = get_manifest(&s, TAG);
    assert_eq!(digest_of(&r.body), old, "background revalidation serves the cached digest first");
    let mut now = String::new();
    let updated = wait_until(Duration::from_secs(5), || {
        now = digest_of(&get_manifest(&s, TAG).body);
        now == moved.info.top.digest
    });
    assert!(updated, "the background re-check should pick up the moved tag (still {now})");
}

#[test]
fn download_interrupted_by_sigterm_resumes_after_restart() {
    let size = 16 << 20;
    let mut s = scenario(&ImageSpec::single(815, &[size]), "");
    let layer = s.image.info.largest_layer();
    s.proxy.set_throttle(Some(2 << 20));
    let url = s.mirror.v2(&format!("{REPO}/blobs/{}", layer.digest));
    // The client hangs up; the download goes on in the background.
    let hung_up = crate::support::rt().block_on(async {
        tokio::time::timeout(Duration::from_millis(1500), http::Request::get(&url).stream(None)).await
    });
    assert!(hung_up.is_err(), "the client should have hung up mid-download");
    let status = s.mirror.stop().expect("the mirror was running");
    assert!(status.success(), "SIGTERM should exit 0, got {status:?}\n{}", s.mirror.explain());

    let tmp = s.mirror.cache_dir().join("tmp");
    let partial: u64 = std::fs::read_dir(&tmp)
        .expect("tmp/")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
        .map(|e| e.metadata().map_or(0, |m| m.len()))
        .sum();
    assert!(
        partial > 0 && partial < layer.size,
        "a partial download should be kept in tmp/ ({partial} bytes)"
    );
    assert!(!s.cached_blob_path(&layer.digest).exists(), "an unfinished blob must not be in blobs/");

    s.proxy.set_throttle(None);
    s.proxy.reset();
    s.mirror.start_again();
    let r = http::Request::get(&url).send();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body.len() as u64, layer.size);
    assert_eq!(digest_of(&r.body), layer.digest, "the resumed blob has wrong bytes");
    let gets = s.proxy.matching("GET", &format!("/blobs/{}", layer.digest));
    assert_eq!(gets.len(), 1, "{gets:?}");
    assert_eq!(
        gets[0].range.as_deref(),
        Some(format!("bytes={partial}-").as_str()),
        "after the restart only the missing bytes should be fetched"
    );
    assert!(s.mirror.log().contains("resuming an interrupted download left by an earlier run"));
}

#[test]
fn complete_but_unverified_partial_is_finished_without_refetching() {
    let mut s = scenario(&ImageSpec::single(816, &[300_000]), "");
    let layer = s.image.info.largest_layer();
    // As if the process stopped after the last byte, before verifying and renaming.
    s.mirror.stop();
    let tmp = s.mirror.cache_dir().join("tmp");
    std::fs::write(
        tmp.join(format!("sha256-{}.partial", crate::support::hex_of(&layer.digest))),
        s.blob_bytes(&layer.digest),
    )
    .expect("writing the partial download");
    s.mirror.start_again();
    let r = http::Request::get(&s.mirror.v2(&format!("{REPO}/blobs/{}", layer.digest))).send();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(digest_of(&r.body), layer.digest);
    let gets = s.proxy.matching("GET", &format!("/blobs/{}", layer.digest));
    assert_eq!(s.proxy.count_ok("GET", "/blobs/"), 0, "nothing should be downloaded again: {gets:?}");
    assert!(
        gets.iter().all(|g| g.range.as_deref() == Some(format!("bytes={}-", layer.size).as_str())),
        "the mirror should only ask for what is after the bytes it has: {gets:?}"
    );
    // Committed right after the response (the client does not wait for the fsyncs).
    let path = s.cached_blob_path(&layer.digest);
    assert!(wait_until(Duration::from_secs(5), || path.exists()), "never committed to {}", path.display());
}
