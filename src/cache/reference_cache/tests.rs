use std::time::{Duration, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;

use super::layout::*;
use super::*;
use crate::oci::Algorithm;

const INDEX: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","size":10,"platform":{"os":"linux","architecture":"amd64"}}]}"#;
/// A Docker manifest without its own mediaType (so `type` says what it is).
const BARE: &str = r#"{"schemaVersion":2,"config":{"digest":"sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb","size":5},"layers":[]}"#;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A manifest file as the reference writes it.
fn file(kind: i64, digest: &str, url: &str, bytes: &str) -> Vec<u8> {
    serde_json::json!({
        "type": kind,
        "digest": digest,
        "imageUrl": url,
        "bytes": bytes,
        "created": "2024-03-01T22:17:31",
        "pulled": "2024-03-02T08:00:00",
    })
    .to_string()
    .into_bytes()
}

fn hex(bytes: &[u8]) -> String {
    Digest::of(Algorithm::Sha256, bytes).hex().to_string()
}

fn error(data: &[u8]) -> String {
    match parse_manifest_file(data) {
        Ok(f) => panic!("accepted a bad file as {}", f.manifest.digest),
        Err(e) => e,
    }
}

#[test]
fn reads_a_manifest_file() {
    let data = file(2, &hex(INDEX.as_bytes()), "quay.io/org/repo:v1.2", &b64(INDEX.as_bytes()));
    let f = parse_manifest_file(&data).unwrap();
    assert_eq!(f.image.to_string(), "quay.io/org/repo:v1.2");
    assert_eq!(&*f.manifest.digest.hex(), hex(INDEX.as_bytes()));
    assert_eq!(f.manifest.bytes.as_ref(), INDEX.as_bytes(), "the exact bytes");
    assert_eq!(f.manifest.media_type, "application/vnd.oci.image.index.v1+json");
    let (created, pulled) = (f.created.unwrap(), f.pulled.unwrap());
    assert_eq!(pulled.duration_since(created).unwrap(), Duration::from_secs(9 * 3600 + 42 * 60 + 29));

    // By digest, with a `sha256:` prefix on its digest: accepted too.
    let d = Digest::of(Algorithm::Sha256, INDEX.as_bytes());
    let data = file(2, &d.to_string(), &format!("quay.io/org/repo@{d}"), &b64(INDEX.as_bytes()));
    let f = parse_manifest_file(&data).unwrap();
    assert_eq!((f.image.tag, f.image.digest), (None, Some(d)));
}

#[test]
fn the_media_type_is_the_bytes_own_else_the_type() {
    // The bytes say OCI index; `type` 3 (OCI manifest) does not relabel them.
    let data = file(3, &hex(INDEX.as_bytes()), "r.test/a:b", &b64(INDEX.as_bytes()));
    assert_eq!(parse_manifest_file(&data).unwrap().manifest.media_type, TYPE_MEDIA_TYPES[2]);
    let data = file(1, &hex(BARE.as_bytes()), "r.test/a:b", &b64(BARE.as_bytes()));
    assert_eq!(parse_manifest_file(&data).unwrap().manifest.media_type, TYPE_MEDIA_TYPES[1]);
}

#[test]
fn an_unknown_type_needs_the_bytes_to_say_what_they_are() {
    let e = error(&file(7, &hex(BARE.as_bytes()), "r.test/a:b", &b64(BARE.as_bytes())));
    assert!(e.contains("unknown type 7"), "{e}");
    let e = error(&file(-1, &hex(BARE.as_bytes()), "r.test/a:b", &b64(BARE.as_bytes())));
    assert!(e.contains("unknown type -1"), "{e}");
    let f = parse_manifest_file(&file(9, &hex(INDEX.as_bytes()), "r.test/a:b", &b64(INDEX.as_bytes())));
    assert_eq!(f.unwrap().manifest.media_type, TYPE_MEDIA_TYPES[2]);
}

#[test]
fn bad_base64_is_refused() {
    let e = error(&file(2, &hex(INDEX.as_bytes()), "r.test/a:b", "not*base64!"));
    assert!(e.contains("not base64"), "{e}");
    // URL-safe base64 is not what Go writes.
    let url_safe = base64::engine::general_purpose::URL_SAFE.encode([0xfb, 0xff]);
    let e = error(&file(2, &hex(&[0xfb, 0xff]), "r.test/a:b", &url_safe));
    assert!(e.contains("not base64"), "{e}");
    let e = error(
        &serde_json::json!({"type": 2, "digest": hex(b"x"), "imageUrl": "r.test/a:b", "bytes": null})
            .to_string()
            .into_bytes(),
    );
    assert!(e.contains("no manifest bytes"), "{e}");
}

#[test]
fn a_digest_mismatch_is_refused() {
    let e = error(&file(2, &hex(b"other bytes"), "r.test/a:b", &b64(INDEX.as_bytes())));
    assert!(e.contains("hash to") && e.contains(&hex(INDEX.as_bytes())), "{e}");
    let e = error(&file(2, "ABC", "r.test/a:b", &b64(INDEX.as_bytes())));
    assert!(e.contains("not a sha256 hex digest"), "{e}");
}

#[test]
fn garbage_is_refused_with_a_reason() {
    for (data, says) in [
        (b"this is not JSON\n".to_vec(), "not a reference manifest file"),
        (b"{\"type\":2}".to_vec(), "not a reference manifest file"),
        (file(2, &hex(b"[1,2]"), "r.test/a:b", &b64(b"[1,2]")), "not a manifest"),
        (file(2, &hex(INDEX.as_bytes()), "UPPER/Case:x", &b64(INDEX.as_bytes())), "imageUrl"),
    ] {
        let e = error(&data);
        assert!(e.contains(says), "{says}: {e}");
    }
}

#[test]
fn times_are_local_wall_clock() {
    let a = local_time("2024-07-01T12:00:00").unwrap();
    let b = local_time("2024-07-01 12:00:01").unwrap();
    assert_eq!(b.duration_since(a).unwrap(), Duration::from_secs(1));
    assert_eq!(local_time("1970-01-01T00:00:00Z"), Some(UNIX_EPOCH));
    assert_eq!(local_time("yesterday"), None);
    assert_eq!(local_time("2024-13-01T00:00:00"), None);
}

#[test]
fn scan_sorts_the_layout_from_what_is_not_in_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for sub in ["blobs", "img", "lts", "blobs/nested"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    std::fs::write(d.join("blobs").join(hex(b"blob")), b"blob").unwrap();
    std::fs::write(d.join("blobs/README"), b"x").unwrap();
    std::fs::write(d.join("img").join(hex(b"m")), b"{}").unwrap();
    std::fs::write(d.join("lts").join(hex(b"n")), b"{}").unwrap();
    std::fs::write(d.join("config.yaml"), b"").unwrap();
    let found = scan(d).unwrap();
    assert_eq!(found.blobs.len(), 1);
    assert_eq!((&*found.blobs[0].0.hex(), found.blobs[0].2), (hex(b"blob").as_str(), 4));
    assert_eq!(found.manifest_files.len(), 2);
    let unknown: Vec<String> = found.skipped.iter().map(|s| s.path.display().to_string()).collect();
    assert_eq!(unknown.len(), 3, "{unknown:?}");
    assert!(found.skipped.iter().all(|s| !s.corrupt));

    let empty = tempfile::tempdir().unwrap();
    let e = scan(empty.path()).unwrap_err().to_string();
    assert!(e.contains("not the reference server's cache directory"), "{e}");
}

#[test]
fn a_tag_named_twice_goes_to_the_index_then_the_newest() {
    let child = Digest::parse(&format!("sha256:{}", "a".repeat(64))).unwrap();
    let mk = |bytes: &str, url: &str, created: u64| ManifestFile {
        image: ImageRef::parse(url).unwrap(),
        manifest: StoredManifest {
            digest: Digest::of(Algorithm::Sha256, bytes.as_bytes()),
            media_type: ManifestView::parse(bytes.as_bytes(), None).unwrap().media_type,
            bytes: Bytes::from(bytes.to_owned()),
        },
        created: Some(UNIX_EPOCH + Duration::from_secs(created)),
        pulled: None,
    };
    // The index's child, created later, claims the tag too; so does an old one.
    let mut child_file = mk(BARE, "r.test/a:v1", 30);
    child_file.manifest.digest = child.clone();
    let old = r#"{"schemaVersion":2,"layers":[]}"#;
    let mut files = vec![child_file, mk(INDEX, "r.test/a:v1", 20), mk(old, "r.test/a:v1", 10)];
    let mut report = ReferenceImport::default();
    let names = name_manifests(&mut files, &mut report);
    let tagged: Vec<&Digest> = names.iter().filter(|(n, _)| n.tag.is_some()).map(|(_, d)| d).collect();
    assert_eq!(tagged, vec![&Digest::of(Algorithm::Sha256, INDEX.as_bytes())], "{names:?}");
    assert_eq!(names.len(), 3, "the others are linked by digest: {names:?}");
    assert_eq!(report.notes.len(), 1, "{:?}", report.notes);
}
