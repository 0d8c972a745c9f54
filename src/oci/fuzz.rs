//! Fuzzing entry points for the parsers that read hostile input (run by
//! `cargo +nightly fuzz run <name>` from `fuzz/`, and on the saved corpus of
//! past findings by `tests/fuzz_regressions.rs`). Each checks, beyond "does
//! not panic", the property the rest of the server relies on: what parses
//! is exactly what was sent, and can never name a path outside the cache.

use super::{Digest, ImagePath, ManifestView, Reference, RegistryHost, RepoName, V2Path};

fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// A path component that is safe as a directory name.
fn safe_component(c: &str) -> bool {
    !c.is_empty() && c != "." && c != ".." && !c.contains(['/', '\\', '\0', '%'])
}

fn check_repo(repo: &RepoName) {
    assert!(repo.as_str().split('/').all(safe_component), "unsafe repository {repo:?}");
}

fn check_host(host: &RegistryHost) {
    assert!(safe_component(host.as_str()), "unsafe registry host {host:?}");
    assert!(!host.hostname().is_empty());
}

/// `/v2/...` request paths.
pub fn v2_path(data: &[u8]) {
    let Some(s) = text(data) else { return };
    let name = match V2Path::parse(s) {
        Ok(V2Path::Manifest { name, reference }) => {
            reference_ok(&reference);
            name
        }
        Ok(V2Path::Blob { name, digest } | V2Path::Referrers { name, digest }) => {
            digest_ok(&digest);
            name
        }
        Ok(V2Path::TagsList { name }) => name,
        _ => return,
    };
    check_image_path(&name);
}

fn check_image_path(name: &ImagePath) {
    check_repo(&name.repo);
    if let Some(h) = &name.host {
        check_host(h);
    }
    if let Ok(whole) = name.whole_repo() {
        check_repo(&whole);
    }
}

/// Repository names, registry hosts and in-path names.
pub fn names(data: &[u8]) {
    let Some(s) = text(data) else { return };
    if let Ok(r) = RepoName::parse(s) {
        assert_eq!(r.as_str(), s, "a repository name is kept as sent");
        check_repo(&r);
        let _ = r.with_library_prefix();
    }
    if let Ok(h) = RegistryHost::parse(s) {
        assert_eq!(h.as_str(), s.to_ascii_lowercase());
        check_host(&h);
    }
    if let Ok(p) = ImagePath::parse(s) {
        check_image_path(&p);
    }
}

/// Tags and digests.
pub fn reference(data: &[u8]) {
    let Some(s) = text(data) else { return };
    if let Ok(r) = Reference::parse(s) {
        assert_eq!(r.to_string(), s, "a reference is kept as sent (tags are case-sensitive)");
        reference_ok(&r);
    }
    if let Ok(d) = Digest::parse(s) {
        digest_ok(&d);
    }
}

fn reference_ok(r: &Reference) {
    match r {
        Reference::Tag(t) => assert!(safe_component(t.as_str()), "unsafe tag {t:?}"),
        Reference::Digest(d) => digest_ok(d),
    }
}

fn digest_ok(d: &Digest) {
    assert!(d.hex().bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
    assert_eq!(Digest::parse(&d.to_string()).as_ref(), Ok(d));
}

/// Manifests as an upstream sends them; the first line of the input is the Content-Type.
pub fn manifest(data: &[u8]) {
    let (ct, body) = match data.iter().position(|b| *b == b'\n') {
        Some(n) => (text(&data[..n]), &data[n + 1..]),
        None => (None, data),
    };
    if let Ok(v) = ManifestView::parse(body, ct) {
        assert!(!v.media_type.is_empty());
        v.references.iter().for_each(|r| digest_ok(&r.digest));
    }
}
