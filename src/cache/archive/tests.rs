//! Archives through a real [`FsStore`]: an export read back in every form a
//! site may hand us (tar, gzip, directory), a legacy docker-save, and inputs
//! that must be refused without leaving anything behind.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use super::*;
use crate::cache::FsStore;
use crate::oci::{Algorithm, Digest};

fn store(dir: &Path) -> FsStore {
    let s = FsStore::new(dir);
    s.prepare().unwrap();
    s
}

fn sha256(bytes: &[u8]) -> Digest {
    Digest::of(Algorithm::Sha256, bytes)
}

fn put(store: &dyn Store, bytes: &[u8]) -> (Digest, u64) {
    let d = sha256(bytes);
    store.put_blob(&d, bytes).unwrap();
    (d, bytes.len() as u64)
}

fn read_blob(store: &dyn Store, d: &Digest) -> Vec<u8> {
    let (src, len) = store.open_blob(d).unwrap().unwrap_or_else(|| panic!("{d} is not in the store"));
    let mut bytes = vec![0; len as usize];
    read_exact_at(&*src, &mut bytes, 0).unwrap();
    bytes
}

fn manifest(media_type: &str, json: String) -> StoredManifest {
    StoredManifest {
        digest: sha256(json.as_bytes()),
        media_type: media_type.to_owned(),
        bytes: Bytes::from(json),
    }
}

fn image_manifest(config: &(Digest, u64), layers: &[&(Digest, u64)]) -> StoredManifest {
    let layers: Vec<String> = layers
        .iter()
        .map(|(d, n)| format!(r#"{{"mediaType":"{OCI_LAYER_GZIP}","digest":"{d}","size":{n}}}"#))
        .collect();
    manifest(
        OCI_MANIFEST,
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{OCI_CONFIG}","digest":"{}","size":{}}},"layers":[{}]}}"#,
            config.0,
            config.1,
            layers.join(",")
        ),
    )
}

/// Two images in a source store, sharing a layer: a plain image, and an
/// index whose arm64 child was never pulled (only amd64 is exported).
struct Bundle {
    _dir: tempfile::TempDir,
    src: FsStore,
    images: Vec<ExportImage>,
    tar: Vec<u8>,
    /// What `on_bytes` was told during the export.
    reported: u64,
}

fn bundle() -> Bundle {
    let dir = tempfile::tempdir().unwrap();
    let src = store(dir.path());
    let shared = put(&src, &vec![7u8; 3 * CHUNK / 2]);
    let layer_a = put(&src, b"layer of a");
    let layer_b = put(&src, b"layer of b");
    let config_a = put(&src, br#"{"architecture":"amd64","os":"linux","a":1}"#);
    let config_b = put(&src, br#"{"architecture":"amd64","os":"linux","b":1}"#);

    let a = image_manifest(&config_a, &[&shared, &layer_a]);
    let b_amd64 = image_manifest(&config_b, &[&shared, &layer_b]);
    let b_arm64 = image_manifest(&config_b, &[&layer_b]);
    let child = |m: &StoredManifest, arch: &str| {
        format!(
            r#"{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":{},"platform":{{"architecture":"{arch}","os":"linux"}}}}"#,
            m.digest,
            m.bytes.len()
        )
    };
    let b = manifest(
        OCI_INDEX,
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{},{}]}}"#,
            child(&b_amd64, "amd64"),
            child(&b_arm64, "arm64")
        ),
    );
    let images = vec![
        ExportImage {
            name: "docker.io/library/a:1".into(),
            manifests: vec![a],
            blobs: vec![config_a, shared.clone(), layer_a],
        },
        ExportImage {
            name: "example.com/team/b:2".into(),
            manifests: vec![b, b_amd64],
            blobs: vec![config_b, shared, layer_b],
        },
    ];
    let reported = AtomicU64::new(0);
    let mut tar = Vec::new();
    export(&src, &images, &mut tar, &|n| {
        reported.fetch_add(n, Ordering::Relaxed);
    })
    .unwrap();
    Bundle { _dir: dir, src, images, tar, reported: reported.into_inner() }
}

fn distinct_digests(images: &[ExportImage]) -> HashSet<Digest> {
    images
        .iter()
        .flat_map(|i| {
            i.manifests.iter().map(|m| m.digest.clone()).chain(i.blobs.iter().map(|(d, _)| d.clone()))
        })
        .collect()
}

/// Imported images are the exported ones, byte for byte, and the
/// destination holds exactly their blobs.
fn assert_imported(got: &[ArchivedImage], b: &Bundle, dst: &dyn Store) {
    assert_eq!(got.len(), b.images.len());
    for (got, want) in got.iter().zip(&b.images) {
        assert_eq!(got.names, vec![want.name.clone()]);
        let summary = |ms: &[StoredManifest]| -> Vec<(Digest, String, Bytes)> {
            ms.iter().map(|m| (m.digest.clone(), m.media_type.clone(), m.bytes.clone())).collect()
        };
        assert_eq!(summary(&got.manifests), summary(&want.manifests), "manifests of {}", want.name);
        for (d, len) in &want.blobs {
            assert_eq!(dst.blob_len(d).unwrap(), Some(*len));
            assert_eq!(read_blob(dst, d), read_blob(&b.src, d));
        }
    }
    // Manifests arrive as blobs too (an OCI layout holds them so).
    let held: HashSet<Digest> = dst.blobs().into_iter().map(|(d, _)| d).collect();
    assert_eq!(held, distinct_digests(&b.images));
}

fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn no_progress(_: u64) {}

#[test]
fn an_export_imports_back_into_a_fresh_store() {
    let b = bundle();
    let entries: Vec<(String, tar::EntryType)> = tar::Archive::new(&b.tar[..])
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (String::from_utf8(e.path_bytes().into_owned()).unwrap(), e.header().entry_type())
        })
        .collect();
    assert_eq!(entries[0].0, "oci-layout");
    assert_eq!(entries[1].0, "index.json");
    let files: Vec<&str> =
        entries.iter().filter(|(_, t)| *t == tar::EntryType::Regular).map(|(n, _)| n.as_str()).collect();
    let distinct = distinct_digests(&b.images);
    // oci-layout, index.json, and each manifest and blob once (the shared layer too).
    assert_eq!(files.len(), 2 + distinct.len());
    assert_eq!(files.iter().collect::<HashSet<_>>().len(), files.len());
    let expected_bytes: u64 = distinct
        .iter()
        .map(|d| {
            b.src.blob_len(d).unwrap().unwrap_or_else(|| {
                let m = b.images.iter().flat_map(|i| &i.manifests).find(|m| m.digest == *d).unwrap();
                m.bytes.len() as u64
            })
        })
        .sum();
    assert_eq!(b.reported, expected_bytes);

    let index: serde_json::Value = {
        let mut a = tar::Archive::new(&b.tar[..]);
        let mut e = a.entries().unwrap().nth(1).unwrap().unwrap();
        serde_json::from_reader(&mut e).unwrap()
    };
    assert_eq!(index["manifests"][1]["mediaType"], OCI_INDEX);
    assert_eq!(index["manifests"][1]["annotations"]["io.containerd.image.name"], "example.com/team/b:2");
    assert_eq!(
        index["manifests"][1]["annotations"]["org.opencontainers.image.ref.name"],
        "example.com/team/b:2"
    );

    let dir = tempfile::tempdir().unwrap();
    let archive = write_file(dir.path(), "bundle.tar", &b.tar);
    let dst = store(&dir.path().join("dst"));
    let read = AtomicU64::new(0);
    let got = import(&archive, &dst, &|n| {
        read.fetch_add(n, Ordering::Relaxed);
    })
    .unwrap();
    assert_imported(&got, &b, &dst);
    assert!(read.into_inner() > 0);

    // Again: everything is already there, and nothing changes.
    let again = import(&archive, &dst, &no_progress).unwrap();
    assert_imported(&again, &b, &dst);
}

#[test]
fn a_gzip_compressed_export_imports_the_same() {
    let b = bundle();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&b.tar).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The name says nothing: content decides.
    let archive = write_file(dir.path(), "bundle.tar", &gz.finish().unwrap());
    let dst = store(&dir.path().join("dst"));
    let got = import(&archive, &dst, &no_progress).unwrap();
    assert_imported(&got, &b, &dst);
}

#[test]
fn an_oci_layout_directory_imports() {
    let b = bundle();
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    tar::Archive::new(&b.tar[..]).unpack(&layout).unwrap();
    let dst = store(&dir.path().join("dst"));
    let got = import(&layout, &dst, &no_progress).unwrap();
    assert_imported(&got, &b, &dst);
}

/// A tar entry, written raw so that tests can hold what no tool should write.
enum Entry<'a> {
    File(&'a [u8]),
    Symlink(&'a str),
    Hardlink(&'a str),
}

fn raw_tar(entries: &[(&str, Entry<'_>)]) -> Vec<u8> {
    let mut t = tar::Builder::new(Vec::new());
    for (name, entry) in entries {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_mode(0o644);
        let data: &[u8] = match entry {
            Entry::File(bytes) => {
                h.set_entry_type(tar::EntryType::Regular);
                bytes
            }
            Entry::Symlink(to) | Entry::Hardlink(to) => {
                let kind = if matches!(entry, Entry::Symlink(_)) {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                };
                h.set_entry_type(kind);
                h.set_link_name_literal(to).unwrap();
                b""
            }
        };
        h.set_size(data.len() as u64);
        h.set_cksum();
        t.append(&h, data).unwrap();
    }
    t.into_inner().unwrap()
}

#[test]
fn a_legacy_docker_save_gets_oci_manifests() {
    let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_name = format!("{}.json", sha256(config).hex());
    // Over the in-memory size: streamed to the store as it is read.
    let plain = vec![3u8; 200 * 1024];
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(b"a small compressed layer").unwrap();
    let gzipped = gz.finish().unwrap();
    let manifest_json = format!(
        r#"[{{"Config":"{config_name}","RepoTags":["example.com/app:1","example.com/app:latest"],"Layers":["abc/layer.tar","./def/layer.tar"]}},
            {{"Config":"{config_name}","RepoTags":null,"Layers":["sym/layer.tar"]}}]"#
    );
    let tar = raw_tar(&[
        ("abc/VERSION", Entry::File(b"1.0")),
        ("abc/json", Entry::File(b"{}")),
        ("abc/layer.tar", Entry::File(&plain)),
        ("def/layer.tar", Entry::File(&gzipped)),
        ("sym/layer.tar", Entry::Symlink("../abc/layer.tar")),
        (&config_name, Entry::File(config)),
        ("repositories", Entry::File(b"{}")),
        ("manifest.json", Entry::File(manifest_json.as_bytes())),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let archive = write_file(dir.path(), "saved", &tar);
    let dst = store(&dir.path().join("dst"));
    let got = import(&archive, &dst, &no_progress).unwrap();

    assert_eq!(got.len(), 2);
    assert_eq!(got[0].names, ["example.com/app:1", "example.com/app:latest"]);
    assert!(got[1].names.is_empty());
    let m = &got[0].manifests[0];
    assert_eq!(got[0].manifests.len(), 1);
    assert_eq!(m.media_type, OCI_MANIFEST);
    assert_eq!(m.digest, sha256(&m.bytes));
    let v: serde_json::Value = serde_json::from_slice(&m.bytes).unwrap();
    assert_eq!(v["schemaVersion"], 2);
    assert_eq!(v["config"]["mediaType"], OCI_CONFIG);
    assert_eq!(v["config"]["digest"], sha256(config).to_string());
    assert_eq!(v["config"]["size"], config.len());
    assert_eq!(v["layers"][0]["mediaType"], OCI_LAYER_TAR);
    assert_eq!(v["layers"][0]["digest"], sha256(&plain).to_string());
    assert_eq!(v["layers"][0]["size"], plain.len());
    assert_eq!(v["layers"][1]["mediaType"], OCI_LAYER_GZIP);
    assert_eq!(v["layers"][1]["digest"], sha256(&gzipped).to_string());
    let view = crate::oci::ManifestView::parse(&m.bytes, None).unwrap();
    assert_eq!(view.references.len(), 3);

    // The link resolves to the layer it names.
    let v1: serde_json::Value = serde_json::from_slice(&got[1].manifests[0].bytes).unwrap();
    assert_eq!(v1["layers"][0]["digest"], sha256(&plain).to_string());

    // The config and both layers, and nothing else (no VERSION, json, repositories).
    let held: HashSet<Digest> = dst.blobs().into_iter().map(|(d, _)| d).collect();
    assert_eq!(held, HashSet::from([sha256(config), sha256(&plain), sha256(&gzipped)]));
    assert_eq!(read_blob(&dst, &sha256(&plain)), plain);
    assert_eq!(std::fs::read_dir(dir.path().join("dst/tmp")).unwrap().count(), 0);
}

#[test]
fn a_blob_unlike_its_name_is_never_committed() {
    let good = vec![1u8; 2 * CHUNK + 5];
    let mut evil = good.clone();
    evil[CHUNK + 1] = 2;
    let named = sha256(&good);
    let tar = raw_tar(&[
        ("oci-layout", Entry::File(br#"{"imageLayoutVersion":"1.0.0"}"#)),
        ("index.json", Entry::File(br#"{"schemaVersion":2,"manifests":[]}"#)),
        (&format!("blobs/sha256/{}", named.hex()), Entry::File(&evil)),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let archive = write_file(dir.path(), "evil.tar", &tar);
    let root = dir.path().join("dst");
    let dst = store(&root);
    let err = format!("{:#}", import(&archive, &dst, &no_progress).err().unwrap());
    assert!(err.contains(&named.to_string()) && err.contains(&sha256(&evil).to_string()), "{err}");
    assert!(err.contains("evil.tar") && err.contains("blobs/sha256/"), "{err}");
    assert_eq!(dst.blob_len(&named).unwrap(), None);
    assert!(dst.blobs().is_empty());
    assert_eq!(std::fs::read_dir(root.join("tmp")).unwrap().count(), 0);
}

/// Every path under `dir`, except under `skip`.
fn tree(dir: &Path, skip: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_entry(|e| e.path() != skip)
        .map(|e| e.unwrap().into_path())
        .collect();
    paths.sort();
    paths
}

/// The regular files of a tar, in order.
fn files_of(tar: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for e in tar::Archive::new(tar).entries().unwrap() {
        let mut e = e.unwrap();
        if e.header().entry_type() == tar::EntryType::Regular {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut bytes).unwrap();
            files.push((String::from_utf8(e.path_bytes().into_owned()).unwrap(), bytes));
        }
    }
    files
}

#[test]
fn index_json_wins_over_manifest_json() {
    // docker ≥ 25 writes both; its manifest.json is read only without an index.
    let b = bundle();
    let files = files_of(&b.tar);
    let mut entries: Vec<(&str, Entry<'_>)> =
        files.iter().map(|(n, bytes)| (n.as_str(), Entry::File(bytes))).collect();
    entries.push(("manifest.json", Entry::File(br#"[{"Config":"nowhere.json","Layers":[]}]"#)));
    let dir = tempfile::tempdir().unwrap();
    let archive = write_file(dir.path(), "both.tar", &raw_tar(&entries));
    let dst = store(&dir.path().join("dst"));
    let got = import(&archive, &dst, &no_progress).unwrap();
    assert_imported(&got, &b, &dst);
}

#[test]
fn hostile_names_are_refused_and_links_never_followed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("a/b/store");
    let dst = store(&root);
    let cases = [
        (
            "dotdot.tar",
            raw_tar(&[
                ("link", Entry::Symlink("/etc/passwd")),
                ("../../etc/x", Entry::File(b"x")),
                ("index.json", Entry::File(br#"{"manifests":[]}"#)),
            ]),
            "'../../etc/x'",
        ),
        ("absolute.tar", raw_tar(&[("/abs", Entry::File(b"x"))]), "'/abs'"),
    ];
    for (name, tar, entry) in cases {
        let archive = write_file(dir.path(), name, &tar);
        let before = tree(dir.path(), &root);
        let err = format!("{:#}", import(&archive, &dst, &no_progress).err().unwrap());
        assert!(err.contains(entry) && err.contains("refusing"), "{err}");
        assert_eq!(tree(dir.path(), &root), before);
    }
    assert!(dst.blobs().is_empty());

    // Links beside real content: ignored, never followed, never stored.
    let b = bundle();
    let fake = sha256(b"anything");
    let passwd_link = format!("blobs/sha256/{}", fake.hex());
    let mut entries = vec![
        (passwd_link.as_str(), Entry::Symlink("/etc/passwd")),
        ("up", Entry::Symlink("../../../../etc/passwd")),
        ("hard", Entry::Hardlink("/etc/passwd")),
    ];
    let originals = files_of(&b.tar);
    entries.extend(originals.iter().map(|(n, bytes)| (n.as_str(), Entry::File(bytes))));
    let archive = write_file(dir.path(), "links.tar", &raw_tar(&entries));
    let before = tree(dir.path(), &root);
    let got = import(&archive, &dst, &no_progress).unwrap();
    assert_imported(&got, &b, &dst);
    assert_eq!(dst.blob_len(&fake).unwrap(), None);
    assert_eq!(tree(dir.path(), &root), before);
}

#[test]
fn anything_else_is_not_an_archive() {
    let dir = tempfile::tempdir().unwrap();
    let dst = store(&dir.path().join("dst"));
    let noise: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(b"just some text, not a tar").unwrap();
    let cases: [(&str, Vec<u8>); 5] = [
        ("text", b"hello, world\n".to_vec()),
        ("noise", noise),
        ("empty", Vec::new()),
        ("unrelated.tar", raw_tar(&[("readme.txt", Entry::File(b"hi"))])),
        ("text.gz", gz.finish().unwrap()),
    ];
    for (name, bytes) in cases {
        let path = write_file(dir.path(), name, &bytes);
        let err = format!("{:#}", import(&path, &dst, &no_progress).err().unwrap());
        assert!(err.contains("not a docker-save or OCI archive"), "{name}: {err}");
        assert!(err.contains(name), "{name}: {err}");
    }
    let empty_dir = dir.path().join("nothing");
    std::fs::create_dir(&empty_dir).unwrap();
    let err = format!("{:#}", import(&empty_dir, &dst, &no_progress).err().unwrap());
    assert!(err.contains("not a docker-save or OCI archive"), "{err}");
    assert!(dst.blobs().is_empty());
}

#[test]
fn an_image_missing_a_layer_is_refused() {
    let b = bundle();
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    tar::Archive::new(&b.tar[..]).unpack(&layout).unwrap();
    let (missing, _) = &b.images[0].blobs[2];
    std::fs::remove_file(layout.join("blobs/sha256").join(missing.hex())).unwrap();
    let dst = store(&dir.path().join("dst"));
    let err = format!("{:#}", import(&layout, &dst, &no_progress).err().unwrap());
    assert!(err.contains("docker.io/library/a:1") && err.contains(&missing.to_string()), "{err}");
}

#[test]
fn a_failed_export_is_not_a_complete_archive() {
    let b = bundle();
    let mut images = b.images;
    let absent = sha256(b"never stored");
    images[1].blobs.push((absent.clone(), 12));
    let mut out = Vec::new();
    let err = format!("{:#}", export(&b.src, &images, &mut out, &no_progress).err().unwrap());
    assert!(err.contains("example.com/team/b:2") && err.contains(&absent.to_string()), "{err}");
    // No end-of-archive marker: two zero blocks at the end.
    assert!(out.len() < 1024 || out[out.len() - 1024..].iter().any(|b| *b != 0));
}

#[test]
fn exports_are_deterministic() {
    let b = bundle();
    let mut again = Vec::new();
    export(&b.src, &b.images, &mut again, &no_progress).unwrap();
    assert!(again == b.tar);
}
