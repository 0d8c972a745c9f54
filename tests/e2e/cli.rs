//! The command line and configuration: errors name the key (and line), a cache
//! directory that cannot be written is a clear error, reference-server keys we do
//! not act on yet are accepted with a warning, and `--help` teaches.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::mirror::binary;
use crate::support::{explain_all, free_port, run, wait_until};

struct Run {
    code: Option<i32>,
    stderr: String,
    stdout: String,
}

fn ociregistry(args: &[&str]) -> Run {
    let out = run(Command::new(binary()).args(args));
    Run {
        code: out.status.code(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
    }
}

/// `serve` with `yaml` as the config file; expected to fail at start-up.
fn serve_fails(yaml: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.yaml");
    let yaml = format!("imagePath: {}\nhost: 127.0.0.1\n{yaml}", dir.path().join("cache").display());
    std::fs::write(&config, &yaml).expect("writing config");
    let r = ociregistry(&[
        "serve",
        "--port",
        &free_port().to_string(),
        "--config-file",
        &config.to_string_lossy(),
    ]);
    assert_eq!(r.code, Some(1), "config\n{yaml}\nshould stop start-up; stderr:\n{}", r.stderr);
    assert!(!r.stderr.contains("panicked"), "a config error must not panic:\n{}", r.stderr);
    r.stderr
}

#[test]
fn unknown_key_is_named_with_its_line() {
    let e = serve_fails("port: 8080\nregistires: []\n");
    assert!(e.contains("registires") && e.contains("line 4"), "{e}");
    let e = serve_fails("registries:\n  - name: quay.io\n    schem: http\n");
    assert!(e.contains("schem") && e.contains("line 5"), "{e}");
}

#[test]
fn bad_values_name_their_key() {
    for (yaml, key) in [
        ("port: eighty\n", "port"),
        ("registries:\n  - name: quay.io\n    scheme: ftp\n", "registries[0]: scheme"),
        ("registries:\n  - name: 'bad host'\n", "registries[0]: name"),
        ("registries:\n  - {name: a.io, tls: {ca: /nonexistent/ca.pem}}\n", "tls.ca"),
        ("registries:\n  - {name: a.io, auth: {user: u}}\n", "auth"),
        ("defaultNs: 'not a host'\n", "defaultNs"),
        ("logLevel: loud\n", "logLevel"),
        ("pullTimeout: 0\n", "pullTimeout"),
        ("timeouts: {stall: forever}\n", "timeouts.stall"),
    ] {
        let e = serve_fails(yaml);
        assert!(e.contains(key), "error for\n{yaml}should name `{key}`:\n{e}");
    }
}

#[test]
fn unwritable_cache_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A regular file where a directory must be: fails even for root.
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"").expect("writing file");
    let cache = blocker.join("cache");
    let r = ociregistry(&[
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        &free_port().to_string(),
        "--image-path",
        &cache.to_string_lossy(),
    ]);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(
        r.stderr.contains("cache directory") && r.stderr.contains(&*blocker.to_string_lossy()),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
}

#[test]
fn reference_keys_are_accepted_with_a_warning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.yaml");
    let port = free_port();
    std::fs::write(
        &config,
        format!(
            "imagePath: {}\nhost: 127.0.0.1\nport: {port}\nresolveRef: true\nlistConfig: {{}}\n",
            dir.path().join("cache").display()
        ),
    )
    .expect("writing config");
    let log = dir.path().join("log");
    let mut child = crate::support::spawn_logged(
        Command::new(binary()).args(["serve", "--config-file", &config.to_string_lossy()]),
        &log,
    );
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    let started = wait_until(Duration::from_secs(20), || read().contains("ready"));
    let _ = child.kill();
    let _ = child.wait();
    let text = read();
    assert!(started, "the server should start with reference-only keys:\n{text}");
    for key in ["resolveRef", "listConfig"] {
        assert!(
            text.contains(&format!("`{key}`")) && text.contains("WARN"),
            "no warning naming {key}:\n{text}"
        );
    }
}

#[test]
fn help_teaches_and_version_prints() {
    let r = ociregistry(&["serve", "--help"]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    for needle in ["--config-file", "--image-path", "--port", "--default-ns", "imagePath", "Example"] {
        assert!(r.stdout.contains(needle), "`serve --help` should mention {needle}:\n{}", r.stdout);
    }
    let r = ociregistry(&["version"]);
    assert_eq!(r.code, Some(0));
    assert!(r.stdout.contains(env!("CARGO_PKG_VERSION")), "{}", r.stdout);
}

/// An operator moving from the reference server keeps its serve flags and the
/// keys its chart writes: `--health`, `--metrics`, `--always-pull-latest`,
/// `--log-file`, `serverTlsConfig: {}` (no TLS) and `configFile`; and a level
/// in `RUST_LOG` is honoured when no flag or key sets one.
#[test]
fn reference_serve_flags_and_chart_keys_work() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (port, health, metrics) = (free_port(), free_port(), free_port());
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "imagePath: {}\nhost: 127.0.0.1\nport: {port}\nserverTlsConfig: {{}}\nconfigFile: /var/ociregistry/config/registry-config.yaml\n",
            dir.path().join("cache").display()
        ),
    )
    .expect("writing config");
    let log = dir.path().join("server.log");
    let stderr = dir.path().join("stderr");
    let mut child = crate::support::spawn_logged(
        Command::new(binary())
            .args(["--log-file", &log.to_string_lossy(), "serve", "--config-file", &config.to_string_lossy()])
            .args([
                "--health",
                &health.to_string(),
                "--metrics",
                &metrics.to_string(),
                "--always-pull-latest",
            ])
            .env("RUST_LOG", "warn"),
        &stderr,
    );
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    let health_url = format!("http://127.0.0.1:{health}/health");
    let started = wait_until(Duration::from_secs(20), || {
        crate::support::http::Request::get(&health_url).try_send().is_ok_and(|r| r.status == 200)
    });
    let health_ok =
        crate::support::http::Request::get(&format!("http://127.0.0.1:{health}/health")).send().status;
    let metrics_ok =
        crate::support::http::Request::get(&format!("http://127.0.0.1:{metrics}/metrics")).send().status;
    let plain_http =
        crate::support::http::Request::get(&format!("http://127.0.0.1:{port}/v2/")).send().status;
    let _ = child.kill();
    let _ = child.wait();
    let text = read();
    assert!(
        started,
        "the server should start with the reference's flags and keys; log file:\n{text}\nstderr:\n{}",
        std::fs::read_to_string(&stderr).unwrap_or_default()
    );
    assert_eq!((health_ok, metrics_ok), (200, 200), "--health and --metrics open their ports");
    assert_eq!(plain_http, 200, "serverTlsConfig: {{}} means plain HTTP");
    assert!(
        text.contains("`configFile`") && text.contains("WARN"),
        "configFile is accepted with a warning:\n{text}"
    );
    assert!(!text.contains(" INFO "), "RUST_LOG=warn is honoured when nothing else sets a level:\n{text}");
    assert!(
        !std::fs::read_to_string(&stderr).unwrap_or_default().contains("configFile"),
        "--log-file takes the log lines off standard error"
    );
}

/// The rest of the reference's command line parses: `serve --os/--arch`
/// (the platform preloading chooses) and `load --pull-timeout`; each is
/// listed in `--help`.
#[test]
fn reference_platform_and_timeout_flags_parse() {
    for (args, flag) in [
        (vec!["serve", "--os", "linux", "--arch", "arm64", "--help"], "--arch"),
        (vec!["load", "--pull-timeout", "5000", "--help"], "--pull-timeout"),
    ] {
        let r = crate::support::cli::run_cli(&args);
        assert!(
            r.success() && r.stdout.contains(flag),
            "{args:?}:\n{}",
            crate::support::Explain::explain(&r)
        );
    }
}

/// `prepare-cache` (the chart's init container for a hostPath cache) gives a
/// root-owned cache to the server's user: everything under it, symbolic links
/// themselves (never what they point at, even outside), files with other hard
/// links left alone and named; a second run, with the directory already the
/// user's, changes nothing.
#[test]
fn prepare_cache_gives_a_root_owned_cache_to_the_server_user() {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid(2) has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "prepare-cache changes owners: run the tests as root");
    let work = tempfile::tempdir().expect("tempdir");
    let cache = work.path().join("cache");
    std::fs::create_dir_all(cache.join("blobs/sha256/ab")).expect("mkdir");
    std::fs::write(cache.join("blobs/sha256/ab/abcd"), b"blob").expect("write");
    let outside = work.path().join("outside");
    std::fs::write(&outside, b"not the cache's").expect("write");
    std::os::unix::fs::symlink(&outside, cache.join("link")).expect("symlink");
    std::fs::hard_link(&outside, cache.join("hard")).expect("hard link");
    let owner = |p: &Path| std::fs::symlink_metadata(p).map(|m| (m.uid(), m.gid())).expect("stat");

    let r =
        crate::support::cli::run_cli(&["prepare-cache", "--owner", "65532:65532", &cache.to_string_lossy()]);
    let ctx: [&dyn crate::support::Explain; 1] = [&r];
    assert!(r.success(), "{}", explain_all(&ctx));
    for p in ["", "blobs", "blobs/sha256/ab", "blobs/sha256/ab/abcd", "link"] {
        assert_eq!(owner(&cache.join(p)), (65532, 65532), "{p} is the server's now");
    }
    assert_eq!(owner(&outside), (0, 0), "a symbolic link is not followed out of the cache");
    assert!(r.stderr.contains("hard") && r.stderr.contains("other hard links"), "{}", explain_all(&ctx));
    assert!(r.stdout.contains("6 entries given to 65532:65532"), "{}", explain_all(&ctx));

    let again =
        crate::support::cli::run_cli(&["prepare-cache", "--owner", "65532:65532", &cache.to_string_lossy()]);
    assert!(
        again.success() && again.stdout.contains("0 entries"),
        "{}",
        crate::support::Explain::explain(&again)
    );
    let fresh = work.path().join("new/cache");
    let made =
        crate::support::cli::run_cli(&["prepare-cache", "--owner", "65532:65532", &fresh.to_string_lossy()]);
    assert!(
        made.success() && owner(&fresh) == (65532, 65532),
        "a missing directory is created and given away"
    );
    let bad =
        crate::support::cli::run_cli(&["prepare-cache", "--owner", "nonroot", &fresh.to_string_lossy()]);
    assert!(!bad.success() && bad.stderr.contains("--owner"), "{}", crate::support::Explain::explain(&bad));
}
