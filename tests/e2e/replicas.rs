//! Replicas sharing one cache in an S3-compatible bucket (`storage.s3`), on
//! s3s-fs: what one replica pulled is a hit on another, with no upstream request.

use crate::support::cli::{run_cli_with_env, seed};
use crate::support::free_port;
use crate::support::http::Request;
use crate::support::http::Streamed;
use crate::support::image::Format;
use crate::support::image::ImageSpec;
use crate::support::mirror::{Mirror, MirrorBuilder, RegistryConfig};
use crate::support::proxy::Proxy;
use crate::support::s3::{KEY_ID, KEY_ID_VAR, PEER_TOKEN, PEER_TOKEN_VAR, S3Server, SECRET, SECRET_VAR};
use crate::support::scenario::{NAME, REPO, Scenario, TAG, assert_same_image, raw_pull};
use crate::support::skopeo::Skopeo;
use crate::support::upstream::Upstream;
use crate::support::{Explain, digest_of, wait_until};
use std::time::Duration;

const BUCKET: &str = "mirror";

/// A replica with a peer port: the others stream its downloads in progress.
fn peer_on_bucket(b: MirrorBuilder, s3: &S3Server) -> MirrorBuilder {
    b.extra_yaml(&s3.storage_yaml_with_peers(BUCKET, "edge/site-1", free_port()))
        .env(KEY_ID_VAR, KEY_ID)
        .env(SECRET_VAR, SECRET)
        .env(PEER_TOKEN_VAR, PEER_TOKEN)
}

fn replica(s: &Scenario, s3: &S3Server) -> Mirror {
    peer_on_bucket(
        Mirror::builder().registry(RegistryConfig::via_proxy(NAME, &s.proxy, &s.upstream)).default_ns(NAME),
        s3,
    )
    .start()
}

/// `clients` concurrent GETs of `url`, on a thread of their own.
fn stream_from(url: String, clients: usize) -> std::thread::JoinHandle<Vec<Result<Streamed, String>>> {
    std::thread::spawn(move || Request::get(&url).stream_concurrently(clients))
}

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
    // B runs beside A from the start: it learns what A caches from the bucket.
    let b = on_bucket(
        Mirror::builder().registry(RegistryConfig::via_proxy(NAME, &s.proxy, &s.upstream)).default_ns(NAME),
        &s3,
    )
    .start();
    assert!(b.wait_for_log("cache index loaded", Duration::from_secs(10)), "B never loaded its index");
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
    // A client has the last byte once it is verified, before the upload ends.
    let blobs = info.blobs().len();
    assert!(
        wait_until(Duration::from_secs(10), || s3.objects(BUCKET, "edge/site-1/blobs").len() == blobs),
        "the blobs never all reached the bucket"
    );

    // Clients keep pulling the blob while the bucket goes away and comes back.
    let want = s.blob_bytes(&blob);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (url, want, stop) = (url.clone(), want.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match Request::get(&url).timeout(Duration::from_secs(30)).try_send() {
                    Ok(r) if r.status == 200 => {
                        assert_eq!(&r.body[..], &want[..], "a 200 with the wrong bytes under load");
                        seen.push(200);
                    }
                    Ok(r) => {
                        r.assert_oci_error(503, "UNAVAILABLE", "a blob while the bucket is down, under load");
                        seen.push(503);
                    }
                    Err(e) => panic!("the mirror failed a client instead of answering: {e}"),
                }
            }
            seen
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    s3.stop();
    let r = Request::get(&url).timeout(Duration::from_secs(30)).send();
    r.assert_oci_error(503, "UNAVAILABLE", "a blob while the bucket is down");
    assert!(r.text().contains("storage"), "the message should say the storage did not answer: {}", r.text());

    std::thread::sleep(Duration::from_millis(500));
    s3.restart();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = load.join().expect("the clients under load");
    assert!(seen.contains(&503), "no client saw the bucket down: {seen:?}");
    assert_eq!(seen.last(), Some(&200), "serving did not resume once the bucket was back: {seen:?}");
    s.proxy.reset();
    let r = Request::get(&url).send();
    assert_eq!(r.status, 200, "the bucket is back: {}", r.text());
    assert_eq!(&r.body[..], &s.blob_bytes(&blob)[..], "the blob is intact");
    let again = raw_pull(&s.mirror, REPO, TAG, "");
    assert_same_image(&info, &again, &[&s.mirror, &s.proxy, &s3]);
    let asked: Vec<String> = s.proxy.requests().iter().map(|r| format!("{} {}", r.method, r.path)).collect();
    assert!(asked.is_empty(), "what the bucket holds was asked of the upstream again: {asked:#?}");
}

#[test]
fn sixteen_clients_across_three_replicas_cost_one_upstream_fetch_streamed_to_all() {
    // 16 MiB at 4 MiB/s: the download takes about 4 s, and the herd arrives during it.
    let s3 = S3Server::start(BUCKET);
    let s =
        Scenario::start(Upstream::plain(), &ImageSpec::single(1303, &[16 << 20]), Format::Oci, |b, _, _| {
            peer_on_bucket(b.default_ns(NAME), &s3)
        });
    let (b, c) = (replica(&s, &s3), replica(&s, &s3));
    let layer = s.image.info.largest_layer();
    let path = format!("{REPO}/blobs/{}", layer.digest);
    s.proxy.set_throttle(Some(4 << 20));

    let on_a = stream_from(s.mirror.v2(&path), 6);
    assert!(
        s.proxy.wait_for("GET", &layer.digest, Duration::from_secs(20)),
        "replica A never fetched the blob"
    );
    // s3s-fs does not make conditional creates atomic, so the other replicas
    // arrive once A holds the lease (AWS S3, MinIO and Ceph RGW do).
    let on_b = stream_from(b.v2(&path), 5);
    let on_c = stream_from(c.v2(&path), 5);
    let results: Vec<_> =
        [on_a, on_b, on_c].into_iter().flat_map(|t| t.join().expect("a client thread")).collect();

    let fetches = s.proxy.matching("GET", &format!("/blobs/{}", layer.digest));
    assert_eq!(
        fetches.len(),
        1,
        "16 clients across 3 replicas should cost one upstream GET of the blob: {fetches:#?}"
    );
    let upstream_done = fetches[0].finished.expect("the upstream download finished");
    for (i, r) in results.iter().enumerate() {
        let r = r.as_ref().unwrap_or_else(|e| panic!("client {i}: {e}"));
        assert_eq!((r.status, &r.error), (200, &None), "client {i}");
        assert_eq!((r.bytes, &r.digest), (layer.size, &layer.digest), "client {i}: wrong bytes");
        let first = r.first_body_byte_at.expect("a body");
        assert!(
            first + Duration::from_millis(500) < upstream_done,
            "client {i} got its first byte only {:?} before the upstream download ended: not streamed across replicas",
            upstream_done.saturating_duration_since(first)
        );
    }
    // And it is in the bucket for everyone after.
    s.proxy.reset();
    let r = Request::get(&c.v2(&path)).send();
    assert_eq!((r.status, digest_of(&r.body)), (200, layer.digest.clone()));
    assert_eq!(s.proxy.count("GET", &layer.digest), 0);
}

#[test]
fn killing_the_replica_that_fetches_a_blob_hands_the_download_to_another() {
    // 8 MiB at 2 MiB/s: A is killed about 1.5 s into its 4 s download.
    let s3 = S3Server::start(BUCKET);
    let mut s =
        Scenario::start(Upstream::plain(), &ImageSpec::single(1304, &[8 << 20]), Format::Oci, |b, _, _| {
            peer_on_bucket(b.default_ns(NAME), &s3)
        });
    let b = replica(&s, &s3);
    let layer = s.image.info.largest_layer();
    let path = format!("{REPO}/blobs/{}", layer.digest);
    s.proxy.set_throttle(Some(2 << 20));

    let _on_a = stream_from(s.mirror.v2(&path), 1);
    assert!(
        s.proxy.wait_for("GET", &layer.digest, Duration::from_secs(20)),
        "replica A never fetched the blob"
    );
    let on_b = stream_from(b.v2(&path), 2);
    std::thread::sleep(Duration::from_millis(1500));
    s.mirror.kill9();

    for (i, r) in on_b.join().expect("B's clients").iter().enumerate() {
        let r = r.as_ref().unwrap_or_else(|e| panic!("B's client {i}: {e}"));
        assert_eq!((r.status, &r.error), (200, &None), "B's client {i}\n{}", b.explain());
        assert_eq!((r.bytes, &r.digest), (layer.size, &layer.digest), "B's client {i}: wrong bytes");
    }
    let fetches = s.proxy.matching("GET", &format!("/blobs/{}", layer.digest));
    assert_eq!(fetches.len(), 2, "A's download and B's takeover: {fetches:#?}");
    assert!(
        fetches[1].range.as_deref().is_some_and(|r| !r.starts_with("bytes=0-")),
        "B should resume where the download stood, not start over: {:?}",
        fetches[1].range
    );
    // Committed whole by B: served from the bucket, byte for byte.
    s.proxy.reset();
    let r = Request::get(&b.v2(&path)).send();
    assert_eq!((r.status, digest_of(&r.body)), (200, layer.digest.clone()), "{}", b.explain());
    assert_eq!(s.proxy.count("GET", &layer.digest), 0);
}

#[test]
fn with_redirect_clients_fetch_cached_blobs_from_the_bucket() {
    let s3 = S3Server::start(BUCKET);
    let s = Scenario::start(
        Upstream::plain(),
        &ImageSpec::single(1305, &[1000, 300_000]),
        Format::Oci,
        |b, _, _| {
            b.default_ns(NAME)
                .extra_yaml(&format!("{}    redirect: true\n", s3.storage_yaml(BUCKET, "edge/site-1")))
                .env(KEY_ID_VAR, KEY_ID)
                .env(SECRET_VAR, SECRET)
        },
    );
    // Not cached yet: served through the mirror as usual.
    let info = raw_pull(&s.mirror, REPO, TAG, "");
    let blobs = info.blobs();
    assert!(
        wait_until(Duration::from_secs(10), || s3.objects(BUCKET, "edge/site-1/blobs").len() == blobs.len()),
        "the blobs never all reached the bucket"
    );
    s.proxy.reset();
    for blob in &blobs {
        let r = Request::get(&s.mirror.v2(&format!("{REPO}/blobs/{}", blob.digest))).send();
        assert_eq!(r.status, 307, "a cached blob should be a redirect: {}", r.text());
        let location = r.header("location").expect("a Location").to_owned();
        assert!(location.starts_with(&s3.endpoint), "not the bucket's URL: {location}");
        assert_eq!(r.header("docker-content-digest"), Some(blob.digest.as_str()));
        let fetched = Request::get(&location).send();
        assert_eq!(
            (fetched.status, digest_of(&fetched.body)),
            (200, blob.digest.clone()),
            "the presigned URL"
        );
    }
    // skopeo follows the redirects, as containerd does.
    let got = Skopeo::new().context(&s.mirror).pull_via_mirror(
        &s.mirror,
        &format!("{REPO}:{TAG}"),
        &s.out_dir("r"),
    );
    assert_same_image(&s.image.info, &got, &s.context());
    assert_eq!(s.proxy.count_any("/blobs/"), 0, "a cached blob was fetched upstream");
}

#[test]
fn prune_removes_an_image_from_the_bucket_taking_its_turn() {
    let s3 = S3Server::start(BUCKET);
    let s = Scenario::start(
        Upstream::plain(),
        &ImageSpec::single(1306, &[1000, 100_000]),
        Format::Oci,
        |b, _, _| on_bucket(b.default_ns(NAME), &s3),
    );
    let info = raw_pull(&s.mirror, REPO, TAG, "");
    let blobs = info.blobs().len();
    assert!(
        wait_until(Duration::from_secs(10), || s3.objects(BUCKET, "edge/site-1/blobs").len() == blobs),
        "the blobs never all reached the bucket"
    );
    let env = [(KEY_ID_VAR, KEY_ID), (SECRET_VAR, SECRET)];
    let config = s.mirror.config_path().to_str().expect("a UTF-8 path").to_owned();
    let r =
        run_cli_with_env(&["--config-file", &config, "prune", "--pattern", REPO], &env).ok(&[&s.mirror, &s3]);
    assert!(r.output().contains("removed 1 images"), "{}", r.output());
    assert!(s3.objects(BUCKET, "edge/site-1/blobs").is_empty(), "blobs left in the bucket");
    assert!(s3.objects(BUCKET, "edge/site-1/manifests").is_empty(), "manifests left in the bucket");
    assert!(s3.objects(BUCKET, "edge/site-1/leases").is_empty(), "the turn to prune was not given back");
}

#[test]
fn the_size_cap_evicts_from_the_bucket() {
    const LAYER: usize = 300_000;
    let s3 = S3Server::start(BUCKET);
    let up = Upstream::plain();
    let work = crate::support::tempdir("s3-cap");
    let images: Vec<_> = (1..=3u64)
        .map(|n| seed(&up, work.path(), &ImageSpec::single(1310 + n, &[LAYER]), &format!("cap/img{n}"), "v1"))
        .collect();
    let proxy = Proxy::start(&up);
    // Room for two images: the third evicts the least recently pulled.
    let (max, target) = (LAYER * 25 / 10, LAYER * 15 / 10);
    let mirror = on_bucket(
        Mirror::builder()
            .registry(RegistryConfig::via_proxy(NAME, &proxy, &up))
            .default_ns(NAME)
            .extra_yaml(&format!("cacheSize: {{max: \"{max}\", target: \"{target}\"}}")),
        &s3,
    )
    .start();
    let in_bucket = || -> u64 {
        s3.objects(BUCKET, "edge/site-1/blobs")
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    };
    for n in 1..=3 {
        raw_pull(&mirror, &format!("cap/img{n}"), "v1", "");
        // Pull times are kept to the second.
        std::thread::sleep(Duration::from_millis(1100));
    }
    assert!(
        wait_until(Duration::from_secs(10), || in_bucket() <= max as u64),
        "{} bytes of blobs in the bucket, over cacheSize.max {max}\n{}",
        in_bucket(),
        mirror.explain()
    );
    let layer_of = |n: usize| images[n].info.largest_layer().digest.clone();
    let names: Vec<String> = s3
        .objects(BUCKET, "edge/site-1/blobs")
        .iter()
        .filter_map(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()))
        .collect();
    assert!(
        !names.iter().any(|n| layer_of(0).ends_with(n.as_str())),
        "the least recently pulled image is still in the bucket"
    );
    assert!(
        names.iter().any(|n| layer_of(2).ends_with(n.as_str())),
        "the last pulled image was evicted: {names:?}"
    );
    assert!(mirror.wait_for_log("evicted the least recently pulled images", Duration::from_secs(5)));
}
