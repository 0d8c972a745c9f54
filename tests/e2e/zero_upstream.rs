//! Everything served once is served again without the upstream: a second pull
//! makes zero upstream requests, also after restarting the mirror, also with the
//! upstream gone.

use std::time::{Duration, Instant};

use crate::support::containerd::Containerd;
use crate::support::image::Format;
use crate::support::image::ImageSpec;
use crate::support::logs;
use crate::support::proxy::Fault;
use crate::support::scenario::{NAME, REPO, Scenario, TAG, assert_same_image, raw_pull};
use crate::support::skopeo::Skopeo;
use crate::support::upstream::Upstream;

fn skopeo_pull(s: &Scenario) {
    let got = Skopeo::new().context(&s.mirror).context(&s.proxy).pull_via_mirror(
        &s.mirror,
        &format!("{REPO}:{TAG}"),
        &s.out_dir("pull"),
    );
    assert_same_image(&s.image.info, &got, &s.context());
}

#[track_caller]
fn assert_no_upstream_traffic(s: &Scenario, when: &str) {
    assert_eq!(s.proxy.total(), 0, "{when}: the mirror should not have contacted the upstream");
    assert_eq!(s.proxy.refused_connections(), 0, "{when}: the mirror tried to connect to the upstream");
}

#[test]
fn second_skopeo_pull_makes_no_upstream_requests() {
    let s = Scenario::plain_default_ns(&ImageSpec::multi_platform(301, &[1000, 120_000]));
    skopeo_pull(&s);
    assert!(s.proxy.total() > 0, "the first pull must go upstream");
    s.proxy.reset();
    let mark = s.mirror.log_mark();
    skopeo_pull(&s);
    assert_no_upstream_traffic(&s, "second pull");
    let log = s.mirror.log_since(mark);
    assert!(
        log.lines()
            .any(|l| l.contains("/manifests/") && logs::field_value(l, "outcome").as_deref() == Some("hit")),
        "the second pull's manifest requests should be logged with outcome=hit:\n{log}"
    );
    assert!(
        !log.contains("pulling manifest from upstream"),
        "the second pull should not log \"pulling manifest from upstream\""
    );
    // Raw GETs by tag and digest (manifests and blobs) are hits too.
    raw_pull(&s.mirror, REPO, TAG, "");
    assert_no_upstream_traffic(&s, "raw GETs after a pull");
}

#[test]
fn pull_after_restart_makes_no_upstream_requests() {
    let mut s = Scenario::plain_default_ns(&ImageSpec::single(302, &[1000, 120_000]));
    skopeo_pull(&s);
    s.mirror.restart();
    s.proxy.reset();
    skopeo_pull(&s);
    assert_no_upstream_traffic(&s, "pull after a restart (same port)");
    s.mirror.restart_on_new_port();
    skopeo_pull(&s);
    assert_no_upstream_traffic(&s, "pull after a restart on a new port");
}

#[test]
fn pull_with_upstream_gone_after_restart() {
    let mut s = Scenario::plain_default_ns(&ImageSpec::multi_platform(303, &[1000, 120_000]));
    skopeo_pull(&s);
    s.upstream.kill();
    s.proxy.set_fault(Fault::Refuse);
    s.mirror.restart();
    s.proxy.reset();
    let t = Instant::now();
    skopeo_pull(&s);
    let took = t.elapsed();
    // Offline is a first-class state: cached content at cache-hit latency, no
    // per-request wait for an upstream timeout.
    assert!(took < Duration::from_secs(20), "a cached pull with the upstream gone took {took:?}");
    assert_no_upstream_traffic(&s, "pull with the upstream gone");
    // The same image through the in-path name and ns= (same registry, same cache).
    raw_pull(&s.mirror, &format!("{NAME}/{REPO}"), TAG, "");
    raw_pull(&s.mirror, REPO, TAG, &format!("?ns={NAME}"));
}

#[test]
fn second_containerd_pull_makes_no_upstream_requests() {
    let s = Scenario::start(
        Upstream::plain(),
        &ImageSpec::multi_platform(304, &[2000, 150_000]),
        Format::Oci,
        |b, _, _| b,
    );
    let reference = format!("{NAME}/{REPO}:{TAG}");
    {
        let first = Containerd::start(&s.mirror.url());
        first.pull(&reference, &s.context());
    }
    assert!(s.proxy.total() > 0, "the first pull must go upstream");
    s.proxy.reset();
    // A fresh containerd has nothing; everything must come from the mirror's cache.
    let second = Containerd::start(&s.mirror.url());
    second.pull(&reference, &s.context());
    let layers = s.image.info.manifest_for("linux/amd64").layers.len();
    second.assert_unpacked(&reference, layers, &s.context());
    assert_no_upstream_traffic(&s, "second containerd pull");
}
