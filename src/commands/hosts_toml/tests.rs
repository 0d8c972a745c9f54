use super::*;
use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: HostsTomlArgs,
}

fn args(a: &[&str]) -> HostsTomlArgs {
    Cli::try_parse_from(std::iter::once("hosts-toml").chain(a.iter().copied()))
        .unwrap_or_else(|e| panic!("{a:?}: {e}"))
        .args
}

/// A plan for a node whose root is an empty temporary directory (no containerd config).
fn plan_in(root: &Path, a: &[&str]) -> Plan {
    let mut v = a.to_vec();
    let r = root.to_str().unwrap();
    v.extend(["--root", r]);
    plan(&args(&v)).unwrap()
}

fn file<'a>(p: &'a Plan, path: &str) -> &'a str {
    &p.files.iter().find(|(f, _)| f == Path::new(path)).unwrap_or_else(|| panic!("no {path} in {p:?}")).1
}

fn notes(p: &Plan) -> String {
    p.notes.join("\n")
}

#[test]
fn mirror_urls() {
    let m = Mirror::parse("http://127.0.0.1:31080").unwrap();
    assert_eq!((m.url(), m.authority.as_str()), ("http://127.0.0.1:31080".into(), "127.0.0.1:31080"));
    assert_eq!(Mirror::parse("https://Mirror.Example:8443/").unwrap().url(), "https://mirror.example:8443");
    assert_eq!(Mirror::parse("https://mirror.example:443").unwrap().authority, "mirror.example");
    assert_eq!(Mirror::parse("http://[fd00::1]:31080").unwrap().authority, "[fd00::1]:31080");
    for bad in [
        "127.0.0.1:31080",
        "localhost:31080",
        "ftp://x:1",
        "http://",
        "http://u:p@x:1",
        "http://x:1/v2",
        "http://x:1/?a=b",
        "http://x:99999",
    ] {
        let e = Mirror::parse(bad).unwrap_err().to_string();
        assert!(e.starts_with("--mirror:"), "{bad}: {e}");
    }
}

#[test]
fn registries_and_aliases() {
    let r = Registry::parse("10.0.0.5:5000").unwrap();
    assert!(!r.fits_in_path());
    assert_eq!(r.alias(), "10-0-0-5-5000.invalid");
    assert_eq!(r.origin(), "https://10.0.0.5:5000");
    let h = Registry::parse("http://10.0.0.5:5000/").unwrap();
    assert_eq!(h.origin(), "http://10.0.0.5:5000");
    assert_eq!(Registry::parse("docker.io").unwrap().origin(), "https://registry-1.docker.io");
    assert!(Registry::parse("quay.io").unwrap().fits_in_path());
    assert_eq!(Registry::parse("[fd00::1]:5000").unwrap().alias(), "fd00-1-5000.invalid");
    // The alias is a registry host the mirror accepts, in a path too.
    for r in ["10.0.0.5:5000", "[fd00::1]:5000", "localhost:5000"] {
        let alias = Registry::parse(r).unwrap().alias();
        RegistryHost::parse(&alias).unwrap();
        let p = ociregistry::oci::V2Path::parse(&format!("/v2/{alias}/team/app/manifests/v1")).unwrap();
        let ociregistry::oci::V2Path::Manifest { name, .. } = p else { panic!("{p:?}") };
        assert_eq!(name.host.map(|h| h.to_string()), Some(alias));
        assert_eq!(name.repo.to_string(), "team/app");
    }
    for bad in ["a b", "quay.io/org", "http://", "x.io:0"] {
        let e = Registry::parse(bad).unwrap_err().to_string();
        assert!(e.starts_with("--registry:"), "{bad}: {e}");
    }
    // Duplicates (also by case) collapse.
    assert_eq!(registries(&["Quay.io".into(), "quay.io".into()]).unwrap().len(), 1);
}

#[test]
fn containerd_default_and_per_registry_files() {
    let root = tempfile::tempdir().unwrap();
    let p = plan_in(root.path(), &["--mirror", "http://127.0.0.1:31080", "--registry", "docker.io,quay.io"]);
    assert_eq!(p.files.len(), 3);
    let d = file(&p, "/etc/containerd/certs.d/_default/hosts.toml");
    assert!(d.starts_with(MARKER), "{d}");
    let t: toml::Table = d.parse().unwrap();
    assert!(t.get("server").is_none(), "_default falls back to each registry itself:\n{d}");
    let host = &t["host"]["http://127.0.0.1:31080"];
    assert_eq!(host["capabilities"].as_array().unwrap().len(), 2);
    assert_eq!(host["capabilities"][0].as_str(), Some("pull"));
    assert_eq!(host["capabilities"][1].as_str(), Some("resolve"));
    assert!(
        host.get("override_path").is_none() && host.get("skip_verify").is_none() && host.get("ca").is_none()
    );
    let hub: toml::Table = file(&p, "/etc/containerd/certs.d/docker.io/hosts.toml").parse().unwrap();
    assert_eq!(hub["server"].as_str(), Some("https://registry-1.docker.io"));
    let quay: toml::Table = file(&p, "/etc/containerd/certs.d/quay.io/hosts.toml").parse().unwrap();
    assert_eq!(quay["server"].as_str(), Some("https://quay.io"));
    assert!(quay["host"].get("http://127.0.0.1:31080").is_some());
    let n = notes(&p);
    assert!(n.contains(CRI_V2_KEY) && n.contains(CRI_V3_KEY), "{n}");
    assert!(n.contains("containerd#12636") && n.contains("use_local_image_pull = true"), "{n}");
    assert!(n.contains("spegel#1272"), "{n}");
}

#[test]
fn containerd_tls_and_no_fallback() {
    let root = tempfile::tempdir().unwrap();
    let p = plan_in(
        root.path(),
        &[
            "--mirror",
            "https://mirror.example:8443",
            "--ca",
            "/etc/ssl/mirror ca.pem",
            "--registry",
            "http://10.0.0.5:5000",
        ],
    );
    let t: toml::Table = file(&p, "/etc/containerd/certs.d/_default/hosts.toml").parse().unwrap();
    assert_eq!(t["host"]["https://mirror.example:8443"]["ca"].as_str(), Some("/etc/ssl/mirror ca.pem"));
    let r: toml::Table = file(&p, "/etc/containerd/certs.d/10.0.0.5:5000/hosts.toml").parse().unwrap();
    assert_eq!(r["server"].as_str(), Some("http://10.0.0.5:5000"));
    assert!(notes(&p).contains("does not exist"), "the missing CA is pointed out");

    let p = plan_in(root.path(), &["--mirror", "https://m.example", "--insecure", "--no-fallback"]);
    let t: toml::Table = file(&p, "/etc/containerd/certs.d/_default/hosts.toml").parse().unwrap();
    assert_eq!(t["server"].as_str(), Some("https://m.example"));
    assert_eq!(t["skip_verify"].as_bool(), Some(true));
    assert_eq!(t["capabilities"].as_array().map(Vec::len), Some(2));
    assert_eq!(t["host"].as_table().map(|h| h.len()), Some(0), "no fallback: the mirror is the only host");
}

#[test]
fn containerd_config_detection() {
    let root = tempfile::tempdir().unwrap();
    let cfg = root.path().join("etc/containerd/config.toml");
    std::fs::create_dir_all(cfg.parent().unwrap()).unwrap();
    let m = ["--mirror", "http://127.0.0.1:31080"];

    // containerd 1.x, version 2, config_path set elsewhere: the files go there.
    std::fs::write(
        &cfg,
        "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/ctr/hosts\"\n",
    )
    .unwrap();
    let p = plan_in(root.path(), &m);
    assert_eq!(p.files[0].0, Path::new("/etc/ctr/hosts/_default/hosts.toml"));
    let n = notes(&p);
    assert!(n.contains("version 2") && n.contains("config_path = '/etc/ctr/hosts'"), "{n}");
    assert!(n.contains("containerd 2.1 or later"), "{n}");

    // version 2 without config_path: the key to add, for this version only.
    std::fs::write(&cfg, "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".cni]\n  bin_dir = \"/x\"\n")
        .unwrap();
    let n = notes(&plan_in(root.path(), &m));
    assert!(n.contains("config_path is not set") && n.contains(CRI_V2_KEY) && !n.contains(CRI_V3_KEY), "{n}");

    // containerd 2.2.0's default: a list, and no use_local_image_pull.
    std::fs::write(
        &cfg,
        "version = 3\n[plugins]\n  [plugins.'io.containerd.cri.v1.images']\n    \
         [plugins.'io.containerd.cri.v1.images'.registry]\n      \
         config_path = '/etc/containerd/certs.d:/etc/docker/certs.d'\n",
    )
    .unwrap();
    let p = plan_in(root.path(), &m);
    assert_eq!(p.files[0].0, Path::new("/etc/containerd/certs.d/_default/hosts.toml"));
    let n = notes(&p);
    assert!(n.contains("version 3") && n.contains("containerd#12636") && n.contains("is a list"), "{n}");
    assert!(n.contains("use_local_image_pull is not set to true") && n.contains("spegel#1272"), "{n}");

    // Both traps avoided, but the deprecated inline mirrors are still there.
    std::fs::write(
        &cfg,
        "version = 3\n[plugins.'io.containerd.cri.v1.images']\n  use_local_image_pull = true\n  \
         [plugins.'io.containerd.cri.v1.images'.registry]\n    config_path = '/etc/containerd/certs.d'\n    \
         [plugins.'io.containerd.cri.v1.images'.registry.mirrors.'docker.io']\n      endpoint = ['https://x']\n",
    )
    .unwrap();
    let n = notes(&plan_in(root.path(), &m));
    assert!(n.contains("use_local_image_pull = true: CRI pulls take the local path"), "{n}");
    assert!(n.contains("containerd reads these files") && n.contains("registry.mirrors"), "{n}");
    assert!(!n.contains("is a list"), "{n}");

    // --hosts-dir elsewhere than config_path is called out.
    let n = notes(&plan_in(root.path(), &["--mirror", "http://m:1", "--hosts-dir", "/opt/certs.d"]));
    assert!(n.contains("containerd will not read them there"), "{n}");

    // Broken TOML is an error naming the flag.
    std::fs::write(&cfg, "version = [\n").unwrap();
    let mut v = m.to_vec();
    let r = root.path().to_str().unwrap();
    v.extend(["--root", r]);
    let e = format!("{:#}", plan(&args(&v)).unwrap_err());
    assert!(e.contains("--containerd-config") && e.contains("not valid TOML"), "{e}");
    let e = format!(
        "{:#}",
        plan(&args(&["--mirror", "http://m:1", "--containerd-config", "/nonexistent/c.toml"])).unwrap_err()
    );
    assert!(e.contains("--containerd-config"), "{e}");
}

#[derive(serde::Deserialize, Debug)]
struct K3s {
    mirrors: std::collections::BTreeMap<String, K3sMirror>,
    #[serde(default)]
    configs: std::collections::BTreeMap<String, K3sConfig>,
}
#[derive(serde::Deserialize, Debug)]
struct K3sMirror {
    endpoint: Vec<String>,
}
#[derive(serde::Deserialize, Debug)]
struct K3sConfig {
    tls: K3sTls,
}
#[derive(serde::Deserialize, Debug)]
struct K3sTls {
    ca_file: Option<String>,
    insecure_skip_verify: Option<bool>,
}

#[test]
fn k3s_and_rke2_registries_yaml() {
    let root = tempfile::tempdir().unwrap();
    let p = plan_in(
        root.path(),
        &[
            "--format",
            "k3s",
            "--mirror",
            "https://m.example:8443",
            "--ca",
            "/etc/ca.pem",
            "--registry",
            "http://10.0.0.5:5000",
        ],
    );
    let y: K3s = serde_saphyr::from_str(file(&p, "/etc/rancher/k3s/registries.yaml")).unwrap();
    assert_eq!(y.mirrors["*"].endpoint, ["https://m.example:8443"]);
    assert_eq!(y.mirrors["10.0.0.5:5000"].endpoint, ["https://m.example:8443", "http://10.0.0.5:5000"]);
    assert_eq!(y.configs["m.example:8443"].tls.ca_file.as_deref(), Some("/etc/ca.pem"));
    assert_eq!(y.configs["m.example:8443"].tls.insecure_skip_verify, None);
    assert!(notes(&p).contains("restart k3s"));

    let p = plan_in(root.path(), &["--format", "rke2", "--mirror", "http://10.0.0.2:31080", "--no-fallback"]);
    let text = file(&p, "/etc/rancher/rke2/registries.yaml");
    let y: K3s = serde_saphyr::from_str(text).unwrap();
    assert_eq!(y.mirrors.len(), 1);
    assert!(y.configs.is_empty(), "a plain-HTTP mirror needs no TLS config:\n{text}");
    let n = notes(&p);
    assert!(n.contains("rke2-server") && n.contains("--disable-default-registry-endpoint"), "{n}");
}

#[derive(serde::Deserialize, Debug)]
struct Crio {
    registry: Vec<CrioRegistry>,
}
#[derive(serde::Deserialize, Debug)]
struct CrioRegistry {
    prefix: String,
    location: String,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    mirror: Vec<CrioMirror>,
}
#[derive(serde::Deserialize, Debug)]
struct CrioMirror {
    location: String,
    #[serde(default)]
    insecure: bool,
}

#[test]
fn crio_drop_in_with_port_aliases() {
    let root = tempfile::tempdir().unwrap();
    let p = plan_in(
        root.path(),
        &[
            "--format",
            "crio",
            "--mirror",
            "http://10.0.0.2:31080",
            "--registry",
            "docker.io,http://10.0.0.5:5000",
        ],
    );
    let c: Crio = toml::from_str(file(&p, CRIO_DROP_IN)).unwrap();
    assert_eq!(c.registry.len(), 2);
    let hub = &c.registry[0];
    assert_eq!((hub.prefix.as_str(), hub.location.as_str(), hub.insecure), ("docker.io", "docker.io", false));
    assert_eq!(hub.mirror.len(), 1);
    assert_eq!(hub.mirror[0].location, "10.0.0.2:31080/docker.io");
    assert!(hub.mirror[0].insecure, "a plain-HTTP mirror is insecure to containers/image");
    let own = &c.registry[1];
    assert_eq!(
        (own.prefix.as_str(), own.location.as_str(), own.insecure),
        ("10.0.0.5:5000", "10.0.0.5:5000", true)
    );
    assert_eq!(own.mirror[0].location, "10.0.0.2:31080/10-0-0-5-5000.invalid");
    let n = notes(&p);
    assert!(
        n.contains("registries:\n  - name: 10-0-0-5-5000.invalid\n    endpoint: http://10.0.0.5:5000"),
        "the mirror's side of the alias is printed:\n{n}"
    );
    // The printed entry is YAML the mirror's config reads.
    let note = p.notes.iter().find(|n| n.contains("registries:\n")).unwrap();
    let yaml = &note[note.find("registries:\n").unwrap()..];
    let v: serde_json::Value = serde_saphyr::from_str(yaml).unwrap();
    assert_eq!(v["registries"][0]["name"], "10-0-0-5-5000.invalid");

    // Default registries; no fallback puts the mirror in place of the registry.
    let p = plan_in(root.path(), &["--format", "crio", "--mirror", "https://m.example", "--no-fallback"]);
    let c: Crio = toml::from_str(file(&p, CRIO_DROP_IN)).unwrap();
    let prefixes: Vec<&str> = c.registry.iter().map(|r| r.prefix.as_str()).collect();
    assert_eq!(prefixes, CRIO_DEFAULT_REGISTRIES);
    assert!(c.registry.iter().all(|r| r.mirror.is_empty() && !r.insecure));
    assert_eq!(c.registry[0].location, "m.example/docker.io");
}

#[test]
fn bad_flags_are_named() {
    let e = Cli::try_parse_from(["x"]).err().unwrap().to_string();
    assert!(e.contains("--mirror"), "{e}");
    let e =
        Cli::try_parse_from(["x", "--mirror", "http://m:1", "--format", "docker"]).err().unwrap().to_string();
    assert!(e.contains("--format") && e.contains("containerd"), "{e}");
    let e = Cli::try_parse_from(["x", "--mirror", "https://m:1", "--ca", "/a", "--insecure"])
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("--ca") && e.contains("--insecure"), "{e}");
    assert!(Cli::try_parse_from(["x", "--remove"]).is_ok(), "--remove needs no --mirror");
    let e = format!("{:#}", plan(&args(&["--mirror", "http://m:1", "--ca", "/ca.pem"])).unwrap_err());
    assert!(e.starts_with("--ca:"), "{e}");
    let e = format!("{:#}", plan(&args(&["--mirror", "https://m:1", "--ca", "ca.pem"])).unwrap_err());
    assert!(e.starts_with("--ca:") && e.contains("absolute"), "{e}");
    let e = format!("{:#}", plan(&args(&["--mirror", "http://m:1", "--registry", "no/such"])).unwrap_err());
    assert!(e.starts_with("--registry:"), "{e}");
}

#[test]
fn toml_strings_escape() {
    let s = "a\"b\\c\nd\u{1}";
    let t: toml::Table = format!("k = {}", toml_string(s)).parse().unwrap();
    assert_eq!(t["k"].as_str(), Some(s));
}

#[test]
fn write_keeps_backup_once_and_remove_restores_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d/hosts.toml");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let original = b"server = \"https://theirs\"\r\n# no newline at the end \xff".to_vec();
    std::fs::write(&path, &original).unwrap();
    let ours = format!("{MARKER}\nserver = \"x\"\n");
    let backup = backup_path(&path);
    assert_eq!(write_file(&path, &ours).unwrap(), Wrote::Replaced { backup: backup.clone() });
    assert_eq!(std::fs::read(&backup).unwrap(), original);
    assert_eq!(write_file(&path, &ours).unwrap(), Wrote::Unchanged);
    assert_eq!(write_file(&path, &format!("{ours}# more\n")).unwrap(), Wrote::Updated);
    assert_eq!(std::fs::read(&backup).unwrap(), original, "the backup is made once");
    assert_eq!(remove_file(&path).unwrap(), Removal::Restored);
    assert_eq!(std::fs::read(&path).unwrap(), original);
    assert!(!backup.exists());
    assert_eq!(remove_file(&path).unwrap(), Removal::NotOurs);

    // A new file is removed; no temporary file is left behind.
    let fresh = dir.path().join("e/hosts.toml");
    assert_eq!(write_file(&fresh, &ours).unwrap(), Wrote::Created);
    assert_eq!(remove_file(&fresh).unwrap(), Removal::Deleted);
    assert_eq!(remove_file(&fresh).unwrap(), Removal::Absent);
    assert_eq!(std::fs::read_dir(dir.path().join("e")).unwrap().count(), 0);

    // Someone else's file over an older backup: refused, nothing touched.
    std::fs::write(&path, "theirs 2").unwrap();
    std::fs::write(&backup, "theirs 1").unwrap();
    let e = write_file(&path, &ours).unwrap_err().to_string();
    assert!(e.contains("move one of them away"), "{e}");
    assert_eq!(std::fs::read(&path).unwrap(), b"theirs 2");
}

#[test]
fn under_root_keeps_paths_inside() {
    assert_eq!(under_root(Path::new("/mnt/n"), Path::new("/etc/x")), Path::new("/mnt/n/etc/x"));
    assert_eq!(under_root(Path::new("/"), Path::new("/etc/x")), Path::new("/etc/x"));
    assert_eq!(under_root(Path::new("/mnt/n"), Path::new("/../etc/x")), Path::new("/mnt/n/etc/x"));
}
