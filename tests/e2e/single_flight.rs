//! One upstream fetch per digest, streamed to everyone: concurrent clients of the
//! same uncached blob cause one upstream download, and all of them receive bytes
//! while that download is still running.

use std::time::Duration;

use crate::support::Explain;
use crate::support::http::{self, Streamed};
use crate::support::image::ImageSpec;
use crate::support::proxy::BodyEnd;
use crate::support::scenario::{REPO, Scenario, TAG, assert_same_image};
use crate::support::skopeo::Skopeo;

const CLIENTS: usize = 16;

#[test]
fn sixteen_concurrent_clients_one_upstream_download_streamed() {
    // 16 MiB at 4 MiB/s: the upstream download takes about 4 s.
    let s = Scenario::plain_default_ns(&ImageSpec::single(401, &[16 << 20]));
    let layer = s.image.info.largest_layer();
    s.proxy.set_throttle(Some(4 << 20));
    let url = s.mirror.v2(&format!("{REPO}/blobs/{}", layer.digest));

    let results: Vec<Result<Streamed, String>> = http::Request::get(&url).stream_concurrently(CLIENTS);

    let downloads = s.proxy.matching("GET", &format!("/blobs/{}", layer.digest));
    assert_eq!(
        downloads.len(),
        1,
        "{CLIENTS} concurrent clients should cause exactly one upstream GET of the blob"
    );
    let upstream = &downloads[0];
    assert_eq!(upstream.end, BodyEnd::Complete, "the upstream download should complete");
    let upstream_done = upstream.finished.expect("the upstream download has finished");

    eprintln!(
        "upstream download took {:?}; clients' first body bytes after its start: {:?}",
        upstream_done.duration_since(upstream.started),
        results
            .iter()
            .filter_map(|r| r.as_ref().ok()?.first_body_byte_at)
            .map(|t| t.saturating_duration_since(upstream.started))
            .collect::<Vec<_>>()
    );
    for (i, r) in results.iter().enumerate() {
        let r = r.as_ref().unwrap_or_else(|e| panic!("client {i}: {e}"));
        assert_eq!(r.status, 200, "client {i}");
        assert_eq!(r.error, None, "client {i}: body broke off");
        assert_eq!(r.bytes, layer.size, "client {i}: wrong length");
        assert_eq!(r.digest, layer.digest, "client {i}: wrong bytes");
        let first = r.first_body_byte_at.expect("a non-empty body");
        // Streaming, not store-and-forward: each client had bytes well before the
        // upstream download ended (it takes ~4 s; allow the first 0.5 s of slack).
        assert!(
            first + Duration::from_millis(500) < upstream_done,
            "client {i} got its first body byte {:?} after the upstream download \
             started and {:?} before it ended: the blob was not streamed while filling\n{}",
            first.duration_since(upstream.started),
            upstream_done.saturating_duration_since(first),
            s.mirror.explain()
        );
    }
    assert!(
        s.mirror.wait_for_log_field("outcome", "joined", Duration::from_secs(5)),
        "clients that arrived during the fill should be logged with outcome=joined"
    );
}

#[test]
fn concurrent_skopeo_pulls_fetch_each_blob_once() {
    // Eight skopeo processes pull the same image at once, while the upstream is slow
    // enough (2 MiB/s for ~4 MiB of layers) that their requests overlap.
    let s = Scenario::plain_default_ns(&ImageSpec::single(402, &[1000, 1 << 20, 3 << 20]));
    s.proxy.set_throttle(Some(2 << 20));
    let pulls: Vec<_> = (0..8)
        .map(|i| {
            let out = s.out_dir(&format!("pull{i}"));
            let mirror_ref = format!("docker://{}/{REPO}:{TAG}", s.mirror.host_port());
            std::thread::spawn(move || {
                let skopeo = Skopeo::new();
                let mut args = vec![
                    "copy".to_string(),
                    "--all".into(),
                    "--preserve-digests".into(),
                    "--src-tls-verify=false".into(),
                ];
                args.push(mirror_ref);
                args.push(format!("dir:{}", out.display()));
                let o = skopeo.try_run(&args);
                (o, out)
            })
        })
        .collect();
    for (i, p) in pulls.into_iter().enumerate() {
        let (o, out) = p.join().expect("skopeo thread");
        assert!(
            o.status.success(),
            "skopeo pull {i} failed: {}\n{}",
            String::from_utf8_lossy(&o.stderr),
            crate::support::explain_all(&s.context())
        );
        let got = crate::support::skopeo::read_dir_image(&out);
        assert_same_image(&s.image.info, &got, &s.context());
    }
    for blob in s.image.info.blobs() {
        assert_eq!(
            s.proxy.count_ok("GET", &format!("/blobs/{}", blob.digest)),
            1,
            "blob {} should have been downloaded from the upstream once for 8 pulls\n{}",
            blob.digest,
            s.proxy.explain()
        );
    }
}
