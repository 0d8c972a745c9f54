//! The fuzz targets' saved inputs, run as plain tests on every `cargo test`
//! (no nightly needed): `fuzz/regressions/<target>/*` holds past findings and
//! hostile inputs worth keeping. Add a crashing input from
//! `fuzz/artifacts/<target>/` there when fixing it.

use std::path::Path;

fn run(target: &str, f: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions").join(target);
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    let mut n = 0;
    for entry in entries {
        let path = entry.expect("listing the corpus").path();
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let outcome = std::panic::catch_unwind(|| f(&data));
        assert!(outcome.is_ok(), "{target} panicked on {}", path.display());
        n += 1;
    }
    assert!(n > 0, "{} holds no inputs", dir.display());
}

#[test]
fn v2_path() {
    run("v2_path", ociregistry::oci::fuzz::v2_path);
}

#[test]
fn names() {
    run("names", ociregistry::oci::fuzz::names);
}

#[test]
fn reference() {
    run("reference", ociregistry::oci::fuzz::reference);
}

#[test]
fn manifest() {
    run("manifest", ociregistry::oci::fuzz::manifest);
}

#[test]
fn www_authenticate() {
    run("www_authenticate", ociregistry::upstream::fuzz_www_authenticate);
}
