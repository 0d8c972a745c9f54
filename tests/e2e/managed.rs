//! The managed cache: `load` (image lists and archives), `check`, `list`, `prune` and
//! `export`, run as the real binary on a cache directory, then proven with real
//! clients pulling through a mirror on that directory, most of them with no upstream
//! at all. A running server on the same directory sees what the commands change.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use crate::support::cli::{CliRun, run_cli, spawn_cli};
use crate::support::cli::{full, line_with, s, seed};
use crate::support::containerd::Containerd;
use crate::support::image::{self, ImageInfo, ImageSpec, Seeded};
use crate::support::listener::CountingListener;
use crate::support::mirror::{Mirror, MirrorBuilder, RegistryConfig};
use crate::support::proxy::{Fault, Proxy};
use crate::support::scenario::{NAME, assert_same_image};
use crate::support::skopeo::{Skopeo, read_dir_image};
use crate::support::upstream::Upstream;
use crate::support::{Explain, explain_all, files_under, hex_of, kill_and_reap, tempdir, wait_until};

/// `up.test/repo@digest`.
fn full_by_digest(image: &Seeded) -> String {
    format!("{NAME}/{}@{}", image.repo, image.info.top.digest)
}

/// A mirror configuration that knows [`NAME`] as `up` (direct, no proxy).
fn config_for(up: &Upstream) -> MirrorBuilder {
    Mirror::builder().registry(RegistryConfig::direct(NAME, up))
}

/// A configuration file for the commands: `builder`'s registries, `cache` as imagePath.
fn write_config(builder: &MirrorBuilder, dir: &Path, name: &str, cache: &Path) -> PathBuf {
    let path = dir.join(name);
    builder.write_config(&path, cache);
    path
}

/// A configuration whose registry [`NAME`] is a counting listener (nothing answers
/// there): the site with no upstream. Its count proves nothing was contacted.
fn offline_config(listener: &CountingListener) -> MirrorBuilder {
    Mirror::builder().registry(RegistryConfig::new(NAME).endpoint(&listener.url()))
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

/// Pulls `image` (all platforms) with skopeo through `mirror` (in-path name) and
/// checks it is byte-for-byte the upstream's.
fn pull_and_compare(mirror: &Mirror, image: &Seeded, work: &Path, context: &[&dyn Explain]) -> ImageInfo {
    let got = Skopeo::new().context(mirror).pull_via_mirror(mirror, &full(image), &fresh(work, "pull"));
    assert_same_image(&image.info, &got, context);
    got
}

/// `<cache>/blobs/sha256/<2 hex>/<hex>`.
fn cached_blob(cache: &Path, digest: &str) -> PathBuf {
    let hex = hex_of(digest);
    cache.join("blobs").join("sha256").join(&hex[..2]).join(hex)
}

/// Status of `GET /v2/up.test/<repo>/manifests/<tag>` through the mirror.
fn manifest_status(mirror: &Mirror, image: &Seeded) -> u16 {
    mirror
        .request("GET", &format!("/v2/{NAME}/{}/manifests/{}", image.repo, image.tag))
        .accept_manifests()
        .send()
        .status
}

#[test]
fn load_an_image_list_then_pull_air_gapped() {
    let mut up = Upstream::plain();
    let work = tempdir("managed-load");
    let w = work.path();
    let multi = seed(&up, w, &ImageSpec::multi_platform(1101, &[2000, 300_000]), "team/multi", "v1");
    let single = seed(&up, w, &ImageSpec::single(1102, &[1500, 200_000]), "tools/single", "v2");
    let list = w.join("images.txt");
    std::fs::write(
        &list,
        format!("# what this site runs\n{}\n\n   {}   # a tool\n", full(&multi), full(&single)),
    )
    .expect("writing the image list");
    let cache = w.join("cache");
    let builder = config_for(&up);
    let config = write_config(&builder, w, "config.yaml", &cache);

    let load = run_cli(&[
        "load",
        "--config-file",
        s(&config),
        "--image-file",
        s(&list),
        "--platform",
        "linux/amd64,linux/arm64",
    ])
    .ok(&[&up]);
    // One line per input, then a summary.
    let m = line_with(&load, &format!("loaded {}", full(&multi)));
    assert!(
        m.contains(&multi.info.top.digest) && m.contains("linux/amd64") && m.contains("linux/arm64"),
        "the index's line should give its digest and both platforms: {m}"
    );
    line_with(&load, &format!("loaded {}", full(&single)));
    assert!(load.stdout.contains("loaded 2 of 2 inputs"), "no summary:\n{}", load.explain());

    // The WAN goes away; a mirror on the loaded cache serves everything.
    up.kill();
    let mirror = builder.image_path(&cache).arg("--air-gapped").start();
    let ctx: [&dyn Explain; 2] = [&mirror, &load];
    pull_and_compare(&mirror, &multi, w, &ctx);
    pull_and_compare(&mirror, &single, w, &ctx);
    // Each platform of the index, as a machine of that architecture pulls it.
    for arch in ["amd64", "arm64"] {
        let want = multi.info.manifest_for(&format!("linux/{arch}"));
        let got = Skopeo::new().context(&mirror).pull_platform_via_mirror(
            &mirror,
            &full(&multi),
            arch,
            &fresh(w, &format!("pull-{arch}")),
        );
        assert_eq!(got.top.digest, want.descriptor.digest, "linux/{arch}: another manifest was pulled");
        let want_blobs: Vec<_> = std::iter::once(&want.config).chain(&want.layers).cloned().collect();
        let mut got_blobs = got.blobs();
        got_blobs.sort_by(|a, b| a.digest.cmp(&b.digest));
        let mut want_blobs = want_blobs;
        want_blobs.sort_by(|a, b| a.digest.cmp(&b.digest));
        assert_eq!(got_blobs, want_blobs, "linux/{arch}: blobs differ\n{}", explain_all(&ctx));
    }

    // containerd, the client the mirror is for: pulls and unpacks the index's amd64 image.
    let ctrd = Containerd::start(&mirror.url());
    let reference = full(&multi);
    ctrd.pull(&reference, &ctx);
    ctrd.assert_unpacked(&reference, multi.info.manifest_for("linux/amd64").layers.len(), &ctx);
    assert_eq!(ctrd.image_digest(&reference, &ctx), multi.info.top.digest);
}

#[test]
fn check_before_and_after_load() {
    let up = Upstream::plain();
    let work = tempdir("managed-check");
    let w = work.path();
    let multi = seed(&up, w, &ImageSpec::multi_platform(1201, &[1000, 120_000]), "team/multi", "v1");
    let single = seed(&up, w, &ImageSpec::single(1202, &[1000, 80_000]), "tools/single", "v1");
    let list = w.join("images.txt");
    std::fs::write(&list, format!("{}\n{}\n", full(&multi), full(&single))).expect("writing the image list");
    let cache = w.join("cache");
    let config = write_config(&config_for(&up), w, "config.yaml", &cache);
    let both = "linux/amd64,linux/arm64";
    let check = |platform: &str, extra: &[&str]| {
        let mut args =
            vec!["check", "--config-file", s(&config), "--image-file", s(&list), "--platform", platform];
        args.extend_from_slice(extra);
        run_cli(&args)
    };
    let load = |platform: &str, images: &[String]| {
        let mut args = vec!["load", "--config-file", s(&config), "--platform", platform];
        args.extend(images.iter().map(String::as_str));
        run_cli(&args).ok(&[&up])
    };

    // No cache directory at all (a fresh machine): every image is "not cached".
    let r = check(both, &[]).fails(&[]);
    assert!(line_with(&r, &full(&single)).starts_with("MISSING"), "{}", r.explain());
    assert!(r.stdout.contains("not cached"), "{}", r.explain());

    // The single-platform image only: the index is "not cached".
    load("linux/amd64", &[full(&single)]);
    let r = check(both, &[]).fails(&[]);
    let line = line_with(&r, &full(&multi));
    assert!(line.starts_with("MISSING") && line.contains("not cached"), "{}", r.explain());
    assert!(line_with(&r, &full(&single)).starts_with("complete"), "{}", r.explain());
    let json = check(both, &["--json"]).fails(&[]).json();
    assert_eq!(json["complete"], Value::Bool(false), "{json:#}");
    let by_name = |json: &Value, image: &Seeded| -> Value {
        json["images"]
            .as_array()
            .expect("images is a list")
            .iter()
            .find(|i| i["image"] == Value::String(full(image)))
            .unwrap_or_else(|| panic!("no entry for {} in {json:#}", full(image)))
            .clone()
    };
    assert_eq!(by_name(&json, &multi)["complete"], Value::Bool(false), "{json:#}");
    assert_eq!(by_name(&json, &single)["complete"], Value::Bool(true), "{json:#}");

    // The index for linux/amd64 only: arm64 is missing, and named.
    load("linux/amd64", &[full(&multi)]);
    let arm64 = &multi.info.manifest_for("linux/arm64").descriptor.digest;
    let r = check("linux/arm64", &[]).fails(&[]);
    let line = line_with(&r, &full(&multi));
    assert!(
        line.starts_with("MISSING") && line.contains(arm64.as_str()) && line.contains("linux/arm64"),
        "the arm64 manifest {arm64} should be reported missing:\n{}",
        r.explain()
    );
    let r = check("linux/amd64", &[]).ok(&[]);
    assert!(line_with(&r, &full(&multi)).starts_with("complete"), "{}", r.explain());

    // Both platforms: everything complete, exit 0.
    let r = run_cli(&["load", "--config-file", s(&config), "--image-file", s(&list), "--platform", both])
        .ok(&[&up]);
    assert!(r.stdout.contains("loaded 2 of 2 inputs"), "{}", r.explain());
    let r = check(both, &[]).ok(&[]);
    for image in [&multi, &single] {
        assert!(line_with(&r, &full(image)).starts_with("complete"), "{}", r.explain());
    }
    assert!(r.stdout.contains("2 of 2 images complete"), "{}", r.explain());
    let json = check(both, &["--json"]).ok(&[]).json();
    assert_eq!(json["complete"], Value::Bool(true), "{json:#}");
    assert_eq!(by_name(&json, &multi)["complete"], Value::Bool(true), "{json:#}");
    assert_eq!(by_name(&json, &multi)["missing"], serde_json::json!([]), "{json:#}");

    // A load where one image does not exist upstream: the rest loads, the exit code says not all did.
    let missing = format!("{NAME}/team/never-pushed:v1");
    let r = run_cli(&["load", "--config-file", s(&config), "--platform", both, &missing, &full(&single)])
        .fails(&[&up]);
    assert!(r.stdout.contains(&format!("FAILED {missing}")), "{}", r.explain());
    assert!(r.stdout.contains("loaded 1 of 2 inputs"), "{}", r.explain());
    line_with(&r, &format!("loaded {}", full(&single)));
    let r = run_cli(&["check", "--config-file", s(&config), &missing]).fails(&[]);
    assert!(line_with(&r, &missing).contains("not cached"), "{}", r.explain());
}

#[test]
fn load_archives_made_by_skopeo() {
    let up = Upstream::plain();
    let work = tempdir("managed-archives");
    let w = work.path();
    let single = seed(&up, w, &ImageSpec::single(1301, &[1500, 250_000]), "team/app", "v1");
    let multi = seed(&up, w, &ImageSpec::multi_platform(1302, &[1500, 150_000]), "team/multi", "v3");
    let skopeo = Skopeo::new().context(&up);
    let docker_tar = w.join("app-docker.tar");
    let oci_tar = w.join("multi-oci.tar");
    skopeo.run(&[
        "copy".to_string(),
        "--src-tls-verify=false".into(),
        format!("docker://{}/{}", up.host_port(), single.name_tag()),
        format!("docker-archive:{}:{}", s(&docker_tar), full(&single)),
    ]);
    skopeo.run(&[
        "copy".to_string(),
        "--all".into(),
        "--preserve-digests".into(),
        "--src-tls-verify=false".into(),
        format!("docker://{}/{}", up.host_port(), multi.name_tag()),
        format!("oci-archive:{}:{}", s(&oci_tar), full(&multi)),
    ]);
    // What skopeo itself reads back from the docker archive (layers as the archive holds them).
    let from_docker_tar = skopeo.copy_to_dir(
        &format!("docker-archive:{}", s(&docker_tar)),
        &[],
        &fresh(w, "skopeo-docker-archive"),
    );
    drop(up);

    let nowhere = CountingListener::loopback();
    let offline = offline_config(&nowhere);
    for (archive, what) in [(&docker_tar, "docker-archive"), (&oci_tar, "oci-archive")] {
        let cache = fresh(w, &format!("cache-{what}"));
        let config = write_config(&offline, w, &format!("{what}.yaml"), &cache);
        let load =
            run_cli(&["load", "--config-file", s(&config), "--image-file", s(archive)]).ok(&[&nowhere]);
        assert!(load.stdout.contains("loaded 1 of 1 inputs"), "{what}: {}", load.explain());
        let mirror = offline.clone().image_path(&cache).arg("--air-gapped").start();
        let ctx: [&dyn Explain; 3] = [&mirror, &load, &nowhere];
        if archive == &oci_tar {
            // OCI archives keep the manifests: byte-identical to the upstream's.
            pull_and_compare(&mirror, &multi, w, &ctx);
        } else {
            // A docker archive keeps the config and the layers; the manifest is made anew.
            let got = Skopeo::new().context(&mirror).pull_via_mirror(
                &mirror,
                &full(&single),
                &fresh(w, "pull-docker-archive"),
            );
            let sizes = |i: &ImageInfo| {
                let mut v: Vec<(String, u64)> = i.blobs().into_iter().map(|d| (d.digest, d.size)).collect();
                v.sort();
                v
            };
            assert_eq!(
                sizes(&got),
                sizes(&from_docker_tar),
                "the image pulled through the mirror should have the docker archive's config and layers\n{}",
                explain_all(&ctx)
            );
            assert_eq!(
                got.manifests[0].config.digest, single.info.manifests[0].config.digest,
                "the image config should be the upstream's, byte for byte"
            );
        }
        assert_eq!(nowhere.count(), 0, "{what}: nothing may contact the upstream\n{}", explain_all(&ctx));
    }
}

#[test]
fn list_formats() {
    let up = Upstream::plain();
    let work = tempdir("managed-list");
    let w = work.path();
    let multi = seed(&up, w, &ImageSpec::multi_platform(1401, &[1000, 120_000]), "team/multi", "v1");
    let single = seed(&up, w, &ImageSpec::single(1402, &[1000, 90_000]), "tools/single", "v1");
    let pinned = seed(&up, w, &ImageSpec::single(1403, &[1000, 60_000]), "team/pinned", "v9");
    let cache = w.join("cache");
    let builder = config_for(&up);
    let config = write_config(&builder, w, "config.yaml", &cache);
    let started = SystemTime::now() - Duration::from_secs(2);
    run_cli(&[
        "load",
        "--config-file",
        s(&config),
        "--platform",
        "all",
        &full(&multi),
        &full(&single),
        &full_by_digest(&pinned),
    ])
    .ok(&[&up]);
    let list = |extra: &[&str]| {
        let mut args = vec!["list", "--image-path", s(&cache)];
        args.extend_from_slice(extra);
        run_cli(&args).ok(&[])
    };

    let r = list(&["--header"]);
    let lines = r.lines();
    assert_eq!(lines.len(), 4, "a header and one line per image:\n{}", r.explain());
    assert_eq!(lines[0], "IMAGE TAG/DIGEST TYPE CREATED PULLED SIZE(MB)", "{}", r.explain());
    let row = |r: &CliRun, needle: &str| -> Vec<String> {
        line_with(r, needle).split(' ').map(String::from).collect()
    };
    for (image, reference, kind) in [
        (&multi, multi.tag.clone(), "oci-index"),
        (&single, single.tag.clone(), "oci-manifest"),
        (&pinned, pinned.info.top.digest.clone(), "oci-manifest"),
    ] {
        let f = row(&r, &format!("{NAME}/{} ", image.repo));
        assert_eq!(f.len(), 6, "six space-separated fields: {f:?}\n{}", r.explain());
        assert_eq!(f[0], format!("{NAME}/{}", image.repo));
        assert_eq!(f[1], reference, "{}", r.explain());
        assert_eq!(f[2], kind, "{}", r.explain());
        let created = humantime::parse_rfc3339(&f[3])
            .unwrap_or_else(|e| panic!("CREATED {:?} is not a date ({e})\n{}", f[3], r.explain()));
        assert!(
            created >= started && created <= SystemTime::now(),
            "CREATED {} should be when it was loaded",
            f[3]
        );
        assert_eq!(f[4], "-", "never pulled: PULLED is -\n{}", r.explain());
        let mb: f64 = f[5].parse().unwrap_or_else(|e| panic!("SIZE(MB) {:?}: {e}", f[5]));
        let bytes: u64 = image.info.blobs().iter().map(|b| b.size).sum();
        assert!(
            (mb - bytes as f64 / 1e6).abs() <= 0.1,
            "SIZE(MB) {mb} for {bytes} bytes of blobs\n{}",
            r.explain()
        );
    }
    // Piped without --header: rows only.
    let r = list(&[]);
    assert_eq!(r.lines().len(), 3, "{}", r.explain());
    assert!(!r.stdout.contains("TAG/DIGEST"), "{}", r.explain());
    // --pattern: regular expressions over registry/repo:tag, comma-separated.
    let r = list(&["--pattern", "team/multi:"]);
    assert_eq!(r.lines().len(), 1, "{}", r.explain());
    assert!(r.stdout.starts_with(&format!("{NAME}/team/multi v1 ")), "{}", r.explain());
    let r = list(&["--pattern", r"^up\.test/tools/,pinned@sha256:"]);
    assert_eq!(r.lines().len(), 2, "{}", r.explain());
    assert!(!r.stdout.contains("team/multi"), "{}", r.explain());
    // --short-digest: the digest-only image's first 10 hex characters.
    let r = list(&["--short-digest"]);
    let f = row(&r, "team/pinned ");
    assert_eq!(f[1], hex_of(&pinned.info.top.digest)[..10], "{}", r.explain());
    // --json: every image with its platforms.
    let json = list(&["--json"]).json();
    let entries = json.as_array().unwrap_or_else(|| panic!("a JSON list: {json:#}"));
    assert_eq!(entries.len(), 3, "{json:#}");
    // Each entry is named by its full reference (registry/repo:tag or registry/repo@digest).
    let entry = |name: String| {
        entries
            .iter()
            .find(|e| e["name"] == Value::String(name.clone()))
            .unwrap_or_else(|| panic!("no {name} in {json:#}"))
    };
    let m = entry(full(&multi));
    assert_eq!(m["platforms"], serde_json::json!(["linux/amd64", "linux/arm64"]), "{m:#}");
    assert_eq!(m["digest"], Value::String(multi.info.top.digest.clone()), "{m:#}");
    assert_eq!(m["tag"], Value::String("v1".into()), "{m:#}");
    assert_eq!(m["complete"], Value::Bool(true), "{m:#}");
    assert_eq!(m["pulled"], Value::Null, "{m:#}");
    assert_eq!(entry(full(&single))["platforms"], serde_json::json!(["linux/amd64"]));
    assert_eq!(entry(full_by_digest(&pinned))["tag"], Value::Null);

    // Pulled once through a mirror (which writes pull times when it stops): a date.
    let before_pull = SystemTime::now() - Duration::from_secs(1);
    let mut mirror = builder.image_path(&cache).arg("--air-gapped").start();
    pull_and_compare(&mirror, &single, w, &[&mirror]);
    let stopped = mirror.stop();
    assert!(stopped.is_some_and(|s| s.success()), "SIGTERM should stop the mirror cleanly: {stopped:?}");
    let r = list(&[]);
    let f = row(&r, "tools/single ");
    let pulled = humantime::parse_rfc3339(&f[4])
        .unwrap_or_else(|e| panic!("PULLED {:?} is not a date ({e})\n{}", f[4], r.explain()));
    assert!(pulled >= before_pull, "PULLED {} is before the pull", f[4]);
    assert_eq!(row(&r, "team/multi ")[4], "-", "{}", r.explain());
}

#[test]
fn prune_by_pattern_while_another_pull_is_in_flight() {
    let up = Upstream::plain();
    let work = tempdir("managed-prune-pattern");
    let w = work.path();
    // Two images on one base layer; B has a 2 MiB layer of its own, pulled slowly.
    // A comes through its own registry name and proxy, so its upstream can go away
    // while B's stays.
    let a =
        seed(&up, w, &ImageSpec::single(1501, &[150_000, 60_000]).with_shared_base(1500), "team/app-a", "v1");
    let b = seed(
        &up,
        w,
        &ImageSpec::single(1502, &[150_000, 2 << 20]).with_shared_base(1500),
        "team/app-b",
        "v1",
    );
    let shared = a.info.manifests[0].layers[0].clone();
    assert_eq!(b.info.manifests[0].layers[0], shared, "the fixture should give A and B one base layer");
    let a_own = a.info.manifests[0].layers[1].clone();
    let b_big = b.info.largest_layer();
    const A_NAME: &str = "a.test";
    let a_ref = format!("{A_NAME}/{}", a.name_tag());
    let proxy_a = Proxy::start(&up);
    let proxy_b = Proxy::start(&up);
    let mut mirror = Mirror::builder()
        .registry(RegistryConfig::via_proxy(A_NAME, &proxy_a, &up))
        .registry(RegistryConfig::via_proxy(NAME, &proxy_b, &up))
        .start();
    let cache = mirror.cache_dir().to_path_buf();
    let a_status = || {
        mirror
            .request("GET", &format!("/v2/{A_NAME}/{}/manifests/{}", a.repo, a.tag))
            .accept_manifests()
            .send()
            .status
    };

    let got = Skopeo::new().context(&mirror).pull_via_mirror(&mirror, &a_ref, &fresh(w, "pull-a"));
    assert_same_image(&a.info, &got, &[&mirror, &proxy_a]);
    // A's upstream goes away: from now on the mirror serves A from its cache or not at all.
    proxy_a.set_fault(Fault::Refuse);
    assert_eq!(a_status(), 200, "A is cached\n{}", mirror.explain());

    // --dry-run: says what would go, changes nothing.
    let snapshot = || -> Vec<(PathBuf, u64)> {
        ["blobs", "manifests", "tags", "links", "generation"]
            .iter()
            .flat_map(|d| {
                let p = cache.join(d);
                if p.is_file() { vec![p] } else { files_under(&p) }
            })
            .map(|p| {
                let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
                (p, len)
            })
            .collect()
    };
    let before = snapshot();
    let pattern = r"^a\.test/team/app-a:";
    let dry =
        run_cli(&["prune", "--image-path", s(&cache), "--pattern", pattern, "--dry-run"]).ok(&[&mirror]);
    assert!(dry.stdout.contains(&format!("would remove {a_ref}")), "{}", dry.explain());
    assert!(dry.stdout.contains("dry run: would remove 1 images"), "{}", dry.explain());
    assert!(!dry.stdout.contains("app-b"), "{}", dry.explain());
    assert_eq!(snapshot(), before, "--dry-run changed the cache\n{}", dry.explain());
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(a_status(), 200, "after a dry run A is still served\n{}", mirror.explain());

    // B's pull starts, throttled: its own big layer streams for ~4 s.
    proxy_b.set_throttle(Some(512 * 1024));
    let src = format!("docker://{}/{}", mirror.host_port(), full(&b));
    let b_out = fresh(w, "pull-b");
    let b_dir = b_out.clone();
    let pull_b = std::thread::spawn(move || {
        Skopeo::new().try_run(&[
            "copy".to_string(),
            "--all".into(),
            "--preserve-digests".into(),
            "--src-tls-verify=false".into(),
            src,
            format!("dir:{}", b_dir.display()),
        ])
    });
    let big_path = format!("/blobs/{}", b_big.digest);
    let streaming = wait_until(Duration::from_secs(30), || {
        proxy_b.matching("GET", &big_path).iter().any(|r| r.body_bytes > 0)
    });
    assert!(streaming, "B's big layer should be streaming from the upstream\n{}", proxy_b.explain());

    // Meanwhile: prune A.
    let prune = run_cli(&["prune", "--image-path", s(&cache), "--pattern", pattern]).ok(&[&mirror]);
    let pruned_at = Instant::now();
    assert!(
        !pull_b.is_finished(),
        "B's pull should still be running while A is pruned (make the layer larger or the throttle slower)"
    );
    assert!(prune.stdout.contains(&format!("removing {a_ref}")), "{}", prune.explain());
    assert!(!prune.stdout.contains("app-b"), "{}", prune.explain());

    // The running server forgets A's tag within about a second (it watches the cache).
    let mut last = 200;
    let forgotten = wait_until(Duration::from_secs(3), || {
        last = a_status();
        last != 200
    });
    assert!(
        forgotten,
        "A was still served {:?} after the prune (last status {last})\n{}",
        pruned_at.elapsed(),
        explain_all(&[&mirror, &prune])
    );

    // B's pull completes, byte-identical.
    proxy_b.set_throttle(None);
    let out = pull_b.join().expect("the pull thread");
    assert!(
        out.status.success(),
        "B's pull failed after A was pruned:\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        explain_all(&[&mirror, &proxy_b, &prune])
    );
    assert_same_image(&b.info, &read_dir_image(&b_out), &[&mirror, &proxy_b, &prune]);

    // The shared layer stays (B uses it); A's own layer is gone.
    assert!(cached_blob(&cache, &shared.digest).is_file(), "the shared base layer was pruned");
    assert!(!cached_blob(&cache, &a_own.digest).exists(), "A's own layer should be pruned");
    assert!(
        wait_until(Duration::from_secs(5), || cached_blob(&cache, &b_big.digest).is_file()),
        "B's big layer should be cached after its pull"
    );
    let list = run_cli(&["list", "--image-path", s(&cache)]).ok(&[&mirror]);
    assert!(list.stdout.contains("team/app-b v1") && !list.stdout.contains("app-a"), "{}", list.explain());
    // And B keeps pulling from the cache.
    proxy_b.set_fault(Fault::Refuse);
    pull_and_compare(&mirror, &b, w, &[&mirror, &proxy_b]);
    mirror.stop();
}

#[test]
fn prune_by_access_time() {
    let up = Upstream::plain();
    let work = tempdir("managed-prune-accessed");
    let w = work.path();
    let old = seed(&up, w, &ImageSpec::single(1601, &[1000, 50_000]), "team/old", "v1");
    let used = seed(&up, w, &ImageSpec::single(1602, &[1000, 50_000]), "team/used", "v1");
    let mut mirror = config_for(&up).start();
    let cache = mirror.cache_dir().to_path_buf();
    pull_and_compare(&mirror, &old, w, &[&mirror]);
    pull_and_compare(&mirror, &used, w, &[&mirror]);
    std::thread::sleep(Duration::from_millis(1500));
    let between = SystemTime::now();
    std::thread::sleep(Duration::from_millis(1500));
    pull_and_compare(&mirror, &used, w, &[&mirror]);
    // Pull times are kept in memory; SIGTERM writes them.
    let stopped = mirror.stop();
    assert!(stopped.is_some_and(|s| s.success()), "SIGTERM should stop the mirror cleanly: {stopped:?}");

    let json = run_cli(&["list", "--image-path", s(&cache), "--json"]).ok(&[&mirror]).json();
    let pulled = |image: &Seeded| -> SystemTime {
        let e = json
            .as_array()
            .and_then(|l| l.iter().find(|e| e["name"] == Value::String(full(image))))
            .unwrap_or_else(|| panic!("no {} in {json:#}", full(image)));
        let at = e["pulled"].as_str().unwrap_or_else(|| panic!("{} has no pull time: {e:#}", image.repo));
        humantime::parse_rfc3339(at).unwrap_or_else(|err| panic!("pulled {at:?}: {err}"))
    };
    assert!(pulled(&old) < between, "{json:#}");
    assert!(pulled(&used) > between, "the second pull of {} should be recorded: {json:#}", used.repo);

    // A date between the two pulls, as an operator types it (UTC, seconds).
    let date = humantime::format_rfc3339_seconds(between).to_string();
    let date = date.trim_end_matches('Z');
    let dry = run_cli(&["prune", "--image-path", s(&cache), "--accessed-before", date, "--dry-run"]).ok(&[]);
    assert!(dry.stdout.contains(&format!("would remove {}", full(&old))), "{}", dry.explain());
    assert!(!dry.stdout.contains("team/used"), "{}", dry.explain());
    let prune = run_cli(&["prune", "--image-path", s(&cache), "--accessed-before", date]).ok(&[]);
    assert!(prune.stdout.contains(&format!("removing {}", full(&old))), "{}", prune.explain());
    assert!(!prune.stdout.contains("team/used"), "{}", prune.explain());

    // Offline now: the used image still pulls, the old one is gone.
    mirror.reconfigure(|b| b.arg("--air-gapped"));
    mirror.start_again();
    pull_and_compare(&mirror, &used, w, &[&mirror, &prune]);
    assert_eq!(manifest_status(&mirror, &old), 404, "{}", prune.explain());
    for blob in old.info.blobs() {
        assert!(
            !cached_blob(&cache, &blob.digest).exists(),
            "blob {} of the pruned image stays",
            blob.digest
        );
    }
}

#[test]
fn export_then_load_on_a_second_site() {
    let up = Upstream::plain();
    let work = tempdir("managed-export");
    let w = work.path();
    let multi = seed(&up, w, &ImageSpec::multi_platform(1701, &[1000, 150_000]), "team/multi", "v1");
    let single = seed(&up, w, &ImageSpec::single(1702, &[1000, 120_000]), "tools/single", "v1");

    // Site 1: one image loaded, one pulled by a client.
    let builder = config_for(&up);
    let mirror1 = builder.clone().start();
    let cache1 = mirror1.cache_dir().to_path_buf();
    let config1 = write_config(&builder, w, "site1.yaml", &cache1);
    run_cli(&["load", "--config-file", s(&config1), "--platform", "all", &full(&multi)]).ok(&[&up]);
    pull_and_compare(&mirror1, &single, w, &[&mirror1]);
    let bundle = w.join("bundle.tar");
    let export = run_cli(&["export", "--image-path", s(&cache1), "--all", "-o", s(&bundle)]).ok(&[&mirror1]);
    assert!(export.stderr.contains("exported 2 images"), "{}", export.explain());
    assert!(bundle.is_file(), "no bundle written\n{}", export.explain());
    // Output into a pipe that closes early (`| head`) ends the command quietly
    // (SIGPIPE, as other Unix tools), never with a panic.
    for cmd in ["export --all -o -", "list --json", "list"] {
        let line = format!(
            "{} --image-path {} {cmd} | head -c 1 >/dev/null; echo \"status=${{PIPESTATUS[0]}}\"",
            crate::support::mirror::binary().display(),
            s(&cache1)
        );
        let out = std::process::Command::new("bash").args(["-c", &line]).output().expect("running bash");
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(!stderr.contains("panicked") && !stderr.contains("error"), "{cmd} | head: {stderr}");
        assert!(
            stdout.contains("status=0") || stdout.contains("status=141"),
            "{cmd} | head: {stdout} {stderr}"
        );
    }

    // Other tools read it by the full reference.
    for image in [&multi, &single] {
        let out = Skopeo::new().context(&export).run(&[
            "inspect",
            "--raw",
            &format!("oci-archive:{}:{}", s(&bundle), full(image)),
        ]);
        assert_eq!(
            crate::support::digest_of(&out.stdout),
            image.info.top.digest,
            "skopeo reads another manifest for {} from the bundle",
            full(image)
        );
    }
    // Both name annotations hold the full reference (containerd reads one, OCI tools the other).
    let mut names = bundle_names(&bundle);
    names.sort();
    let mut want = vec![full(&multi), full(&single)];
    want.sort();
    assert_eq!(names, want, "the bundle's index.json should name each image by its full reference");
    // containerd imports it under those names.
    let ctrd = Containerd::start(&format!("http://127.0.0.1:{}", crate::support::dead_port()));
    ctrd.ctr(["images", "import", s(&bundle)], &[&export]);
    for image in [&multi, &single] {
        assert_eq!(ctrd.image_digest(&full(image), &[&export]), image.info.top.digest);
    }
    drop(ctrd);
    drop(mirror1);
    drop(up);

    // Site 2: no upstream at all.
    let nowhere = CountingListener::loopback();
    let offline = offline_config(&nowhere);
    let cache2 = w.join("cache-site2");
    let config2 = write_config(&offline, w, "site2.yaml", &cache2);
    let load = run_cli(&["load", "--config-file", s(&config2), "--image-file", s(&bundle)]).ok(&[&nowhere]);
    assert!(load.stdout.contains("loaded 1 of 1 inputs"), "{}", load.explain());
    let mirror2 = offline.image_path(&cache2).arg("--air-gapped").start();
    let ctx: [&dyn Explain; 3] = [&mirror2, &load, &nowhere];
    pull_and_compare(&mirror2, &multi, w, &ctx);
    pull_and_compare(&mirror2, &single, w, &ctx);
    assert_eq!(nowhere.count(), 0, "site 2 has no upstream; nothing may contact it");
}

/// The names in an oci-archive's `index.json`; panics unless each entry's
/// `io.containerd.image.name` and `org.opencontainers.image.ref.name` agree.
fn bundle_names(bundle: &Path) -> Vec<String> {
    let file = std::fs::File::open(bundle).unwrap_or_else(|e| panic!("opening {}: {e}", bundle.display()));
    let mut archive = tar::Archive::new(file);
    let mut index = None;
    for entry in archive.entries().expect("reading the bundle as a tar") {
        let mut entry = entry.expect("a tar entry");
        let path = entry.path().expect("an entry name").to_string_lossy().into_owned();
        if path.trim_start_matches("./") == "index.json" {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut entry, &mut text).expect("reading index.json");
            index = Some(text);
        }
    }
    let index: Value =
        serde_json::from_str(&index.expect("the bundle has an index.json")).expect("index.json is JSON");
    index["manifests"]
        .as_array()
        .unwrap_or_else(|| panic!("index.json without manifests: {index:#}"))
        .iter()
        .map(|m| {
            let a = &m["annotations"];
            let containerd = a["io.containerd.image.name"].as_str();
            let oci = a["org.opencontainers.image.ref.name"].as_str();
            assert!(containerd.is_some() && containerd == oci, "name annotations disagree: {m:#}");
            containerd.unwrap_or_default().to_string()
        })
        .collect()
}

#[test]
fn load_killed_midway_resumes_clean() {
    let up = Upstream::plain();
    let work = tempdir("managed-kill");
    let w = work.path();
    let big = seed(&up, w, &ImageSpec::single(1801, &[1000, 4 << 20]), "team/big", "v1");
    let layer = big.info.largest_layer();
    let proxy = Proxy::start(&up);
    let cache = w.join("cache");
    let builder = Mirror::builder().registry(RegistryConfig::via_proxy(NAME, &proxy, &up));
    let config = write_config(&builder, w, "config.yaml", &cache);
    let args = ["load", "--config-file", s(&config), &full(&big)];

    // 4 MiB at 1 MiB/s; kill -9 once a megabyte has arrived.
    proxy.set_throttle(Some(1 << 20));
    let log = w.join("load-1.log");
    let mut first = spawn_cli(&args, &log);
    let blob_path = format!("/blobs/{}", layer.digest);
    let midway = wait_until(Duration::from_secs(30), || {
        proxy.matching("GET", &blob_path).iter().any(|r| r.body_bytes >= 1 << 20)
    });
    let still_running = matches!(first.try_wait(), Ok(None));
    kill_and_reap(&mut first);
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        midway && still_running,
        "the load should be midway (log below)\n{log_text}\n{}",
        proxy.explain()
    );
    assert!(!cached_blob(&cache, &layer.digest).exists(), "a half-loaded layer was committed");

    // Again, at full speed: it completes, resuming where the killed load stopped.
    proxy.set_throttle(None);
    let requests_before = proxy.matching("GET", &blob_path).len();
    let second = run_cli(&args).ok(&[&proxy]);
    assert!(second.stdout.contains(&format!("loaded {}", full(&big))), "{}", second.explain());
    assert!(second.stdout.contains("loaded 1 of 1 inputs"), "{}", second.explain());
    let again = proxy.matching("GET", &blob_path).split_off(requests_before);
    let resumed_from = |r: &crate::support::proxy::Seen| -> u64 {
        r.range
            .as_deref()
            .and_then(|v| v.strip_prefix("bytes="))
            .and_then(|v| v.strip_suffix('-'))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    assert!(
        again.len() == 1 && resumed_from(&again[0]) > 0 && again[0].status == Some(206),
        "the second load should resume the layer with one Range request\n{}",
        proxy.explain()
    );

    // The cache verifies, and holds no leftover of the killed load.
    let verify = run_cli(&["verify", "--image-path", s(&cache)]).ok(&[&second]);
    assert!(verify.stdout.contains("ok"), "{}", verify.explain());
    let leftovers: Vec<PathBuf> = files_under(&cache.join("tmp"))
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(hex_of(&layer.digest)))
        .collect();
    assert!(leftovers.is_empty(), "the killed load's partial download stays: {leftovers:?}");

    // And it pulls with no upstream.
    drop(proxy);
    let mirror = builder.image_path(&cache).arg("--air-gapped").start();
    pull_and_compare(&mirror, &big, w, &[&mirror, &second]);
}

#[test]
fn running_server_sees_loaded_images_without_restart() {
    let up = Upstream::plain();
    let work = tempdir("managed-running");
    let w = work.path();
    let image = seed(&up, w, &ImageSpec::multi_platform(1901, &[1000, 100_000]), "team/app", "v1");
    let builder = config_for(&up);
    let mirror = builder.clone().arg("--air-gapped").start();
    let cache = mirror.cache_dir().to_path_buf();
    assert_eq!(manifest_status(&mirror, &image), 404, "not cached, air-gapped: 404");

    let config = write_config(&builder, w, "load.yaml", &cache);
    let load = run_cli(&["load", "--config-file", s(&config), "--platform", "all", &full(&image)])
        .ok(&[&mirror, &up]);
    let loaded = Instant::now();
    let mut last = 0;
    let seen = wait_until(Duration::from_secs(3), || {
        last = manifest_status(&mirror, &image);
        last == 200
    });
    assert!(
        seen,
        "the running mirror should serve the loaded image within a couple of seconds (last status {last} after {:?})\n{}",
        loaded.elapsed(),
        explain_all(&[&mirror, &load])
    );
    pull_and_compare(&mirror, &image, w, &[&mirror, &load]);
}

#[test]
fn bad_inputs_are_clear_errors() {
    let work = tempdir("managed-bad");
    let w = work.path();
    // An existing (empty) cache, made by a server that is running on it.
    let mirror = Mirror::builder().start();
    let cache = s(mirror.cache_dir()).to_string();

    // An image list with an invalid reference: the file and the line are named.
    let list = w.join("images.txt");
    std::fs::write(&list, "up.test/team/app:v1\n# comment\n\nup.test/Team/App:v1\n").expect("writing");
    let r = run_cli(&["load", "--image-path", &cache, "--image-file", s(&list)]).fails(&[&mirror]);
    assert!(r.stderr.contains(s(&list)) && r.stderr.contains("line 4"), "{}", r.explain());
    let r = run_cli(&["check", "--image-path", &cache, "--image-file", s(&list)]).fails(&[&mirror]);
    assert!(r.stderr.contains(s(&list)) && r.stderr.contains("line 4"), "{}", r.explain());

    // A file that is not there.
    let r = run_cli(&["load", "--image-path", &cache, "--image-file", "/nonexistent/images.txt"]).fails(&[]);
    assert!(r.stderr.contains("/nonexistent/images.txt"), "{}", r.explain());

    // A text file that is not an image list (a config file given by mistake).
    let yaml = w.join("config.yaml");
    std::fs::write(&yaml, "imagePath: /var/lib/ociregistry\nregistries: []\n").expect("writing");
    let r = run_cli(&["load", "--image-path", &cache, "--image-file", s(&yaml)]).fails(&[]);
    assert!(r.stderr.contains(s(&yaml)) && r.stderr.contains("line 1"), "{}", r.explain());

    // Binary garbage, and garbage that looks compressed: named, no panic.
    let binary = w.join("garbage.bin");
    std::fs::write(&binary, image::random_bytes(7, 4096)).expect("writing");
    let fake_gzip = w.join("garbage.tar.gz");
    let mut bytes = vec![0x1f, 0x8b, 0x08, 0x00];
    bytes.extend(image::random_bytes(8, 4096));
    std::fs::write(&fake_gzip, bytes).expect("writing");
    for f in [&binary, &fake_gzip] {
        let r = run_cli(&["load", "--image-path", &cache, "--image-file", s(f)]).fails(&[]);
        assert!(r.output().contains(s(f)), "the error should name the file:\n{}", r.explain());
    }

    // A bad reference on the command line.
    let r = run_cli(&["load", "--image-path", &cache, "not a reference"]).fails(&[]);
    assert!(r.stderr.contains("not a reference"), "{}", r.explain());

    // Bad flag values name the flag.
    for (args, flag) in [
        (vec!["prune", "--older-than", "banana"], "--older-than"),
        (vec!["prune", "--accessed-before", "banana"], "--accessed-before"),
        (vec!["prune", "--date", "2024-13-45"], "--date"),
        (vec!["prune", "--pattern", "team/(app"], "--pattern"),
        (vec!["list", "--pattern", "team/(app"], "--pattern"),
        (vec!["check", "--platform", "linux/", "up.test/team/app:v1"], "--platform"),
        (vec!["load", "--platform", "linux/", "up.test/team/app:v1"], "--platform"),
    ] {
        let mut a = args.clone();
        a.extend(["--image-path", cache.as_str()]);
        let r = run_cli(&a).fails(&[]);
        assert!(r.stderr.contains(flag), "`{}` should name {flag}:\n{}", args.join(" "), r.explain());
    }
    // Exporting what is not cached names it.
    let out = w.join("out.tar");
    let r = run_cli(&["export", "--image-path", &cache, "up.test/team/app:v1", "-o", s(&out)]).fails(&[]);
    assert!(r.stderr.contains("up.test/team/app:v1"), "{}", r.explain());
    assert!(!out.exists(), "a failed export must not leave a file");
}

#[test]
fn serve_preloads_an_image_list_in_the_background() {
    let up = Upstream::plain();
    let work = tempdir("managed-preload");
    let w = work.path();
    let image = seed(&up, w, &ImageSpec::single(2001, &[1000, 150_000]), "team/app", "v1");
    let list = w.join("preload.txt");
    std::fs::write(&list, format!("# preloaded at start\n{}\n", full(&image)))
        .expect("writing the image list");
    let proxy = Proxy::start(&up);
    let mirror = Mirror::builder()
        .registry(RegistryConfig::via_proxy(NAME, &proxy, &up))
        .arg("--preload-images")
        .arg(s(&list))
        .start();
    let cache = mirror.cache_dir().to_path_buf();
    // No client asked for it; it arrives by itself.
    let mut last = None;
    let loaded = wait_until(Duration::from_secs(20), || {
        let r = run_cli(&["check", "--image-path", s(&cache), &full(&image)]);
        let done = r.success();
        last = Some(r);
        done
    });
    assert!(
        loaded,
        "the preloaded image should be complete in the cache\n{}",
        last.map(|r| r.explain()).unwrap_or_default()
    );
    // Then the WAN goes: the mirror serves it from its cache.
    proxy.set_fault(Fault::Refuse);
    proxy.reset();
    pull_and_compare(&mirror, &image, w, &[&mirror, &proxy]);
    assert_eq!(proxy.total(), 0, "the preloaded image should be served from the cache\n{}", proxy.explain());
}
