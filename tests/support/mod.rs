//! Fixtures for the end-to-end tests: real registries, real clients, the real binary.
//!
//! Every fixture owns a temporary directory and free loopback ports, so tests run in
//! parallel. Processes are killed when their fixture drops; a fixture dropped while
//! the test is panicking prints the tail of its log, so a failure explains itself.
//!
//! - `upstream`: Debian's `docker-registry` (CNCF distribution 2.8) in each auth/TLS mode.
//! - `token`: the Bearer token server that `docker-registry` trusts in token mode.
//! - `pki`: test CA, server certificates and token signing keys (the `openssl` CLI).
//! - `image`: generated OCI image layouts, seeded into an upstream with skopeo.
//! - `proxy`: a counting, throttling, fault-injecting proxy in front of the upstream.
//! - `listener`: a TCP listener that counts (and closes) every connection: a place
//!   the mirror must never connect to.
//! - `mirror`: the server under test, `ociregistry serve`, with a temporary cache.
//! - `cli`: the cache commands (`load`, `check`, `list`, `prune`, `export`, `verify`).
//! - `skopeo`, `containerd`: the real clients.
//! - `http`: a raw HTTP client, one request builder (paths are sent byte for byte,
//!   never normalised).
//! - `metrics`, `logs`: reading what the mirror reports: Prometheus text, and
//!   text or JSON log lines.
//! - `scenario`: upstream + proxy + mirror with a seeded image, and pull helpers.
//! - `kube`: a stand-in Kubernetes API answering pod lists (`pinRunningImages`).

// The fixture API is wider than what any single test uses.
#![allow(dead_code)]

pub mod cli;
pub mod containerd;
pub mod cri;
pub mod ecr;
pub mod http;
pub mod image;
pub mod kube;
pub mod listener;
pub mod logs;
pub mod metrics;
pub mod mirror;
pub mod pki;
pub mod proxy;
pub mod s3;
pub mod scenario;
pub mod skopeo;
pub mod token;
pub mod upstream;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

/// The tokio runtime shared by the in-process fixtures (proxy, token server, HTTP client).
///
/// Tests themselves are plain `#[test]` functions that block; keeping the servers on
/// their own worker threads means a blocking test never starves them.
pub fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .thread_name("e2e-fixtures")
            .build()
            .expect("building the fixtures' tokio runtime")
    })
}

/// A port that was free a moment ago on 127.0.0.1 (bind :0, read, release).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0 to find a free port");
    l.local_addr().expect("local_addr of a bound listener").port()
}

/// A loopback port nothing listens on (connections are refused).
pub fn dead_port() -> u16 {
    free_port()
}

/// Finds `tool` on `PATH`, or fails the test naming the Debian package that provides it.
///
/// The tests never skip silently: a missing tool is a broken test machine.
pub fn require_tool(tool: &str, debian_package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(tool);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "`{tool}` is not installed (not found on PATH); these tests need it: \
         install the Debian package with `apt-get install -y --no-install-recommends {debian_package}`"
    );
}

/// Something that can say what it saw, for failure messages.
pub trait Explain {
    fn explain(&self) -> String;
}

/// Formats the explanations of several fixtures for a panic message.
pub fn explain_all(context: &[&dyn Explain]) -> String {
    context.iter().map(|c| c.explain()).collect::<Vec<_>>().join("\n")
}

/// The last `lines` lines of a (log) file, or a note saying why there are none.
pub fn tail(path: &Path, lines: usize) -> String {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) => return format!("<cannot open {}: {e}>", path.display()),
    };
    // Read at most the last 256 KiB: enough for any tail we print.
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(256 * 1024);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return format!("<cannot seek {}>", path.display());
    }
    let mut buf = Vec::new();
    if let Err(e) = f.read_to_end(&mut buf) {
        return format!("<cannot read {}: {e}>", path.display());
    }
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    let from = all.len().saturating_sub(lines);
    if all.is_empty() {
        return "<empty>".to_string();
    }
    all[from..].join("\n")
}

/// Polls `ready` every 50 ms until it returns true; false after `timeout`.
pub fn wait_until(timeout: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if ready() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every regular file under `dir`, recursively, sorted (none if `dir` is missing).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(t) if t.is_file() => out.push(p),
                _ => {}
            }
        }
    }
    out.sort();
    out
}

/// `sha256:<hex>` of some bytes.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// `sha256:<hex>` of a file's contents.
pub fn digest_of_file(path: &Path) -> String {
    let mut f = File::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

/// The hex part of a `sha256:<hex>` digest.
pub fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or_else(|| panic!("not a sha256 digest: {digest}"))
}

/// A command line as a shell would show it, for failure messages.
pub fn command_line(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| {
        let a = a.to_string_lossy();
        if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '"' || c == '\'') {
            format!("'{}'", a.replace('\'', r"'\''"))
        } else {
            a.into_owned()
        }
    }));
    parts.join(" ")
}

/// Makes a child die with the thread that spawned it (a safety net: fixtures kill
/// their processes on drop, but a test process that is killed itself leaves no orphans).
pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory of
    // the parent; it is the documented way to ask for this between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// Starts a long-running process with stdout and stderr appended to `log`.
pub fn spawn_logged(cmd: &mut Command, log: &Path) -> Child {
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap_or_else(|e| panic!("opening log file {}: {e}", log.display()));
    {
        use std::io::Write as _;
        let t = std::thread::current();
        let _ = writeln!(
            out,
            "==== e2e harness: spawning `{}` from thread {:?} ====",
            command_line(cmd),
            t.name().unwrap_or("?")
        );
    }
    let err =
        out.try_clone().unwrap_or_else(|e| panic!("duplicating log file handle {}: {e}", log.display()));
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    die_with_parent(cmd);
    let line = command_line(cmd);
    cmd.spawn().unwrap_or_else(|e| panic!("starting `{line}`: {e}"))
}

/// Runs a short command to completion, capturing its output (never panics on status).
pub fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null());
    die_with_parent(cmd);
    let line = command_line(cmd);
    cmd.output().unwrap_or_else(|e| panic!("running `{line}`: {e}"))
}

/// Runs a short command and panics with its command line, output and the context's
/// explanations unless it succeeds.
pub fn run_ok(cmd: &mut Command, context: &[&dyn Explain]) -> Output {
    let out = run(cmd);
    if !out.status.success() {
        panic!(
            "command failed ({}):\n  {}\n---- stdout ----\n{}\n---- stderr ----\n{}\n{}",
            out.status,
            command_line(cmd),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            explain_all(context)
        );
    }
    out
}

/// Sends SIGTERM to a child (std only offers SIGKILL).
pub fn sigterm(child: &Child) {
    let pid = libc::pid_t::try_from(child.id()).expect("pid fits in pid_t");
    // SAFETY: kill(2) on a pid we own (our un-reaped child, so it cannot be recycled).
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
}

/// Kills and reaps a child, ignoring "already exited".
pub fn kill_and_reap(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Waits for a child to exit for at most `timeout`; SIGKILLs it after that.
pub fn wait_or_kill(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(25)),
            _ => {
                kill_and_reap(child);
                return None;
            }
        }
    }
}

/// A temporary directory under the system temp dir, named for what it holds.
pub fn tempdir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("ociregistry-e2e-{prefix}-"))
        .tempdir()
        .expect("creating a temporary directory")
}

/// What became of a child, without reaping it: "running", "exited with status N" or
/// "killed by signal N" (so a failure message can say why a fixture went away).
pub fn process_state(child: &Child) -> String {
    let pid = libc::id_t::from(child.id());
    // SAFETY: waitid with WNOWAIT only inspects our own child; a zeroed siginfo_t is
    // a valid value to be filled in.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let rc = libc::waitid(libc::P_PID, pid, &mut info, libc::WEXITED | libc::WNOHANG | libc::WNOWAIT);
        if rc != 0 {
            return format!("unknown ({})", std::io::Error::last_os_error());
        }
        if info.si_pid() == 0 {
            return format!("running (pid {pid})");
        }
        match info.si_code {
            libc::CLD_EXITED => format!("pid {pid} exited with status {}", info.si_status()),
            libc::CLD_KILLED | libc::CLD_DUMPED => {
                format!("pid {pid} killed by signal {}", info.si_status())
            }
            other => format!("pid {pid} si_code {other}"),
        }
    }
}
