//! Keeping the cache inside its disk, against the real binary: `cacheSize` evicts the
//! least recently pulled images and never the pinned ones, a cache full of pinned
//! images refuses new downloads with 507 and keeps serving, `pruneConfig` runs
//! inside `serve`, and `pinRunningImages` keeps what a (stand-in) cluster's pods run.
//!
//! Images are about 1 MiB each (one incompressible layer); the caps are set in
//! multiples of one image's bytes, so which images go is decided by the rules, not by
//! rounding.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::support::cli::run_cli;
use crate::support::cli::{full, s, seed};
use crate::support::image::{ImageSpec, Seeded};
use crate::support::kube::KubeApi;
use crate::support::metrics;
use crate::support::mirror::{Mirror, MirrorBuilder, RegistryConfig};
use crate::support::proxy::{Fault, Proxy};
use crate::support::scenario::{NAME, assert_same_image};
use crate::support::skopeo::Skopeo;
use crate::support::upstream::Upstream;
use crate::support::{Explain, explain_all, files_under, tempdir, wait_until};

/// Payload of each image's one layer: about 1 MiB, incompressible.
const LAYER: usize = 1_000_000;

/// The bytes of an image's blobs (config and layers).
fn image_bytes(image: &Seeded) -> u64 {
    image.info.blobs().iter().map(|b| b.size).sum()
}

/// The bytes of every file under `<cache>/blobs`.
fn blob_bytes_on_disk(cache: &Path) -> u64 {
    files_under(&cache.join("blobs")).iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum()
}

/// A fresh directory under `work`.
fn fresh(work: &Path, name: &str) -> PathBuf {
    let mut n = 0;
    loop {
        let p = work.join(format!("{name}-{n}"));
        if !p.exists() {
            return p;
        }
        n += 1;
    }
}

/// `ociregistry list --image-path CACHE --json` (safe beside the running server):
/// each image's name and whether it is complete.
fn listed(cache: &Path, context: &[&dyn Explain]) -> BTreeMap<String, bool> {
    let json = run_cli(&["list", "--image-path", s(cache), "--json"]).ok(context).json();
    json.as_array()
        .unwrap_or_else(|| panic!("list --json is not a list: {json:#}"))
        .iter()
        .map(|e| {
            let name = e["name"].as_str().unwrap_or_else(|| panic!("an entry without a name: {e:#}"));
            (name.to_string(), e["complete"] == Value::Bool(true))
        })
        .collect()
}

/// Pulls `image` with skopeo through `mirror` (in-path name) and checks it is the upstream's.
fn pull(mirror: &Mirror, image: &Seeded, work: &Path, context: &[&dyn Explain]) {
    let got = Skopeo::new().context(mirror).pull_via_mirror(mirror, &full(image), &fresh(work, "pull"));
    assert_same_image(&image.info, &got, context);
}

/// Status of `GET /v2/up.test/<repo>/manifests/<tag>` through the mirror.
fn manifest_status(mirror: &Mirror, image: &Seeded) -> u16 {
    mirror
        .request("GET", &format!("/v2/{NAME}/{}/manifests/{}", image.repo, image.tag))
        .accept_manifests()
        .send()
        .status
}

/// Pull times are kept to the second: a pause between pulls makes their order certain.
fn next_second() {
    std::thread::sleep(Duration::from_millis(1100));
}

/// A metric's value (0 when the mirror does not show it yet).
fn metric(mirror: &Mirror, name: &str) -> f64 {
    metrics::metric(&mirror.metrics_text(), name, &[]).unwrap_or(0.0)
}

/// The mirror fetching [`NAME`] through `proxy`, with `yaml` added to its configuration.
fn mirror_via(proxy: &Proxy, up: &Upstream, yaml: &str) -> MirrorBuilder {
    Mirror::builder().registry(RegistryConfig::via_proxy(NAME, proxy, up)).extra_yaml(yaml)
}

#[test]
fn size_cap_evicts_least_recently_pulled_and_keeps_pinned() {
    let up = Upstream::plain();
    let work = tempdir("capacity-lru");
    let w = work.path();
    let images: Vec<Seeded> = (1..=6u64)
        .map(|n| seed(&up, w, &ImageSpec::single(3100 + n, &[LAYER]), &format!("cap/img{n}"), "v1"))
        .collect();
    let unit = images.iter().map(image_bytes).max().expect("six images");
    // Room for four images; eviction goes down to three and a half with room for
    // the download that asked. (With a cap of about three images, eviction down to
    // two and a half leaves room for the pinned image and one other only, so a
    // re-pulled image could never outlive two newer ones: the order would not show.)
    let (max, target) = (unit * 42 / 10, unit * 35 / 10);
    let proxy = Proxy::start(&up);
    let mirror = mirror_via(
        &proxy,
        &up,
        &format!("cacheSize: {{max: \"{max}\", target: \"{target}\"}}\npinned: [\"{NAME}/cap/img1:*\"]\n"),
    )
    .metrics()
    .start();
    let cache = mirror.cache_dir().to_path_buf();
    let evicted_before = metric(&mirror, "ociregistry_evicted_images_total");

    let check_cap = |after: &str| {
        let on_disk = blob_bytes_on_disk(&cache);
        assert!(
            on_disk <= max,
            "after {after}: {on_disk} bytes under blobs/, more than cacheSize.max {max}\n{}",
            explain_all(&[&mirror, &proxy])
        );
    };
    // Pulled in order 1..4; 2 again (a cache hit: only its pull time changes); then 5 and 6.
    for (n, image) in images.iter().enumerate().take(4) {
        pull(&mirror, image, w, &[&mirror, &proxy]);
        check_cap(&format!("pulling image {}", n + 1));
        next_second();
    }
    pull(&mirror, &images[1], w, &[&mirror, &proxy]);
    check_cap("pulling image 2 again");
    next_second();
    for (n, image) in images.iter().enumerate().skip(4) {
        pull(&mirror, image, w, &[&mirror, &proxy]);
        check_cap(&format!("pulling image {}", n + 1));
        next_second();
    }

    // Image 1 is the least recently pulled but pinned; 3 and 4 were the least
    // recently pulled of the rest; 2 was pulled after 4.
    let list = listed(&cache, &[&mirror]);
    let ctx = || format!("list: {list:#?}\n{}", explain_all(&[&mirror, &proxy]));
    for kept in [0, 1, 4, 5] {
        let name = full(&images[kept]);
        assert_eq!(list.get(&name), Some(&true), "{name} should still be cached, complete\n{}", ctx());
    }
    for gone in [2, 3] {
        let name = full(&images[gone]);
        assert!(!list.contains_key(&name), "{name} should have been evicted\n{}", ctx());
    }
    let evicted = metric(&mirror, "ociregistry_evicted_images_total") - evicted_before;
    assert_eq!(evicted, 2.0, "ociregistry_evicted_images_total should count images 3 and 4\n{}", ctx());
    assert!(
        mirror.wait_for_log("evicted the least recently pulled images", Duration::from_secs(5)),
        "the eviction should be logged\n{}",
        ctx()
    );

    // The upstream goes away: what was kept is served whole, what was evicted is not.
    proxy.set_fault(Fault::Refuse);
    for kept in [0, 1, 4, 5] {
        pull(&mirror, &images[kept], w, &[&mirror, &proxy]);
    }
    for gone in [2, 3] {
        let status = manifest_status(&mirror, &images[gone]);
        assert_ne!(status, 200, "{} was evicted and the upstream is gone\n{}", full(&images[gone]), ctx());
    }
}

#[test]
fn a_full_cache_of_pinned_images_refuses_new_downloads_with_507() {
    let up = Upstream::plain();
    let work = tempdir("capacity-full");
    let w = work.path();
    let first = seed(&up, w, &ImageSpec::single(3201, &[LAYER]), "full/first", "v1");
    let second = seed(&up, w, &ImageSpec::single(3202, &[LAYER]), "full/second", "v1");
    let max = image_bytes(&first) * 3 / 2;
    let proxy = Proxy::start(&up);
    let mirror = mirror_via(&proxy, &up, &format!("cacheSize: {{max: \"{max}\"}}\npinned: [\"*\"]\n"))
        .metrics()
        .start();
    let cache = mirror.cache_dir().to_path_buf();
    pull(&mirror, &first, w, &[&mirror, &proxy]);
    let refused_before = metric(&mirror, "ociregistry_fills_refused_full_total");

    // The second image: its manifest (small, not capped) then its layer, which would pass max.
    assert_eq!(manifest_status(&mirror, &second), 200, "{}", mirror.explain());
    let layer = second.info.largest_layer();
    let mark = mirror.log_mark();
    let r = mirror.request("GET", &format!("/v2/{NAME}/{}/blobs/{}", second.repo, layer.digest)).send();
    assert_eq!(
        r.status,
        507,
        "a download that would pass cacheSize.max with only pinned images cached: 507 Insufficient Storage (got {}: {})\n{}",
        r.status,
        r.text(),
        explain_all(&[&mirror, &proxy])
    );
    if let Some(problem) = r.oci_error_mismatch(507, None) {
        panic!("the 507 should carry the OCI error envelope: {problem}");
    }
    assert!(r.text().contains("full"), "the 507's message should say the cache is full: {}", r.text());
    assert!(
        proxy.count_ok("GET", &format!("/blobs/{}", layer.digest)) == 0,
        "a refused download must not be fetched from the upstream\n{}",
        proxy.explain()
    );
    // A clear line: why (everything left is pinned) and what follows (507s).
    let said = wait_until(Duration::from_secs(5), || {
        mirror
            .log_since(mark)
            .lines()
            .any(|l| l.contains("WARN") && l.contains("pinned") && l.contains("507"))
    });
    assert!(said, "the log should say everything left is pinned and downloads get 507\n{}", mirror.explain());
    let refused = metric(&mirror, "ociregistry_fills_refused_full_total") - refused_before;
    assert!(
        refused >= 1.0,
        "ociregistry_fills_refused_full_total should count the refusal\n{}",
        mirror.explain()
    );
    let on_disk = blob_bytes_on_disk(&cache);
    assert!(on_disk <= max, "{on_disk} bytes under blobs/, more than cacheSize.max {max}");

    // The first image keeps being served, also with the upstream gone.
    proxy.set_fault(Fault::Refuse);
    pull(&mirror, &first, w, &[&mirror, &proxy]);
    let list = listed(&cache, &[&mirror]);
    assert_eq!(list.get(&full(&first)), Some(&true), "{list:#?}");
}

#[test]
fn prune_config_runs_inside_serve() {
    let up = Upstream::plain();
    let work = tempdir("capacity-prune");
    let w = work.path();
    let alpha = seed(&up, w, &ImageSpec::single(3301, &[1000, 200_000]), "team/alpha", "v1");
    let beta = seed(&up, w, &ImageSpec::single(3302, &[1000, 200_000]), "team/beta", "v1");
    let proxy = Proxy::start(&up);
    let cache = w.join("cache");
    let base = Mirror::builder().registry(RegistryConfig::via_proxy(NAME, &proxy, &up)).image_path(&cache);
    let prune = |dry_run: bool| {
        format!(
            "pruneConfig: {{enabled: true, type: pattern, expr: \"team/alpha\", frequency: 1s, dryRun: {dry_run}}}\n"
        )
    };

    // Both pulled by a client through a mirror without a pruner (no race with a pull in flight).
    let mut mirror = base.clone().start();
    pull(&mirror, &alpha, w, &[&mirror, &proxy]);
    pull(&mirror, &beta, w, &[&mirror, &proxy]);
    mirror.stop();

    // dryRun: runs every second, says what it would prune, removes nothing.
    let mut dry = base.clone().extra_yaml(&prune(true)).start();
    assert!(
        dry.wait_for_log("would prune", Duration::from_secs(10)),
        "with dryRun the pruner should log what it would prune\n{}",
        dry.explain()
    );
    let line = dry.log().lines().find(|l| l.contains("would prune")).unwrap_or_default().to_string();
    assert!(
        line.contains(&full(&alpha)) && !line.contains("team/beta"),
        "the dry run names alpha only: {line}"
    );
    // A few more runs: still nothing removed.
    std::thread::sleep(Duration::from_secs(3));
    let list = listed(&cache, &[&dry]);
    for image in [&alpha, &beta] {
        assert_eq!(list.get(&full(image)), Some(&true), "dryRun removed {}: {list:#?}", full(image));
    }
    assert!(!dry.log().contains("pruneConfig: pruned"), "dryRun pruned\n{}", dry.explain());
    dry.stop();

    // For real: alpha goes within a few seconds, beta stays.
    let real = base.clone().extra_yaml(&prune(false)).start();
    let mut list = BTreeMap::new();
    let gone = wait_until(Duration::from_secs(10), || {
        list = listed(&cache, &[&real]);
        !list.contains_key(&full(&alpha))
    });
    assert!(gone, "pruneConfig should remove {} within seconds: {list:#?}\n{}", full(&alpha), real.explain());
    assert_eq!(list.get(&full(&beta)), Some(&true), "beta does not match the pattern: {list:#?}");
    // Logged once the removal is done (a moment after the files are gone).
    assert!(
        real.wait_for_log("pruneConfig: pruned", Duration::from_secs(5)),
        "the prune should be logged\n{}",
        real.explain()
    );

    // With the upstream gone: alpha is not served any more, beta is, whole.
    proxy.set_fault(Fault::Refuse);
    assert_ne!(manifest_status(&real, &alpha), 200, "{} was pruned\n{}", full(&alpha), real.explain());
    pull(&real, &beta, w, &[&real, &proxy]);
}

/// Four images of one layer each, pulled in order (pod's image first), through a
/// mirror with `pinRunningImages` listing pods from `kube`, capped so that the
/// fourth needs room.
struct RunningPods {
    images: Vec<Seeded>,
    proxy: Proxy,
    up: Upstream,
    work: tempfile::TempDir,
    max: u64,
}

impl RunningPods {
    fn seed(seed_base: u64) -> RunningPods {
        let up = Upstream::plain();
        let work = tempdir("capacity-kube");
        let images: Vec<Seeded> = ["kube/pod", "kube/idle", "kube/third", "kube/fourth"]
            .iter()
            .enumerate()
            .map(|(n, repo)| {
                seed(&up, work.path(), &ImageSpec::single(seed_base + n as u64, &[LAYER]), repo, "v1")
            })
            .collect();
        let unit = images.iter().map(image_bytes).max().expect("four images");
        let proxy = Proxy::start(&up);
        RunningPods { images, proxy, up, work, max: unit * 36 / 10 }
    }

    fn mirror(&self, kube: &KubeApi) -> Mirror {
        let unit = self.max * 10 / 36;
        mirror_via(
            &self.proxy,
            &self.up,
            &format!(
                "cacheSize: {{max: \"{}\", target: \"{}\"}}\npinRunningImages: true\nkubernetesApi: {{server: \"{}\"}}\n",
                self.max,
                unit * 32 / 10,
                kube.url()
            ),
        )
        .start()
    }
}

#[test]
fn pin_running_images_from_the_kubernetes_api() {
    // A pod runs kube/pod:v1, the least recently pulled image.
    let t = RunningPods::seed(3400);
    let w = t.work.path();
    let [pod, idle, third, fourth] = [&t.images[0], &t.images[1], &t.images[2], &t.images[3]];
    let kube = KubeApi::running(&[&full(pod)]);
    let mirror = t.mirror(&kube);
    let cache = mirror.cache_dir().to_path_buf();
    assert!(
        kube.wait_for_pod_list(Duration::from_secs(10)),
        "the mirror should list pods at start-up\n{}",
        explain_all(&[&mirror, &kube])
    );
    for image in [pod, idle, third, fourth] {
        pull(&mirror, image, w, &[&mirror, &t.proxy, &kube]);
        let on_disk = blob_bytes_on_disk(&cache);
        assert!(on_disk <= t.max, "{on_disk} bytes under blobs/, more than cacheSize.max {}", t.max);
        next_second();
    }
    let list = listed(&cache, &[&mirror]);
    let ctx = || format!("list: {list:#?}\n{}", explain_all(&[&mirror, &kube]));
    assert_eq!(list.get(&full(pod)), Some(&true), "the running pod's image must not be evicted\n{}", ctx());
    assert!(!list.contains_key(&full(idle)), "the idle image, unnamed and oldest, should go\n{}", ctx());
    for image in [third, fourth] {
        assert_eq!(list.get(&full(image)), Some(&true), "{} should stay\n{}", full(image), ctx());
    }
    drop(mirror);

    // The API fails from the start: nothing is evicted, and the log says why.
    let t = RunningPods::seed(3500);
    let w = t.work.path();
    let kube = KubeApi::failing(500);
    let mirror = t.mirror(&kube);
    let cache = mirror.cache_dir().to_path_buf();
    assert!(
        kube.wait_for_pod_list(Duration::from_secs(10)),
        "the mirror should try to list pods at start-up\n{}",
        explain_all(&[&mirror, &kube])
    );
    for image in &t.images[..3] {
        pull(&mirror, image, w, &[&mirror, &t.proxy, &kube]);
        next_second();
    }
    // The fourth image's layer would pass max. Without a pod list, eviction is held
    // off: the download is either refused (507, the cache stays under max) or goes
    // ahead past max; either way nothing cached goes.
    let fourth = &t.images[3];
    assert_eq!(manifest_status(&mirror, fourth), 200, "{}", mirror.explain());
    let layer = fourth.info.largest_layer();
    let r = mirror.request("GET", &format!("/v2/{NAME}/{}/blobs/{}", fourth.repo, layer.digest)).send();
    match r.status {
        200 => assert_eq!(
            crate::support::digest_of(&r.body),
            layer.digest,
            "the layer served past max should be the right bytes"
        ),
        507 => {}
        other => panic!("the fourth layer: 200 or 507, got {other}: {}\n{}", r.text(), mirror.explain()),
    }
    assert!(
        mirror.wait_for_log("not evicting", Duration::from_secs(5)),
        "the log should say why nothing is evicted\n{}",
        explain_all(&[&mirror, &kube])
    );
    // Housekeeping runs every second; give it a few.
    std::thread::sleep(Duration::from_secs(3));
    let list = listed(&cache, &[&mirror]);
    for image in &t.images[..3] {
        assert_eq!(
            list.get(&full(image)),
            Some(&true),
            "{} must not be evicted while the pods cannot be listed: {list:#?}\n{}",
            full(image),
            explain_all(&[&mirror, &kube])
        );
    }
    assert!(
        !mirror.log().contains("evicted the least recently pulled"),
        "nothing may be evicted while the pods cannot be listed\n{}",
        mirror.explain()
    );
    eprintln!("pinRunningImages with a failing API: the download past max answered {}", r.status);
}

#[test]
fn downloads_at_once_each_get_room_under_the_cap() {
    // Eight small old images fill the cache; two larger layers are then fetched at
    // the same time. Each download reserves its room until it ends, so the second
    // must evict enough for both: it is served, and the cap holds.
    let up = Upstream::plain();
    let work = tempdir("capacity-concurrent");
    let w = work.path();
    let old: Vec<Seeded> = (1..=8u64)
        .map(|n| seed(&up, w, &ImageSpec::single(3600 + n, &[200_000]), &format!("old/img{n}"), "v1"))
        .collect();
    let x = seed(&up, w, &ImageSpec::single(3611, &[500_000]), "new/x", "v1");
    let y = seed(&up, w, &ImageSpec::single(3612, &[500_000]), "new/y", "v1");
    let small = old.iter().map(image_bytes).max().expect("old images");
    let max = small * 81 / 10;
    let proxy = Proxy::start(&up);
    let mirror = mirror_via(&proxy, &up, &format!("cacheSize: {{max: \"{max}\"}}\n")).start();
    let cache = mirror.cache_dir().to_path_buf();
    for image in &old {
        pull(&mirror, image, w, &[&mirror, &proxy]);
        next_second();
    }
    for image in [&x, &y] {
        assert_eq!(manifest_status(&mirror, image), 200, "{}", mirror.explain());
    }

    // x's layer, slowly (about 2 s): its room stays reserved meanwhile.
    proxy.set_throttle(Some(250_000));
    let x_layer = x.info.largest_layer();
    let x_url = mirror.v2(&format!("{NAME}/{}/blobs/{}", x.repo, x_layer.digest));
    let x_get = std::thread::spawn(move || crate::support::http::Request::get(&x_url).send());
    assert!(
        proxy.wait_for("GET", &format!("/blobs/{}", x_layer.digest), Duration::from_secs(10)),
        "the mirror should be fetching x's layer\n{}",
        explain_all(&[&mirror, &proxy])
    );
    // y's layer while x's is under way.
    let y_layer = y.info.largest_layer();
    let r = mirror.request("GET", &format!("/v2/{NAME}/{}/blobs/{}", y.repo, y_layer.digest)).send();
    let x_r = x_get.join().expect("the thread fetching x's layer");
    proxy.set_throttle(None);
    for (what, layer, r) in [("x", &x_layer, &x_r), ("y", &y_layer, &r)] {
        assert_eq!(
            r.status,
            200,
            "{what}'s layer (fetched while the other downloads): unpinned images are left to evict, \
             so it should be served, not {}: {}\n{}",
            r.status,
            r.text(),
            explain_all(&[&mirror, &proxy])
        );
        assert_eq!(crate::support::digest_of(&r.body), layer.digest, "{what}'s layer: wrong bytes");
    }
    let on_disk = blob_bytes_on_disk(&cache);
    assert!(on_disk <= max, "{on_disk} bytes under blobs/, more than cacheSize.max {max}");
    // The oldest went first.
    let list = listed(&cache, &[&mirror]);
    let kept: Vec<bool> = old.iter().map(|i| list.contains_key(&full(i))).collect();
    let first_kept = kept.iter().position(|k| *k).unwrap_or(kept.len());
    assert!(
        kept[first_kept..].iter().all(|k| *k) && first_kept > 0,
        "the least recently pulled images should go first: kept {kept:?}\n{list:#?}"
    );
}
