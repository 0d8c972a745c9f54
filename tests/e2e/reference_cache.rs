//! Moving from the Go reference server: `load --from-reference-cache DIR` imports
//! its cache directory (flat `blobs/<hex>`, manifest files in `img/` and `lts/`)
//! beside a running air-gapped mirror, which then serves the images byte for byte;
//! what is corrupt is reported and never committed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};

use crate::support::cli::run_cli;
use crate::support::cli::{line_with, s};
use crate::support::image::{ImageLayout, ImageSpec};
use crate::support::listener::CountingListener;
use crate::support::mirror::{Mirror, RegistryConfig};
use crate::support::scenario::{NAME, assert_same_image};
use crate::support::skopeo::Skopeo;
use crate::support::{Explain, digest_of, explain_all, files_under, hex_of, tempdir, wait_until};

/// The reference's `type` values.
const TYPE_OCI_INDEX: u8 = 2;
const TYPE_OCI_MANIFEST: u8 = 3;

/// Writes `<dir>/<sub>/<hex>`, a manifest file as the reference writes it.
fn write_manifest_file(dir: &Path, sub: &str, kind: u8, bytes: &[u8], image_url: &str) -> PathBuf {
    let digest = digest_of(bytes);
    let body = json!({
        "type": kind,
        "digest": hex_of(&digest),
        "imageUrl": image_url,
        "bytes": base64::engine::general_purpose::STANDARD.encode(bytes),
        "created": "2024-03-01T22:17:31",
        "pulled": "2024-03-01T22:17:31",
    });
    let path = dir.join(sub).join(hex_of(&digest));
    std::fs::write(&path, body.to_string()).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path
}

/// Copies every config and layer of `layout` to `<dir>/blobs/<hex>`.
fn copy_blobs(layout: &ImageLayout, dir: &Path) {
    for b in layout.info.blobs() {
        let to = dir.join("blobs").join(hex_of(&b.digest));
        std::fs::copy(layout.blob_path(&b.digest), &to)
            .unwrap_or_else(|e| panic!("copying blob {} to {}: {e}", b.digest, to.display()));
    }
}

/// `dir` as the reference server lays out its cache: both images' blobs, the
/// index of `multi` pulled by tag (`team/legacy:v1`) with its platform
/// manifests by digest, and `single` pulled by `latest` (`tools/one`).
fn write_reference_cache(dir: &Path, multi: &ImageLayout, single: &ImageLayout) {
    for sub in ["blobs", "img", "lts"] {
        std::fs::create_dir_all(dir.join(sub)).expect("creating the reference layout");
    }
    copy_blobs(multi, dir);
    copy_blobs(single, dir);
    write_manifest_file(dir, "img", TYPE_OCI_INDEX, &multi.info.top_bytes, &format!("{NAME}/team/legacy:v1"));
    for m in &multi.info.manifests {
        let url = format!("{NAME}/team/legacy@{}", m.descriptor.digest);
        write_manifest_file(dir, "img", TYPE_OCI_MANIFEST, &m.bytes, &url);
    }
    write_manifest_file(
        dir,
        "lts",
        TYPE_OCI_MANIFEST,
        &single.info.top_bytes,
        &format!("{NAME}/tools/one:latest"),
    );
}

/// `<cache>/blobs/sha256/<2 hex>/<hex>`.
fn cached_blob(cache: &Path, digest: &str) -> PathBuf {
    let hex = hex_of(digest);
    cache.join("blobs").join("sha256").join(&hex[..2]).join(hex)
}

#[test]
fn load_from_reference_cache_then_pull_air_gapped() {
    let work = tempdir("reference-cache");
    let w = work.path();
    let multi =
        ImageLayout::generate(&w.join("layout-multi"), &ImageSpec::multi_platform(2101, &[1000, 150_000]));
    let single = ImageLayout::generate(&w.join("layout-single"), &ImageSpec::single(2102, &[1000, 90_000]));

    // The reference server's cache directory, as it lays it out.
    let reference = w.join("reference");
    write_reference_cache(&reference, &multi, &single);
    // A blob whose bytes are not what its name says (the reference never verified).
    let promised = digest_of(b"the bytes this name promises");
    let corrupt = reference.join("blobs").join(hex_of(&promised));
    std::fs::write(&corrupt, b"other bytes").expect("writing the corrupt blob");
    // A blob no manifest uses: imported, and reported.
    let orphan = digest_of(b"a blob no manifest uses");
    std::fs::write(reference.join("blobs").join(hex_of(&orphan)), b"a blob no manifest uses")
        .expect("writing the orphan blob");
    // A manifest file that is garbage, and a file the layout does not have.
    let garbage = reference.join("img").join(hex_of(&digest_of(b"garbage")));
    std::fs::write(&garbage, b"\0 not a manifest file {").expect("writing the garbage manifest file");
    let stray = reference.join("blobs").join("README");
    std::fs::write(&stray, b"notes").expect("writing a stray file");

    // A mirror with no upstream is already serving the cache directory.
    let nowhere = CountingListener::loopback();
    let cache = w.join("cache");
    let builder = Mirror::builder().registry(RegistryConfig::new(NAME).endpoint(&nowhere.url()));
    let mirror = builder.image_path(&cache).arg("--air-gapped").start();
    let status = |repo: &str, tag: &str| {
        mirror.request("GET", &format!("/v2/{NAME}/{repo}/manifests/{tag}")).accept_manifests().send().status
    };
    assert_eq!(status("team/legacy", "v1"), 404, "not cached yet, air-gapped: 404\n{}", mirror.explain());

    let load = run_cli(&["load", "--from-reference-cache", s(&reference), "--image-path", s(&cache)])
        .fails(&[&mirror]);
    let ctx: [&dyn Explain; 3] = [&mirror, &load, &nowhere];
    // What was wrong is named, with why; the rest is imported.
    let l = line_with(&load, &format!("skipped {} (corrupt)", corrupt.display()));
    assert!(l.contains(&promised) && l.contains("content digest is"), "{l}");
    line_with(&load, &format!("skipped {} (corrupt)", garbage.display()));
    line_with(&load, &format!("skipped {} (not imported)", stray.display()));
    line_with(&load, &format!("unreferenced blob {orphan}"));
    let summary = line_with(&load, &format!("imported {}:", reference.display()));
    let blobs = multi.info.blobs().len() + single.info.blobs().len() + 1;
    assert!(
        summary.contains(&format!("4 manifests, 2 tags, 2 by digest; {blobs} blobs"))
            && summary.contains("4 pull times")
            && summary.contains("3 files skipped (2 corrupt)"),
        "{}",
        load.explain()
    );
    assert!(load.stderr.contains("2 corrupt or unreadable files were not imported"), "{}", load.explain());
    // The corrupt blob is nowhere in the cache, not even as a partial.
    let leftovers: Vec<PathBuf> =
        files_under(&cache).into_iter().filter(|p| p.to_string_lossy().contains(hex_of(&promised))).collect();
    assert!(leftovers.is_empty(), "the corrupt blob was committed or left behind: {leftovers:?}");
    assert!(cached_blob(&cache, &orphan).is_file(), "the orphan blob verifies: imported");

    // The running mirror picks the import up without a restart.
    assert!(
        wait_until(Duration::from_secs(3), || status("team/legacy", "v1") == 200),
        "the running mirror should serve the imported tag within a few seconds\n{}",
        explain_all(&ctx)
    );

    // `list` shows both images by their tags, with the reference's pull times
    // (before any pull here adds its own).
    let list = run_cli(&["list", "--image-path", s(&cache)]).ok(&ctx);
    assert_eq!(
        list.lines().len(),
        2,
        "one line per tag (the digest-pulled children are inside v1)\n{}",
        list.explain()
    );
    assert!(
        line_with(&list, &format!("{NAME}/team/legacy "))
            .starts_with(&format!("{NAME}/team/legacy v1 oci-index "))
    );
    assert!(
        line_with(&list, &format!("{NAME}/tools/one "))
            .starts_with(&format!("{NAME}/tools/one latest oci-manifest "))
    );
    let json = run_cli(&["list", "--image-path", s(&cache), "--json"]).ok(&ctx).json();
    for entry in json.as_array().unwrap_or_else(|| panic!("a JSON list: {json:#}")) {
        assert_eq!(entry["complete"], Value::Bool(true), "{entry:#}");
        // 2024-03-01T22:17:31 local time, in UTC (any zone keeps the month).
        let pulled = entry["pulled"].as_str().unwrap_or_else(|| panic!("no pull time: {entry:#}"));
        assert!(pulled.starts_with("2024-03-0"), "{entry:#}");
    }

    // Both images pull byte for byte, nothing asks an upstream.
    for (layout, name) in [(&multi, "team/legacy:v1"), (&single, "tools/one:latest")] {
        let got = Skopeo::new().context(&mirror).pull_via_mirror(
            &mirror,
            &format!("{NAME}/{name}"),
            &w.join(format!("pull-{}", name.replace(['/', ':'], "-"))),
        );
        assert_same_image(&layout.info, &got, &ctx);
    }
    assert_eq!(nowhere.count(), 0, "nothing may contact the upstream\n{}", explain_all(&ctx));

    let verify = run_cli(&["verify", "--image-path", s(&cache)]).ok(&ctx);
    assert!(verify.stdout.contains("ok"), "{}", verify.explain());
}

/// `serve` on the reference server's own cache directory (an operator
/// switching on the same volume): its files are converted in place in the
/// background, verified, and deleted once in the cache, so the disk never
/// holds two copies; what cannot be used stays. Then it pulls air-gapped.
#[test]
fn serve_converts_a_reference_cache_in_its_image_path() {
    let work = tempdir("reference-cache");
    let w = work.path();
    let multi =
        ImageLayout::generate(&w.join("layout-multi"), &ImageSpec::multi_platform(2201, &[1000, 120_000]));
    let single = ImageLayout::generate(&w.join("layout-single"), &ImageSpec::single(2202, &[1000, 70_000]));
    let cache = w.join("cache");
    write_reference_cache(&cache, &multi, &single);
    let promised = digest_of(b"the bytes this name promises");
    let corrupt = cache.join("blobs").join(hex_of(&promised));
    std::fs::write(&corrupt, b"other bytes").expect("writing the corrupt blob");

    let nowhere = CountingListener::loopback();
    let mirror = Mirror::builder()
        .registry(RegistryConfig::new(NAME).endpoint(&nowhere.url()))
        .image_path(&cache)
        .arg("--air-gapped")
        .start();
    assert!(
        mirror.wait_for_log("converted the reference server's cache", Duration::from_secs(30)),
        "the conversion finishes and says so\n{}",
        mirror.explain()
    );
    let legacy = crate::support::scenario::raw_pull(&mirror, &format!("{NAME}/team/legacy"), "v1", "");
    assert_eq!(legacy.top.digest, multi.info.top.digest);
    let one = crate::support::scenario::raw_pull(&mirror, &format!("{NAME}/tools/one"), "latest", "");
    assert_eq!(one.top.digest, single.info.top.digest);
    assert_eq!(nowhere.count(), 0, "all of it from the converted cache\n{}", mirror.explain());

    for b in multi.info.blobs().iter().chain(single.info.blobs().iter()) {
        assert!(
            !cache.join("blobs").join(hex_of(&b.digest)).exists(),
            "the reference's copy of {} is deleted",
            b.digest
        );
        assert!(cached_blob(&cache, &b.digest).is_file(), "{} is in the cache", b.digest);
    }
    assert!(!cache.join("img").exists() && !cache.join("lts").exists(), "the emptied img/ and lts/ go");
    assert!(corrupt.is_file(), "a file that did not verify stays for the operator");
    assert!(mirror.log().contains(hex_of(&promised)), "and is named in the log\n{}", mirror.explain());
}
