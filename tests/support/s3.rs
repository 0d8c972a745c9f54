//! `s3s-fs`: a real S3 server over a directory, on a free loopback port
//! (`cargo install s3s-fs@0.14.1 --locked --features binary`; `.ci/run` does).
//! It checks signatures and honours `If-None-Match: *` on PUT, but not
//! atomically under concurrent writers (see the README's replica section).

use std::path::{Path, PathBuf};
use std::time::Duration;

pub const KEY_ID: &str = "AKIAOCIREGISTRYTEST";
pub const SECRET: &str = "ociregistry-test-secret";
/// The variables replicas read the keys from (`accessKeyIdFromEnv`, ...).
pub const KEY_ID_VAR: &str = "TEST_S3_KEY_ID";
pub const SECRET_VAR: &str = "TEST_S3_SECRET";
/// The replicas' shared peer token, and the variable it is read from.
pub const PEER_TOKEN: &str = "test-peer-token-0123456789";
pub const PEER_TOKEN_VAR: &str = "TEST_PEER_TOKEN";

pub struct S3Server {
    pub endpoint: String,
    pub dir: tempfile::TempDir,
    port: u16,
    child: std::process::Child,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl super::Explain for S3Server {
    fn explain(&self) -> String {
        format!("s3s-fs at {} over {}", self.endpoint, self.dir.path().display())
    }
}

fn binary() -> PathBuf {
    let cargo_bin = std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo/bin/s3s-fs"));
    let on_path = std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join("s3s-fs")).find(|p| p.exists()));
    std::env::var_os("S3S_FS")
        .map(PathBuf::from)
        .or(on_path)
        .or(cargo_bin)
        .filter(|p| p.exists())
        .expect("s3s-fs is needed for the S3 tests: cargo install s3s-fs@0.14.1 --locked --features binary")
}

/// Starts s3s-fs and waits until it listens.
fn spawn(dir: &Path, port: u16) -> std::process::Child {
    let child = std::process::Command::new(binary())
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
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starting s3s-fs");
    for _ in 0..400 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return child;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let mut child = child;
    let _ = child.kill();
    let _ = child.wait();
    panic!("s3s-fs did not listen on port {port} within 10 s");
}

impl S3Server {
    /// A server with one empty bucket.
    pub fn start(bucket: &str) -> S3Server {
        let dir = super::tempdir("s3");
        std::fs::create_dir(dir.path().join(bucket)).expect("creating the bucket directory");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = spawn(dir.path(), port);
        S3Server { endpoint: format!("http://127.0.0.1:{port}"), dir, port, child }
    }

    /// Kills the server (`kill -9`): the bucket stops answering.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port over the same directory.
    pub fn restart(&mut self) {
        self.stop();
        self.child = spawn(self.dir.path(), self.port);
    }

    /// The `storage` block of a mirror using `bucket` under `prefix`.
    pub fn storage_yaml(&self, bucket: &str, prefix: &str) -> String {
        format!(
            "storage:\n  s3:\n    bucket: {bucket}\n    prefix: {prefix}\n    endpoint: \"{}\"\n    region: us-east-1\n    pathStyle: true\n    accessKeyIdFromEnv: {KEY_ID_VAR}\n    secretAccessKeyFromEnv: {SECRET_VAR}\n",
            self.endpoint
        )
    }

    /// The same, with a peer port of its own that the other replicas stream from.
    pub fn storage_yaml_with_peers(&self, bucket: &str, prefix: &str, peer_port: u16) -> String {
        format!(
            "{}    peers:\n      port: {peer_port}\n      advertise: \"http://127.0.0.1:{peer_port}\"\n      tokenFromEnv: {PEER_TOKEN_VAR}\n",
            self.storage_yaml(bucket, prefix)
        )
    }

    /// Every object file in the bucket under `sub` (s3s-fs keeps keys as paths).
    pub fn objects(&self, bucket: &str, sub: &str) -> Vec<PathBuf> {
        super::files_under(&self.dir.path().join(bucket).join(sub))
    }
}
