//! skopeo (and raw registry GETs) pull through the mirror and get byte-identical
//! images: every upstream auth/TLS mode, every way of naming the upstream, Docker
//! and OCI media types, single manifests and multi-platform indexes.

use crate::support::image::{self, Format, ImageInfo, ImageSpec};
use crate::support::mirror::{Mirror, RegistryConfig};
use crate::support::proxy::Proxy;
use crate::support::scenario::{NAME, REPO, Scenario, TAG, assert_same_image, raw_pull};
use crate::support::skopeo::Skopeo;
use crate::support::upstream::{AuthMode, Upstream};
use crate::support::{Explain, dead_port, http};

/// A name for a registry nothing answers for: selecting it by mistake fails loudly.
const DEAD: &str = "dead.test";

fn dead_registry() -> RegistryConfig {
    RegistryConfig::new(DEAD).endpoint(&format!("http://127.0.0.1:{}", dead_port()))
}

/// `skopeo copy --all --preserve-digests docker://MIRROR/<path> dir:…` and compare
/// with what the upstream holds.
fn skopeo_pull(s: &Scenario, path: &str) -> ImageInfo {
    let out = s.out_dir("pull");
    let got = Skopeo::new()
        .context(&s.mirror)
        .context(&s.proxy)
        .context(&s.upstream)
        .pull_via_mirror(&s.mirror, path, &out);
    assert_same_image(&s.image.info, &got, &s.context());
    got
}

/// Each blob of the image was downloaded from the upstream exactly once (a cold pull
/// by one client); 401 challenges before an authenticated GET do not count.
fn assert_each_blob_fetched_once(s: &Scenario) {
    for blob in s.image.info.blobs() {
        assert_eq!(
            s.proxy.count_ok("GET", &format!("/blobs/{}", blob.digest)),
            1,
            "blob {} should have been fetched from the upstream exactly once\n{}",
            blob.digest,
            s.proxy.explain()
        );
    }
}

#[test]
fn in_path_registry_name_oci_manifest() {
    // defaultNs names a dead registry: only the in-path `up.test` can work.
    let s = Scenario::start(
        Upstream::plain(),
        &ImageSpec::single(101, &[1000, 150_000, 2 << 20]),
        Format::Oci,
        |b, _, _| b.registry(dead_registry()).default_ns(DEAD),
    );
    skopeo_pull(&s, &format!("{NAME}/{REPO}:{TAG}"));
    assert_each_blob_fetched_once(&s);
    assert!(s.proxy.count_any("/manifests/") >= 1, "{}", s.proxy.explain());
    // The upstream saw the repository without the registry name in front.
    assert!(
        s.proxy.requests().iter().all(|r| !r.path.contains(&format!("/{NAME}/"))),
        "the in-path registry name must not be forwarded upstream"
    );
    // The log names what happened.
    let log = s.mirror.log();
    assert!(
        log.contains("pulling manifest from upstream"),
        "mirror log lacks \"pulling manifest from upstream\""
    );
}

#[test]
fn default_ns_addressing() {
    let s = Scenario::plain_default_ns(&ImageSpec::single(102, &[1000, 100_000]));
    skopeo_pull(&s, &format!("{REPO}:{TAG}"));
    assert_each_blob_fetched_once(&s);
}

#[test]
fn ns_query_selects_the_registry_by_name() {
    // defaultNs names a dead registry: only `?ns=up.test` can work.
    let s = Scenario::start(
        Upstream::plain(),
        &ImageSpec::multi_platform(103, &[1000, 50_000]),
        Format::Oci,
        |b, _, _| b.registry(dead_registry()).default_ns(DEAD),
    );
    let got = raw_pull(&s.mirror, REPO, TAG, &format!("?ns={NAME}"));
    assert_same_image(&s.image.info, &got, &s.context());
    assert_each_blob_fetched_once(&s);
}

#[test]
fn ns_query_with_host_port_registry_without_endpoint() {
    // A registry named `127.0.0.1:PORT` (no endpoint, scheme http) is fetched from
    // http://127.0.0.1:PORT; containerd sends that name URL-encoded in `ns`.
    let up = Upstream::plain();
    let work = crate::support::tempdir("work");
    let seeded =
        image::seed(&up, work.path(), &ImageSpec::single(104, &[1000, 80_000]), REPO, TAG, Format::Oci);
    let proxy = Proxy::start(&up);
    let mirror = Mirror::builder().registry(RegistryConfig::new(&proxy.host_port()).scheme("http")).start();
    let ns = proxy.host_port().replace(':', "%3A");
    let got = raw_pull(&mirror, REPO, TAG, &format!("?ns={ns}"));
    assert_same_image(&seeded.info, &got, &[&mirror, &proxy, &up]);
    assert!(proxy.count("GET", "/blobs/") >= 1, "the blobs must come through the registry named by ns");
}

#[test]
fn docker_media_types_multi_platform() {
    let s = Scenario::start(
        Upstream::plain(),
        &ImageSpec::multi_platform(105, &[1000, 60_000]),
        Format::Docker,
        |b, _, _| b.default_ns(NAME),
    );
    assert_eq!(s.image.info.top.media_type, image::DOCKER_LIST);
    skopeo_pull(&s, &format!("{REPO}:{TAG}"));
    let r = http::Request::get(&s.mirror.v2(&format!("{REPO}/manifests/{TAG}"))).accept_manifests().send();
    assert_eq!(r.header("content-type"), Some(image::DOCKER_LIST), "{:?}", r.headers);
    let amd64 = s.image.info.manifest_for("linux/amd64");
    let r = http::Request::get(&s.mirror.v2(&format!("{REPO}/manifests/{}", amd64.descriptor.digest)))
        .accept_manifests()
        .send();
    assert_eq!(r.header("content-type"), Some(image::DOCKER_MANIFEST), "{:?}", r.headers);
    assert_eq!(r.body.as_ref(), amd64.bytes.as_slice());
}

#[test]
fn docker_media_types_single_manifest() {
    let s = Scenario::start(
        Upstream::plain(),
        &ImageSpec::single(106, &[1000, 60_000]),
        Format::Docker,
        |b, _, _| b.default_ns(NAME),
    );
    assert_eq!(s.image.info.top.media_type, image::DOCKER_MANIFEST);
    skopeo_pull(&s, &format!("{REPO}:{TAG}"));
}

#[test]
fn oci_multi_platform_index() {
    let s = Scenario::plain_default_ns(&ImageSpec::multi_platform(107, &[1000, 70_000, 300_000]));
    assert_eq!(s.image.info.top.media_type, image::OCI_INDEX);
    let got = skopeo_pull(&s, &format!("{REPO}:{TAG}"));
    assert_eq!(got.manifests.len(), 2);
    assert_each_blob_fetched_once(&s);
    let r = http::Request::get(&s.mirror.v2(&format!("{REPO}/manifests/{TAG}"))).accept_manifests().send();
    assert_eq!(r.header("content-type"), Some(image::OCI_INDEX), "{:?}", r.headers);
    assert_eq!(r.body.as_ref(), s.image.info.top_bytes.as_slice(), "index bytes must be kept as received");
}

#[test]
fn tls_upstream_with_ca() {
    let s = Scenario::start(
        Upstream::tls(),
        &ImageSpec::multi_platform(108, &[1000, 90_000]),
        Format::Oci,
        |b, _, _| b.default_ns(NAME),
    );
    assert!(s.proxy.is_tls());
    skopeo_pull(&s, &format!("{REPO}:{TAG}"));
    assert_each_blob_fetched_once(&s);
}

#[test]
fn basic_auth_upstream() {
    let s = Scenario::start(
        Upstream::basic(),
        &ImageSpec::single(109, &[1000, 90_000]),
        Format::Oci,
        |b, _, _| b.default_ns(NAME),
    );
    assert_eq!(s.upstream.auth(), AuthMode::Basic);
    skopeo_pull(&s, &format!("{REPO}:{TAG}"));
    assert_each_blob_fetched_once(&s);
    for r in s.proxy.requests().iter().filter(|r| r.status == Some(200)) {
        assert!(
            r.had_authorization,
            "{} {} succeeded upstream without credentials?\n{}",
            r.method,
            r.path,
            s.proxy.explain()
        );
    }
}

#[test]
fn bearer_token_upstream() {
    let s = Scenario::start(
        Upstream::bearer(),
        &ImageSpec::multi_platform(110, &[1000, 90_000]),
        Format::Oci,
        |b, _, _| b.default_ns(NAME),
    );
    let token = s.upstream.token_server().expect("bearer mode has a token server");
    token.reset();
    skopeo_pull(&s, &format!("{REPO}:{TAG}"));
    assert_each_blob_fetched_once(&s);
    let reqs = token.requests();
    assert!(reqs.iter().any(|r| r.granted), "the mirror should have fetched a token");
    assert!(
        reqs.iter().all(|r| r.user.as_deref() == Some(crate::support::upstream::USER)),
        "the mirror should present its configured credentials to the token server"
    );
    assert!(
        reqs.iter()
            .flat_map(|r| &r.scopes)
            .any(|sc| sc.starts_with(&format!("repository:{REPO}:")) && sc.contains("pull")),
        "the token scope should name repository:{REPO}:pull"
    );
}

#[test]
fn bearer_tokens_are_cached_per_scope() {
    // Two platforms of four layers: 10 blobs and 3 manifests for one repository.
    let s = Scenario::start(
        Upstream::bearer(),
        &ImageSpec::multi_platform(111, &[1000, 40_000, 80_000, 120_000]),
        Format::Oci,
        |b, _, _| b.default_ns(NAME),
    );
    let token = s.upstream.token_server().expect("bearer mode has a token server");
    token.reset();
    skopeo_pull(&s, &format!("{REPO}:{TAG}"));
    let repo_scope = format!("repository:{REPO}:");
    let for_repo =
        token.requests().iter().filter(|r| r.scopes.iter().any(|sc| sc.starts_with(&repo_scope))).count();
    let downloads = s.proxy.count_ok("GET", "/blobs/") + s.proxy.count_ok("GET", "/manifests/");
    assert!(for_repo >= 1, "the pull should have needed a token\n{}", token.explain());
    assert!(
        for_repo <= 2,
        "{for_repo} token requests for {repo_scope}pull during one pull of {downloads} \
         manifests and blobs: the mirror should reuse its token until expires_in (300 s), \
         not fetch one per request\n{}\n{}",
        token.explain(),
        s.proxy.explain()
    );
}
