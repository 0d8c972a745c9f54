//! A private containerd (Debian 1.6) as the real client, with `ctr`.
//!
//! Root, state and the gRPC socket live in a temporary directory. Its
//! `certs.d/_default/hosts.toml` sends every registry to one host (the mirror) and
//! has a dead loopback port as `server`, so nothing can leak past the mirror.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::Duration;

use super::{
    Explain, dead_port, kill_and_reap, require_tool, run, run_ok, sigterm, spawn_logged, tail, wait_or_kill,
};

/// The running containerd. Stopped when dropped.
pub struct Containerd {
    dir: tempfile::TempDir,
    sock: PathBuf,
    hosts_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    ctr: PathBuf,
}

impl Containerd {
    /// Starts containerd with `_default/hosts.toml` pointing at `host_url`
    /// (`http://127.0.0.1:PORT`: the mirror, or an upstream for harness self-tests).
    pub fn start(host_url: &str) -> Containerd {
        let containerd = require_tool("containerd", "containerd");
        let ctr = require_tool("ctr", "containerd");
        let dir = super::tempdir("containerd");
        let root = dir.path().join("root");
        let state = dir.path().join("state");
        let sock = dir.path().join("containerd.sock");
        let hosts_dir = dir.path().join("certs.d");
        let config = dir.path().join("config.toml");
        let log = dir.path().join("containerd.log");
        std::fs::create_dir_all(hosts_dir.join("_default")).expect("creating certs.d/_default");
        std::fs::write(
            &config,
            format!(
                r#"version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{sock}"
[debug]
  level = "info"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "127.0.0.1:{dead}/pause:3.9"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{hosts}"
"#,
                root = root.display(),
                state = state.display(),
                sock = sock.display(),
                hosts = hosts_dir.display(),
                dead = dead_port(),
            ),
        )
        .expect("writing containerd's config.toml");
        std::fs::write(
            hosts_dir.join("_default").join("hosts.toml"),
            format!(
                "server = \"http://127.0.0.1:{dead}\"\n\n[host.\"{host_url}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
                dead = dead_port()
            ),
        )
        .expect("writing hosts.toml");

        let mut cmd = Command::new(containerd);
        cmd.arg("--config").arg(&config);
        let child = spawn_logged(&mut cmd, &log);
        let mut c = Containerd { dir, sock, hosts_dir, log, child: Some(child), ctr };
        let up = super::wait_until(Duration::from_secs(30), || {
            if let Some(Ok(Some(_))) = c.child.as_mut().map(|ch| ch.try_wait()) {
                return true;
            }
            c.sock.exists() && run(&mut c.ctr_command(["version"])).status.success()
        });
        let exited = matches!(c.child.as_mut().map(|ch| ch.try_wait()), Some(Ok(Some(_))));
        if !up || exited {
            panic!("containerd did not start (exited: {exited})\n{}", c.explain());
        }
        c
    }

    /// The gRPC socket.
    pub fn socket(&self) -> &Path {
        &self.sock
    }

    /// The `certs.d` directory (`--hosts-dir`).
    pub fn hosts_dir(&self) -> &Path {
        &self.hosts_dir
    }

    /// Writes `certs.d/<host>/hosts.toml`.
    pub fn set_hosts_toml(&self, host: &str, toml: &str) {
        let d = self.hosts_dir.join(host);
        std::fs::create_dir_all(&d).expect("creating a certs.d host directory");
        std::fs::write(d.join("hosts.toml"), toml).expect("writing hosts.toml");
    }

    /// Rewrites `_default/hosts.toml` to send every registry to `host_url`
    /// (`https://127.0.0.1:PORT`), trusting the CA `ca` (PEM) for it.
    pub fn mirror_with_ca(&self, host_url: &str, ca: &Path) {
        let ca = serde_json::to_string(&ca.display().to_string()).expect("quoting a path");
        self.set_hosts_toml(
            "_default",
            &format!(
                "server = \"http://127.0.0.1:{dead}\"\n\n[host.\"{host_url}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = {ca}\n",
                dead = dead_port()
            ),
        );
    }

    /// `ctr -a SOCK ARGS…`.
    pub fn ctr_command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(&self.ctr);
        cmd.arg("-a").arg(&self.sock).args(args);
        cmd
    }

    /// Runs ctr; panics with the command, its output, containerd's log and the
    /// context's explanations unless it succeeds.
    pub fn ctr<I, S>(&self, args: I, context: &[&dyn Explain]) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut all: Vec<&dyn Explain> = context.to_vec();
        all.push(self);
        run_ok(&mut self.ctr_command(args), &all)
    }

    /// Runs ctr, successful or not.
    pub fn try_ctr<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run(&mut self.ctr_command(args))
    }

    /// `ctr image pull --hosts-dir certs.d REF` (fetch and unpack the default platform).
    /// With `OCIREGISTRY_E2E_HTTP_DUMP=1` in the environment, adds `--http-dump` and
    /// prints every request and response containerd exchanged (see `--nocapture`).
    pub fn pull(&self, reference: &str, context: &[&dyn Explain]) -> Output {
        let hosts = self.hosts_dir.display().to_string();
        let mut args = vec!["image", "pull", "--hosts-dir", hosts.as_str()];
        let dump = std::env::var_os("OCIREGISTRY_E2E_HTTP_DUMP").is_some();
        if dump {
            args.push("--http-dump");
        }
        args.push(reference);
        let out = self.ctr(args, context);
        if dump {
            // Keep request lines and headers; drop the (binary) bodies.
            let stderr = String::from_utf8_lossy(&out.stderr);
            let heads: Vec<&str> = stderr
                .lines()
                .filter(|l| !l.contains("\\x") && !l.contains("msg=\"{") && l.len() < 600)
                .collect();
            eprintln!("---- ctr --http-dump of {reference} ----\n{}", heads.join("\n"));
        }
        out
    }

    /// Panics unless `ctr image check` reports the image complete and unpacked, and
    /// the snapshotter holds at least `min_snapshots` committed snapshots.
    pub fn assert_unpacked(&self, reference: &str, min_snapshots: usize, context: &[&dyn Explain]) {
        let out = self.ctr(["image", "check"], context);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(reference))
            .unwrap_or_else(|| panic!("`ctr image check` does not list {reference}:\n{text}"));
        let fields: Vec<&str> = line.split_whitespace().collect();
        // REF TYPE DIGEST STATUS SIZE UNPACKED
        assert!(
            fields.iter().any(|f| f.starts_with("complete")),
            "image {reference} is not complete: {line}\n{text}"
        );
        assert_eq!(fields.last().copied(), Some("true"), "image {reference} is not unpacked: {line}\n{text}");
        let snaps = self.committed_snapshots(context);
        assert!(
            snaps.len() >= min_snapshots,
            "wanted at least {min_snapshots} committed snapshots, have {}: {snaps:?}",
            snaps.len()
        );
    }

    /// Keys of the committed snapshots (`ctr snapshot ls`).
    pub fn committed_snapshots(&self, context: &[&dyn Explain]) -> Vec<String> {
        let out = self.ctr(["snapshot", "ls"], context);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            // KEY [PARENT] KIND: the parent column is blank for a base layer.
            .filter(|l| l.split_whitespace().last() == Some("Committed"))
            .filter_map(|l| l.split_whitespace().next().map(String::from))
            .collect()
    }

    /// The target digest of an image (`ctr image ls`).
    pub fn image_digest(&self, reference: &str, context: &[&dyn Explain]) -> String {
        let out = self.ctr(["image", "ls"], context);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(reference))
            .and_then(|l| l.split_whitespace().find(|f| f.starts_with("sha256:")))
            .map(String::from)
            .unwrap_or_else(|| panic!("`ctr image ls` does not list {reference}:\n{text}"))
    }

    /// containerd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The temporary directory holding root, state and certs.d.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Explain for Containerd {
    fn explain(&self) -> String {
        format!(
            "---- containerd {} ({}) log tail: {} ----\n{}\n",
            self.sock.display(),
            self.child.as_ref().map(super::process_state).unwrap_or_else(|| "not running".to_string()),
            self.log.display(),
            tail(&self.log, 30)
        )
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.explain());
        }
        if let Some(mut c) = self.child.take() {
            sigterm(&c);
            if wait_or_kill(&mut c, Duration::from_secs(10)).is_none() {
                kill_and_reap(&mut c);
            }
        }
    }
}
