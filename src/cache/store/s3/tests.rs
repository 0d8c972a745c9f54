//! The S3 backend against s3s-fs, a real S3 server over a directory.

use super::*;

/// `s3s-fs` on 127.0.0.1: a real S3 server over a directory.
pub struct S3sFs {
    pub endpoint: String,
    pub dir: tempfile::TempDir,
    child: std::process::Child,
}

impl Drop for S3sFs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub const KEY_ID: &str = "AKIAOCIREGISTRYTEST";
pub const SECRET: &str = "ociregistry-test-secret";

pub fn s3s_fs(bucket: &str) -> S3sFs {
    let bin = std::env::var_os("S3S_FS")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cargo/bin/s3s-fs")))
        .filter(|p| p.exists())
        .or_else(|| which("s3s-fs"))
        .expect("s3s-fs is needed for the S3 tests: cargo install s3s-fs@0.14.1 --locked --features binary");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join(bucket)).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = std::process::Command::new(bin)
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--access-key",
            KEY_ID,
            "--secret-key",
            SECRET,
        ])
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let server = S3sFs { endpoint: format!("http://127.0.0.1:{port}"), dir, child };
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return server;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("s3s-fs did not start listening on port {port}");
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(name)).find(|p| p.exists())
}

pub fn settings(server: &S3sFs, bucket: &str, prefix: &str) -> S3Settings {
    S3Settings {
        bucket: bucket.into(),
        prefix: prefix.into(),
        endpoint: Some(server.endpoint.clone()),
        region: Some("us-east-1".into()),
        credentials: Some((KEY_ID.into(), SECRET.into())),
        path_style: true,
        tls: ClientTls::default(),
        peers: None,
        local_cache_size: 0,
        redirect: false,
    }
}

#[test]
fn runs_the_store_suite() {
    let server = s3s_fs("cache");
    let local = tempfile::tempdir().unwrap();
    let store = S3Store::new(&settings(&server, "cache", "mirror/one"), local.path()).unwrap();
    super::super::suite::run_all(&store, super::super::suite::Removal::GoneAtOnce);
    // Everything went to the bucket, under the prefix: nothing but downloads in imagePath.
    assert!(server.dir.path().join("cache/mirror/one/blobs").is_dir());
    let local_blobs = local.path().join("staging/blobs");
    assert!(std::fs::read_dir(&local_blobs).map_or(true, |mut d| d.next().is_none()));
}

#[test]
fn runs_the_store_suite_with_a_local_disk_tier() {
    let server = s3s_fs("cache");
    let local = tempfile::tempdir().unwrap();
    let mut s = settings(&server, "cache", "tiered");
    s.local_cache_size = 1 << 20;
    super::super::suite::run_all(
        &S3Store::new(&s, local.path()).unwrap(),
        super::super::suite::Removal::GoneAtOnce,
    );
}

#[test]
fn hot_blobs_are_read_from_local_disk_even_with_the_bucket_down() {
    use crate::oci::Algorithm;
    let server = s3s_fs("cache");
    let (here, there) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut s = settings(&server, "cache", "");
    s.local_cache_size = 1 << 20;
    let store = S3Store::new(&s, here.path()).unwrap();
    store.prepare().unwrap();
    let other = S3Store::new(&settings(&server, "cache", ""), there.path()).unwrap();
    other.prepare().unwrap();
    let (mine, theirs) = (vec![1u8; 300_000], vec![2u8; 200_000]);
    let (dm, dt) = (Digest::of(Algorithm::Sha256, &mine), Digest::of(Algorithm::Sha256, &theirs));
    store.put_blob(&dm, &mine).unwrap();
    other.put_blob(&dt, &theirs).unwrap();
    // Another replica's blob: read from the bucket once, copied in meanwhile.
    assert!(store.open_blob(&dt).unwrap().is_some());
    let tier = FsStore::new(here.path().join("staging"));
    for _ in 0..200 {
        if tier.blob_len(&dt).unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    drop(server);
    for (d, bytes) in [(&dm, &mine), (&dt, &theirs)] {
        let (r, len) = store.open_blob(d).expect("no request to the bucket").expect("in the local tier");
        let mut buf = vec![0; len as usize];
        r.read_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, bytes);
    }
}

#[test]
fn one_replica_prunes_at_a_time() {
    let server = s3s_fs("cache");
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = S3Store::new(&settings(&server, "cache", ""), one.path()).unwrap();
    let b = S3Store::new(&settings(&server, "cache", ""), two.path()).unwrap();
    let held = a.claim_pruning().unwrap().expect("the first claim wins");
    assert!(b.claim_pruning().unwrap().is_none(), "a second replica pruned while the first did");
    drop(held);
    // Released in the background: the next claim wins once it is gone.
    let mut won = None;
    for _ in 0..200 {
        won = b.claim_pruning().unwrap();
        if won.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(won.is_some(), "the lease was never released");
}

#[test]
fn a_bucket_that_cannot_be_written_is_an_error_naming_the_key() {
    let server = s3s_fs("cache");
    let local = tempfile::tempdir().unwrap();
    let mut s = settings(&server, "cache", "");
    s.credentials = Some((KEY_ID.into(), "wrong".into()));
    let err = S3Store::new(&s, local.path()).unwrap().prepare().unwrap_err();
    assert!(format!("{err:#}").contains("storage.s3"), "{err:#}");
}
