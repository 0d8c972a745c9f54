//! `ociregistry hosts-toml`: the node-side configuration it produces works with
//! the real clients (containerd 1.6's `ctr`, skopeo reading a CRI-O drop-in),
//! parses as the runtimes parse it, and `--write` then `--remove` leaves a node
//! exactly as it was.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::cli::{CliRun, run_cli};
use crate::support::containerd::Containerd;
use crate::support::image::{self, Format, ImageSpec};
use crate::support::mirror::{Mirror, RegistryConfig};
use crate::support::proxy::Proxy;
use crate::support::skopeo::{Skopeo, read_dir_image};
use crate::support::upstream::Upstream;
use crate::support::{Explain, files_under, logs, run_ok, tempdir};

fn hosts_toml<S: AsRef<str>>(args: &[S]) -> CliRun {
    let mut all = vec!["hosts-toml".to_owned()];
    all.extend(args.iter().map(|a| a.as_ref().to_owned()));
    run_cli(&all)
}

fn path_arg(p: &Path) -> String {
    p.display().to_string()
}

/// Waits for the access line of a manifest request for `repo:tag` with status
/// 200 and the given field (`ns=up.test`, or an in-path `path=`), logged after `mark`.
#[track_caller]
fn assert_manifest_served(mirror: &Mirror, mark: usize, key: &str, value: &str, what: &str) {
    let found = crate::support::wait_until(Duration::from_secs(5), || {
        mirror.log_since(mark).lines().any(|l| {
            l.contains("/manifests/") && logs::has_field(l, "status", "200") && logs::has_field(l, key, value)
        })
    });
    assert!(
        found,
        "{what}: the mirror's access log shows no manifest request with {key}={value} and status 200:\n{}",
        mirror.log_since(mark)
    );
}

/// hosts.toml files written by `hosts-toml --write` into a node root, used by
/// the real containerd 1.6 (`ctr image pull --hosts-dir`): a registry's own file,
/// `_default` for every other registry, and the no-fallback form (the mirror as
/// `server`). Each pull shows in the mirror's access log with containerd's `ns=`.
#[test]
fn ctr_pulls_through_the_hosts_toml_it_writes() {
    let up = Upstream::plain();
    let work = tempdir("node-config");
    let seeded = image::seed(
        &up,
        &work.path().join("layout"),
        &ImageSpec::single(961, &[3000, 60_000]),
        "team/app",
        "v1",
        Format::Oci,
    );
    let proxy = Proxy::start(&up);
    let mut builder = Mirror::builder().extra_yaml("allowUnconfigured: false");
    for name in ["up.test", "other.test", "sealed.test"] {
        builder = builder.registry(RegistryConfig::via_proxy(name, &proxy, &up));
    }
    let mirror = builder.start();
    let ctx: [&dyn Explain; 3] = [&mirror, &proxy, &up];

    // A node root with no containerd config: the default hosts directory under it.
    let node = work.path().join("node");
    let out = hosts_toml(&[
        "--mirror",
        &mirror.url(),
        "--registry",
        "up.test",
        "--write",
        "--root",
        &path_arg(&node),
    ])
    .ok(&ctx);
    let hosts_dir = node.join("etc/containerd/certs.d");
    for f in ["_default/hosts.toml", "up.test/hosts.toml"] {
        assert!(out.stdout.contains(&format!("wrote {}", hosts_dir.join(f).display())), "{}", out.explain());
    }
    assert!(out.stdout.contains("config_path"), "it says which key points at the directory:\n{}", out.stdout);

    let ctrd = Containerd::start(&mirror.url());
    let layers = seeded.info.manifests[0].layers.len();
    let pull = |reference: &str, dir: &Path, ns: &str, what: &str| {
        let mark = mirror.log_mark();
        ctrd.ctr(["image", "pull", "--hosts-dir", &path_arg(dir), reference], &ctx);
        ctrd.assert_unpacked(reference, layers, &ctx);
        assert_eq!(ctrd.image_digest(reference, &ctx), seeded.info.top.digest, "{what}");
        assert_manifest_served(&mirror, mark, "ns", ns, what);
    };
    pull("up.test/team/app:v1", &hosts_dir, "up.test", "up.test/hosts.toml");
    pull("other.test/team/app:v1", &hosts_dir, "other.test", "_default/hosts.toml");

    let sealed = work.path().join("sealed");
    hosts_toml(&["--mirror", &mirror.url(), "--no-fallback", "--write", "--root", &path_arg(&sealed)])
        .ok(&ctx);
    let sealed_dir = sealed.join("etc/containerd/certs.d");
    let text =
        std::fs::read_to_string(sealed_dir.join("_default/hosts.toml")).expect("reading _default/hosts.toml");
    let t: toml::Table = text.parse().expect("hosts.toml is TOML");
    assert_eq!(
        t["server"].as_str(),
        Some(mirror.url().as_str()),
        "no fallback: the mirror is the server\n{text}"
    );
    pull("sealed.test/team/app:v1", &sealed_dir, "sealed.test", "--no-fallback _default/hosts.toml");
}

/// The CRI-O drop-in, read by containers/image (skopeo with
/// `--registries-conf`): a registry named `127.0.0.1:PORT` is mirrored
/// under the alias the command prints, and the mirror, given the printed
/// `registries:` entry, serves it in-path.
#[test]
fn skopeo_pulls_a_host_port_registry_through_the_crio_drop_in() {
    let up = Upstream::plain();
    let work = tempdir("node-config");
    let seeded = image::seed(
        &up,
        &work.path().join("layout"),
        &ImageSpec::single(962, &[3000, 40_000]),
        "team/app",
        "v1",
        Format::Oci,
    );
    let proxy = Proxy::start(&up);
    let alias = format!("127-0-0-1-{}.invalid", proxy.port());
    let mirror = Mirror::builder()
        .registry(RegistryConfig::new(&alias).endpoint(&proxy.url()))
        .extra_yaml("allowUnconfigured: false")
        .start();
    let ctx: [&dyn Explain; 3] = [&mirror, &proxy, &up];
    let node = work.path().join("node");
    let out = hosts_toml(&[
        "--format",
        "crio",
        "--mirror",
        &mirror.url(),
        "--registry",
        &format!("http://{}", proxy.host_port()),
        "--write",
        "--root",
        &path_arg(&node),
    ])
    .ok(&ctx);
    assert!(
        out.stdout.contains(&format!("  - name: {alias}\n    endpoint: {}\n", proxy.url())),
        "the mirror's registries: entry for the alias is printed:\n{}",
        out.stdout
    );
    let drop_in = node.join("etc/containers/registries.conf.d/50-ociregistry.conf");
    let conf: toml::Table =
        std::fs::read_to_string(&drop_in).expect("reading the drop-in").parse().expect("the drop-in is TOML");
    let entry = &conf["registry"][0];
    assert_eq!(entry["prefix"].as_str(), Some(proxy.host_port().as_str()));
    assert_eq!(
        entry["mirror"][0]["location"].as_str(),
        Some(format!("{}/{alias}", mirror.host_port()).as_str())
    );

    let mark = mirror.log_mark();
    let dest = work.path().join("pulled");
    // skopeo 1.9 ignores CONTAINERS_REGISTRIES_CONF; its (hidden) --registries-conf reads the file.
    let mut cmd = Skopeo::new().command(&[
        "--registries-conf".to_owned(),
        drop_in.display().to_string(),
        "copy".to_owned(),
        "--all".to_owned(),
        "--preserve-digests".to_owned(),
        format!("docker://{}/team/app:v1", proxy.host_port()),
        format!("dir:{}", dest.display()),
    ]);
    run_ok(&mut cmd, &ctx);
    assert_eq!(read_dir_image(&dest).top.digest, seeded.info.top.digest);
    assert_manifest_served(
        &mirror,
        mark,
        "path",
        &format!("/v2/{alias}/team/app/manifests/v1"),
        "the drop-in's mirror",
    );
}

/// What runtimes parse: the printed k3s file is YAML (serde_saphyr) with the
/// mirror for every registry and TLS for the mirror's host; the printed CRI-O
/// drop-in is TOML with the in-path mirror locations. Printed, the whole output
/// (notes are comments) is the file.
#[test]
fn k3s_yaml_and_crio_toml_have_the_runtimes_structure() {
    #[derive(serde::Deserialize, Debug)]
    struct Registries {
        mirrors: BTreeMap<String, Endpoints>,
        #[serde(default)]
        configs: BTreeMap<String, serde_json::Value>,
    }
    #[derive(serde::Deserialize, Debug)]
    struct Endpoints {
        endpoint: Vec<String>,
    }
    let out = hosts_toml(&[
        "--format",
        "k3s",
        "--mirror",
        "https://mirror.example:8443",
        "--insecure",
        "--registry",
        "docker.io,http://10.0.0.5:5000",
    ])
    .ok(&[]);
    let y: Registries = serde_saphyr::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("the k3s output is not registries.yaml ({e}):\n{}", out.stdout));
    assert_eq!(y.mirrors["*"].endpoint, ["https://mirror.example:8443"]);
    assert_eq!(y.mirrors["docker.io"].endpoint, ["https://mirror.example:8443"]);
    assert_eq!(y.mirrors["10.0.0.5:5000"].endpoint, ["https://mirror.example:8443", "http://10.0.0.5:5000"]);
    assert_eq!(y.configs["mirror.example:8443"]["tls"]["insecure_skip_verify"], serde_json::json!(true));
    assert!(out.stdout.contains("/etc/rancher/k3s/registries.yaml") && out.stdout.contains("restart k3s"));

    let out = hosts_toml(&[
        "--format",
        "crio",
        "--mirror",
        "http://10.0.0.2:31080",
        "--registry",
        "quay.io,10.0.0.5:5000",
    ])
    .ok(&[]);
    let c: toml::Table =
        out.stdout.parse().unwrap_or_else(|e| panic!("the CRI-O output is not TOML ({e}):\n{}", out.stdout));
    let regs = c["registry"].as_array().expect("[[registry]] entries");
    let summary: Vec<(String, String, String, bool)> = regs
        .iter()
        .map(|r| {
            let m = &r["mirror"][0];
            (
                r["prefix"].as_str().unwrap_or_default().to_owned(),
                r["location"].as_str().unwrap_or_default().to_owned(),
                m["location"].as_str().unwrap_or_default().to_owned(),
                m["insecure"].as_bool().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("quay.io".into(), "quay.io".into(), "10.0.0.2:31080/quay.io".into(), true),
            (
                "10.0.0.5:5000".into(),
                "10.0.0.5:5000".into(),
                "10.0.0.2:31080/10-0-0-5-5000.invalid".into(),
                true
            ),
        ]
    );
}

/// Every file under `root` with its bytes.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    files_under(root).into_iter().map(|p| (p.clone(), std::fs::read(&p).expect("reading a file"))).collect()
}

/// `--write` keeps files that were there as `<file>.ociregistry-backup` (once),
/// and `--remove` puts them back byte for byte and removes what it added, for
/// every format; a second `--write` changes nothing.
#[test]
fn write_then_remove_restores_the_node_byte_for_byte() {
    let node = tempdir("node-config");
    let root = node.path();
    let put = |rel: &str, bytes: &[u8]| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().expect("a parent")).expect("creating a directory");
        std::fs::write(&p, bytes).expect("writing a file");
    };
    // What an operator had: odd bytes on purpose (CRLF, no final newline, not UTF-8).
    put("etc/containerd/certs.d/_default/hosts.toml", b"server = \"https://old\"\r\n[host.\"http://x\"]\xff");
    put("etc/containerd/certs.d/docker.io/hosts.toml", b"server = \"https://registry-1.docker.io\"");
    put("etc/containerd/certs.d/ghcr.io/hosts.toml", b"# someone else's\n");
    put("etc/rancher/k3s/registries.yaml", b"mirrors:\n  docker.io:\n    endpoint: [\"https://old\"]\n");
    put("etc/containers/registries.conf.d/50-ociregistry.conf", b"[[registry]]\nprefix = \"x.io\"\n");
    put("etc/containerd/config.toml", b"version = 2\n");
    let before = snapshot(root);

    let r = path_arg(root);
    let formats: [&[&str]; 4] = [
        &["--format", "containerd", "--registry", "docker.io,quay.io"],
        &["--format", "k3s"],
        &["--format", "rke2"],
        &["--format", "crio"],
    ];
    for f in formats {
        let mut args: Vec<&str> = vec!["--mirror", "http://10.0.0.2:31080", "--write", "--root", &r];
        args.extend_from_slice(f);
        let first = hosts_toml(&args).ok(&[]);
        assert!(first.stdout.contains("wrote"), "{}", first.explain());
        let again = hosts_toml(&args).ok(&[]);
        assert!(!again.stdout.contains("wrote") && again.stdout.contains("unchanged"), "{}", again.explain());
    }
    let written = snapshot(root);
    for (rel, old) in [
        (
            "etc/containerd/certs.d/_default/hosts.toml",
            &before[&root.join("etc/containerd/certs.d/_default/hosts.toml")],
        ),
        ("etc/rancher/k3s/registries.yaml", &before[&root.join("etc/rancher/k3s/registries.yaml")]),
    ] {
        let p = root.join(rel);
        assert!(written[&p].starts_with(b"# Written by `ociregistry hosts-toml`"), "{rel} is ours now");
        assert_eq!(
            &written[&PathBuf::from(format!("{}.ociregistry-backup", p.display()))],
            old,
            "{rel}'s backup"
        );
    }
    assert!(written.contains_key(&root.join("etc/containerd/certs.d/quay.io/hosts.toml")));
    assert!(written.contains_key(&root.join("etc/rancher/rke2/registries.yaml")));
    assert_eq!(
        written[&root.join("etc/containerd/certs.d/ghcr.io/hosts.toml")],
        b"# someone else's\n",
        "a registry not asked for is left alone"
    );

    for f in ["containerd", "k3s", "rke2", "crio"] {
        let out = hosts_toml(&["--remove", "--format", f, "--root", &r]).ok(&[]);
        assert!(out.stdout.contains("restored") || out.stdout.contains("removed"), "{}", out.explain());
    }
    let after = snapshot(root);
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>(),
        "--remove leaves exactly the files that were there"
    );
    assert!(after == before, "--remove restores every file byte for byte");
    assert!(!root.join("etc/containerd/certs.d/quay.io").exists(), "the directory it created goes too");
    let nothing = hosts_toml(&["--remove", "--root", &r]).ok(&[]);
    assert!(nothing.stdout.contains("nothing to remove"), "{}", nothing.explain());
}

/// Bad input fails before anything is written, with an error naming the flag;
/// so does a `--write` that would lose an operator's file.
#[test]
fn bad_input_names_the_flag() {
    let node = tempdir("node-config");
    let r = path_arg(node.path());
    let cases: [(&[&str], &str); 7] = [
        (&["--write", "--root", &r], "--mirror"),
        (&["--mirror", "127.0.0.1:31080", "--write", "--root", &r], "--mirror"),
        (&["--mirror", "ftp://mirror:21", "--write", "--root", &r], "--mirror"),
        (&["--mirror", "http://mirror:31080/v2/", "--write", "--root", &r], "--mirror"),
        (&["--mirror", "http://mirror:31080", "--format", "docker", "--write", "--root", &r], "--format"),
        (
            &["--mirror", "http://mirror:31080", "--registry", "quay.io/org", "--write", "--root", &r],
            "--registry",
        ),
        (&["--mirror", "https://mirror:8443", "--ca", "ca.pem", "--write", "--root", &r], "--ca"),
    ];
    for (args, flag) in cases {
        let out = hosts_toml(args).fails(&[]);
        assert!(out.stderr.contains(flag), "the error should name {flag}:\n{}", out.explain());
    }
    assert!(files_under(node.path()).is_empty(), "nothing was written");

    // Someone else's file over an older backup: refused before any file is written.
    let hub = node.path().join("etc/containerd/certs.d/docker.io/hosts.toml");
    std::fs::create_dir_all(hub.parent().expect("a parent")).expect("creating certs.d/docker.io");
    std::fs::write(&hub, "theirs, second").expect("writing hosts.toml");
    std::fs::write(format!("{}.ociregistry-backup", hub.display()), "theirs, first")
        .expect("writing the backup");
    let before = snapshot(node.path());
    let out =
        hosts_toml(&["--mirror", "http://mirror:31080", "--registry", "docker.io", "--write", "--root", &r])
            .fails(&[]);
    assert!(out.stderr.contains("move one of them away"), "{}", out.explain());
    assert!(snapshot(node.path()) == before, "nothing was written, _default/hosts.toml included");
    let help = hosts_toml(&["--help"]).ok(&[]);
    for needle in ["Examples:", "--write", "--remove", "--format k3s", "--no-fallback", "31080"] {
        assert!(help.stdout.contains(needle), "--help should teach {needle}:\n{}", help.stdout);
    }
}

/// `--write --stay-running` (the chart's DaemonSet container) writes, stays up,
/// and on SIGTERM exits 0 leaving the files in place; without --write or
/// --remove the flag is refused.
#[test]
fn stay_running_writes_then_waits_for_sigterm() {
    let node = tempdir("node-config");
    let r = path_arg(node.path());
    let log = node.path().join("hosts-toml.log");
    let mut child = crate::support::cli::spawn_cli(
        &["hosts-toml", "--mirror", "http://127.0.0.1:31080", "--write", "--stay-running", "--root", &r],
        &log,
    );
    let file = node.path().join("etc/containerd/certs.d/_default/hosts.toml");
    let written = crate::support::wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("wrote"))
    });
    assert!(
        written && file.exists(),
        "the file is written at once:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(child.try_wait().expect("polling the child").is_none(), "it stays running after writing");
    let pid = child.id().to_string();
    run_ok(std::process::Command::new("kill").args(["-TERM", &pid]), &[]);
    let status = child.wait().expect("waiting for the child");
    assert!(status.success(), "SIGTERM ends it cleanly: {status}");
    assert!(file.exists(), "stopping leaves the files as they are");

    let alone = hosts_toml(&["--mirror", "http://127.0.0.1:31080", "--stay-running"]).fails(&[]);
    assert!(
        alone.stderr.contains("--stay-running") && alone.stderr.contains("--write"),
        "{}",
        alone.explain()
    );
}

/// `wait-daemonset` (the chart's uninstall hook, in the server's own image)
/// waits with the service-account token until every scheduled pod is updated
/// and available, saying how far it is; past `--timeout` it fails, saying
/// where the rollout stood.
#[test]
fn wait_daemonset_waits_for_every_pod_then_times_out_honestly() {
    use crate::support::kube::KubeApi;
    let work = tempdir("node-config");
    let token = work.path().join("token");
    std::fs::write(&token, "e2e-service-account-token\n").expect("writing the token");
    let kube = KubeApi::running(&[]);
    kube.set_daemonset("ociregistry", "ociregistry-node-cleanup", 3, 3, 1);
    let log = work.path().join("wait.log");
    let args = |timeout: &str| {
        vec![
            "wait-daemonset".to_owned(),
            "ociregistry-node-cleanup".to_owned(),
            "--namespace".to_owned(),
            "ociregistry".to_owned(),
            "--timeout".to_owned(),
            timeout.to_owned(),
            "--server".to_owned(),
            kube.url(),
            "--token-file".to_owned(),
            path_arg(&token),
        ]
    };
    let mut child = crate::support::cli::spawn_cli(&args("30s"), &log);
    let waiting = crate::support::wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("1 of 3 updated pods available"))
    });
    assert!(
        waiting,
        "it says how far the rollout is:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(child.try_wait().expect("polling").is_none(), "it waits while pods are not available");
    kube.set_daemonset("ociregistry", "ociregistry-node-cleanup", 3, 3, 3);
    let status = crate::support::wait_or_kill(&mut child, Duration::from_secs(15)).expect("it ends");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success() && text.contains("rolled out: 3 pods"), "{status}:\n{text}");
    assert!(
        kube.requests().iter().all(|r| r.had_bearer),
        "the service-account token is sent\n{}",
        kube.explain()
    );

    kube.set_daemonset("ociregistry", "ociregistry-node-cleanup", 3, 2, 2);
    let late = run_cli(&args("1s"));
    assert!(
        !late.success() && late.stderr.contains("did not roll out within 1s: 2 of 3 pods updated"),
        "{}",
        late.explain()
    );
    let bad = run_cli(&["wait-daemonset", "../../api", "--namespace", "x", "--server", &kube.url()]);
    assert!(!bad.success() && bad.stderr.contains("is not a Kubernetes name"), "{}", bad.explain());
}
