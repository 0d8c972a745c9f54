//! Nothing unverified enters the cache, before or after a crash: `kill -9` in the
//! middle of a blob fill, restart on the same cache directory, and the partial
//! download is never served; a new pull completes with the right bytes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::support::http;
use crate::support::image::ImageSpec;
use crate::support::proxy::Fault;
use crate::support::scenario::{REPO, Scenario, TAG, assert_same_image};
use crate::support::skopeo::Skopeo;
use crate::support::{Explain, digest_of, digest_of_file, rt, wait_until};

/// Every regular file under `dir` (recursively), except under `skip`.
fn files_under(dir: &std::path::Path, skip: &std::path::Path) -> Vec<std::path::PathBuf> {
    crate::support::files_under(dir).into_iter().filter(|p| !p.starts_with(skip)).collect()
}

#[test]
fn kill9_mid_fill_then_restart_serves_no_partial_blob() {
    // 32 MiB at 4 MiB/s: the fill takes ~8 s; the crash comes after ~2 MiB.
    let mut s = Scenario::plain_default_ns(&ImageSpec::single(501, &[1000, 32 << 20]));
    let layer = s.image.info.largest_layer();
    let url = s.mirror.v2(&format!("{REPO}/blobs/{}", layer.digest));
    s.proxy.set_throttle(Some(4 << 20));

    let received = Arc::new(AtomicU64::new(0));
    let client = {
        let url = url.clone();
        let received = received.clone();
        rt().spawn(async move { http::Request::get(&url).stream(Some(received)).await })
    };
    let started = wait_until(Duration::from_secs(30), || received.load(Ordering::SeqCst) >= 2 << 20);
    assert!(
        started,
        "the client should be receiving the blob while it fills (got {} bytes in 30 s)\n{}",
        received.load(Ordering::SeqCst),
        crate::support::explain_all(&s.context())
    );
    s.mirror.kill9();

    // The client's response must not look complete.
    let r = rt()
        .block_on(client)
        .expect("client task")
        .unwrap_or_else(|e| panic!("the client got no response head: {e}"));
    assert!(
        r.bytes < layer.size,
        "the client received the whole blob ({} bytes) although the mirror was killed \
         mid-fill at 4 MiB/s",
        r.bytes
    );

    // Nothing partial is visible in the cache (in-progress files live under tmp/).
    let cache = s.mirror.cache_dir().to_path_buf();
    let blob_path = s.cached_blob_path(&layer.digest);
    assert!(
        !blob_path.exists(),
        "a blob file {} exists after a crash at {} of {} bytes",
        blob_path.display(),
        r.bytes,
        layer.size
    );
    for f in files_under(&cache, &cache.join("tmp")) {
        let len = std::fs::metadata(&f).map(|m| m.len()).unwrap_or(0);
        assert!(
            len < 1 << 20 || len == layer.size,
            "a {len}-byte file {} outside tmp/ looks like a partial download",
            f.display()
        );
    }

    // Restart with the upstream unreachable: the blob is not cached, so it must not
    // be served (a 200 here could only be the partial download).
    s.proxy.set_throttle(None);
    s.proxy.set_fault(Fault::Refuse);
    s.mirror.start_again();
    let head = http::Request::head(&url).send();
    assert_ne!(head.status, 200, "HEAD of the half-downloaded blob after a crash answered 200");
    let get = http::Request::get(&url).send();
    assert_ne!(
        get.status,
        200,
        "GET of the half-downloaded blob after a crash answered 200 with {} bytes",
        get.body.len()
    );
    assert!(get.status >= 400, "status {}", get.status);

    // Upstream back: a new pull completes, with a fresh upstream download.
    // The mirror marked the upstream down; its probe brings it back within seconds.
    s.proxy.set_fault(Fault::None);
    s.proxy.reset();
    let mut get = http::Request::get(&url).send();
    let deadline = Instant::now() + Duration::from_secs(15);
    while get.status == 503 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        get = http::Request::get(&url).send();
    }
    assert_eq!(get.status, 200, "{}\n{}", get.text(), s.mirror.explain());
    assert_eq!(get.body.len() as u64, layer.size);
    assert_eq!(digest_of(&get.body), layer.digest);
    assert_eq!(
        s.proxy.count_ok("GET", &format!("/blobs/{}", layer.digest)),
        1,
        "the blob should have been downloaded again after the crash"
    );
    let got = Skopeo::new().context(&s.mirror).context(&s.proxy).pull_via_mirror(
        &s.mirror,
        &format!("{REPO}:{TAG}"),
        &s.out_dir("pull"),
    );
    assert_same_image(&s.image.info, &got, &s.context());

    // And now it is in the cache, verified, where the layout says.
    assert!(
        wait_until(Duration::from_secs(10), || blob_path.is_file()),
        "the blob should be cached at {}",
        blob_path.display()
    );
    assert_eq!(digest_of_file(&blob_path), layer.digest);
}

#[test]
fn kill9_after_complete_pull_keeps_the_cache() {
    let mut s = Scenario::plain_default_ns(&ImageSpec::multi_platform(502, &[1000, 300_000]));
    let pull = |s: &Scenario| {
        let got = Skopeo::new().context(&s.mirror).context(&s.proxy).pull_via_mirror(
            &s.mirror,
            &format!("{REPO}:{TAG}"),
            &s.out_dir("pull"),
        );
        assert_same_image(&s.image.info, &got, &s.context());
    };
    pull(&s);
    s.mirror.kill9();
    s.proxy.set_fault(Fault::Refuse);
    s.proxy.reset();
    s.mirror.start_again();
    pull(&s);
    assert_eq!(
        s.proxy.total() + s.proxy.refused_connections() as usize,
        0,
        "the pull after a crash should be served from the cache"
    );
}
