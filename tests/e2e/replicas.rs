//! Replicas sharing one cache in an S3-compatible bucket (`storage.s3`), on
//! s3s-fs: what one replica pulled is a hit on another, with no upstream request.

use crate::support::http::Request;
use crate::support::image::Format;
use crate::support::image::ImageSpec;
use crate::support::mirror::{Mirror, MirrorBuilder, RegistryConfig};
use crate::support::s3::{KEY_ID, KEY_ID_VAR, S3Server, SECRET, SECRET_VAR};
use crate::support::scenario::{NAME, REPO, Scenario, TAG, assert_same_image, raw_pull};
use crate::support::skopeo::Skopeo;
use crate::support::upstream::Upstream;
use std::time::Duration;

const BUCKET: &str = "mirror";

fn on_bucket(b: MirrorBuilder, s3: &S3Server) -> MirrorBuilder {
    b.extra_yaml(&s3.storage_yaml(BUCKET, "edge/site-1")).env(KEY_ID_VAR, KEY_ID).env(SECRET_VAR, SECRET)
}

#[test]
fn a_pull_through_one_replica_is_a_hit_on_another() {
    let s3 = S3Server::start(BUCKET);
    let s = Scenario::start(
        Upstream::plain(),
        &ImageSpec::multi_platform(1301, &[1000, 300_000]),
        Format::Oci,
        |b, _, _| on_bucket(b.default_ns(NAME), &s3),
    );
    let got = Skopeo::new().context(&s.mirror).pull_via_mirror(
        &s.mirror,
        &format!("{REPO}:{TAG}"),
        &s.out_dir("a"),
    );
    assert_same_image(&s.image.info, &got, &s.context());
    assert!(s.proxy.total() > 0, "the first pull must go upstream");
    // The content is in the bucket, under the prefix, and not in the replica's directory.
    assert!(!s3.objects(BUCKET, "edge/site-1/blobs").is_empty(), "no blob reached the bucket");
    assert!(!s3.objects(BUCKET, "edge/site-1/manifests").is_empty(), "no manifest reached the bucket");
    assert!(s.cache_files("blobs").is_empty(), "blobs were kept in imagePath: {:?}", s.cache_files("blobs"));

    let b = on_bucket(
        Mirror::builder().registry(RegistryConfig::via_proxy(NAME, &s.proxy, &s.upstream)).default_ns(NAME),
        &s3,
    )
    .start();
    s.proxy.reset();
    let got = Skopeo::new().context(&b).pull_via_mirror(&b, &format!("{REPO}:{TAG}"), &s.out_dir("b"));
    assert_same_image(&s.image.info, &got, &[&b, &s.proxy, &s3]);
    raw_pull(&b, REPO, TAG, "");
    let asked: Vec<String> = s.proxy.requests().iter().map(|r| format!("{} {}", r.method, r.path)).collect();
    assert!(asked.is_empty(), "replica B asked the upstream for what replica A had cached: {asked:#?}");
}

#[test]
fn a_bucket_that_stops_answering_is_a_503_and_its_return_needs_no_restart() {
    let mut s3 = S3Server::start(BUCKET);
    let s = Scenario::start(
        Upstream::plain(),
        &ImageSpec::single(1302, &[1000, 200_000]),
        Format::Oci,
        |b, _, _| on_bucket(b.default_ns(NAME), &s3),
    );
    let info = raw_pull(&s.mirror, REPO, TAG, "");
    let blob = info.blobs().last().expect("the image has blobs").digest.clone();
    let url = s.mirror.v2(&format!("{REPO}/blobs/{blob}"));

    s3.stop();
    let r = Request::get(&url).timeout(Duration::from_secs(30)).send();
    r.assert_oci_error(503, "UNAVAILABLE", "a blob while the bucket is down");
    assert!(r.text().contains("storage"), "the message should say the storage did not answer: {}", r.text());

    s3.restart();
    s.proxy.reset();
    let r = Request::get(&url).send();
    assert_eq!(r.status, 200, "the bucket is back: {}", r.text());
    assert_eq!(&r.body[..], &s.blob_bytes(&blob)[..], "the blob is intact");
    let again = raw_pull(&s.mirror, REPO, TAG, "");
    assert_same_image(&info, &again, &[&s.mirror, &s.proxy, &s3]);
    assert_eq!(s.proxy.total(), 0, "what the bucket holds was fetched upstream again");
}
