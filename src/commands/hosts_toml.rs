//! `ociregistry hosts-toml`: the node-side configuration that sends a
//! container runtime's pulls through the mirror. containerd's `hosts.toml`
//! files (1.x and 2.x), k3s/RKE2's `registries.yaml`, or a CRI-O (and podman)
//! `registries.conf.d` drop-in: printed, or written under a root with any
//! file already there kept aside so `--remove` puts it back.
//!
//! It never restarts anything and never edits containerd's `config.toml`: it
//! reads that file and says which key must point at the hosts directory, and
//! which known containerd 2.x traps apply.
//!
//! The files are written by hand rather than through a serializer: each is a
//! few lines, and the comments in them (what wrote them, what falls back
//! where) are what an operator reads first.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};

use ociregistry::oci::RegistryHost;

/// The first line of every file this command writes: `--write` replaces such a
/// file without keeping a backup, and `--remove` removes only such files.
const MARKER: &str = "# Written by `ociregistry hosts-toml`";
/// Where a file that was there before `--write` is kept.
const BACKUP_SUFFIX: &str = ".ociregistry-backup";
/// containerd's hosts directory when its config names none.
const DEFAULT_HOSTS_DIR: &str = "/etc/containerd/certs.d";
const DEFAULT_CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";
const CRIO_DROP_IN: &str = "/etc/containers/registries.conf.d/50-ociregistry.conf";
/// CRI-O has no "every registry" entry: these are mirrored when no `--registry` is given.
const CRIO_DEFAULT_REGISTRIES: [&str; 4] = ["docker.io", "registry.k8s.io", "quay.io", "ghcr.io"];

const CRI_V2_KEY: &str = r#"[plugins."io.containerd.grpc.v1.cri".registry]"#;
const CRI_V3_KEY: &str = "[plugins.'io.containerd.cri.v1.images'.registry]";
const CRI_V1_KEY: &str = "[plugins.cri.registry]";

const EXAMPLES: &str = "\
Examples:
  # containerd 1.x or 2.x: every registry through the chart's NodePort (prints the files)
  ociregistry hosts-toml --mirror http://127.0.0.1:31080

  # write them, plus files of their own for Docker Hub and quay.io; any file already
  # there is kept as <file>.ociregistry-backup
  sudo ociregistry hosts-toml --mirror http://127.0.0.1:31080 --registry docker.io,quay.io --write

  # undo: remove what --write wrote, put the backups back
  sudo ociregistry hosts-toml --remove

  # an HTTPS mirror signed by a private CA, and never fall back to the internet
  ociregistry hosts-toml --mirror https://mirror.example:8443 \\
      --ca /etc/ssl/mirror-ca.pem --no-fallback

  # k3s (or --format rke2): /etc/rancher/k3s/registries.yaml; the output is the file
  ociregistry hosts-toml --format k3s --mirror http://10.0.0.2:31080 > registries.yaml

  # CRI-O and podman: a registries.conf.d drop-in for the registries named
  sudo ociregistry hosts-toml --format crio --mirror http://10.0.0.2:31080 \\
      --registry docker.io,quay.io,http://10.0.0.5:5000 --write

  # a node image or a mounted node disk: everything under /mnt/node
  ociregistry hosts-toml --mirror http://10.0.0.2:31080 --write --root /mnt/node

Nothing is restarted: the output says what must be.";

/// Which runtime's configuration to produce.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// containerd 1.x and 2.x: <hosts dir>/_default/hosts.toml and one per --registry
    Containerd,
    /// k3s: /etc/rancher/k3s/registries.yaml
    K3s,
    /// RKE2: /etc/rancher/rke2/registries.yaml (the same file as k3s's)
    Rke2,
    /// CRI-O, podman, skopeo, buildah: /etc/containers/registries.conf.d/50-ociregistry.conf
    #[value(alias = "cri-o")]
    Crio,
}

#[derive(Args, Debug)]
#[command(after_long_help = EXAMPLES)]
pub struct HostsTomlArgs {
    /// The mirror as the nodes reach it: scheme://host[:port], such as
    /// http://127.0.0.1:31080 (the Helm chart's NodePort) or https://mirror.example:8443
    #[arg(long, value_name = "URL", required_unless_present = "remove")]
    pub mirror: Option<String>,
    /// containerd (hosts.toml, containerd 1.x and 2.x), k3s or rke2
    /// (registries.yaml), crio (registries.conf.d drop-in)
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = Format::Containerd)]
    pub format: Format,
    /// A registry to configure on its own (repeat it, or separate with commas):
    /// docker.io, quay.io, 10.0.0.5:5000; http://HOST[:PORT] for a plain-HTTP
    /// registry. containerd and k3s send every registry to the mirror without
    /// it; CRI-O mirrors only the registries named [crio default:
    /// docker.io,registry.k8s.io,quay.io,ghcr.io]
    #[arg(long, value_name = "HOST", value_delimiter = ',')]
    pub registry: Vec<String>,
    /// Never fall back to the registry itself when the mirror fails or lacks an
    /// image (air-gapped sites); by default the node tries the registry last
    #[arg(long)]
    pub no_fallback: bool,
    /// The CA certificate (PEM) that signed an https:// mirror's certificate:
    /// its absolute path on the node
    #[arg(long, value_name = "FILE", conflicts_with = "insecure")]
    pub ca: Option<PathBuf>,
    /// Do not verify an https:// mirror's certificate
    #[arg(long)]
    pub insecure: bool,
    /// containerd's config file, read (never changed) to say which key must
    /// point at the hosts directory and which containerd 2.x traps apply
    /// [default: <root>/etc/containerd/config.toml, when it exists]
    #[arg(long, value_name = "FILE")]
    pub containerd_config: Option<PathBuf>,
    /// containerd's hosts directory, a path on the node [default: config_path
    /// in containerd's config, else /etc/containerd/certs.d]
    #[arg(long, value_name = "DIR")]
    pub hosts_dir: Option<PathBuf>,
    /// Write the files instead of printing them: atomically, creating
    /// directories, keeping a file already there as <file>.ociregistry-backup
    #[arg(long, conflicts_with = "remove")]
    pub write: bool,
    /// Undo --write: remove the files it wrote and put the backups back
    #[arg(long)]
    pub remove: bool,
    /// The node's / for --write, --remove and the default containerd config (a
    /// node image being built, a mounted node disk)
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
    /// After --write or --remove, keep running until stopped (SIGTERM or
    /// Ctrl-C), leaving the files as they are: the long-running container of
    /// the Helm chart's node-configuration DaemonSet
    #[arg(long)]
    pub stay_running: bool,
}

/// `http` or `https`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// The mirror's address, checked.
#[derive(Debug, Clone)]
struct Mirror {
    scheme: Scheme,
    /// `host[:port]` (the port only when the URL gave one).
    authority: String,
}

impl Mirror {
    fn parse(s: &str) -> Result<Mirror> {
        let example =
            "give scheme://host[:port], such as http://127.0.0.1:31080 or https://mirror.example:8443";
        if !s.contains("://") {
            bail!("--mirror: '{s}' has no scheme: {example}");
        }
        let url = url::Url::parse(s)
            .map_err(|e| anyhow::anyhow!("--mirror: '{s}' is not a URL ({e}): {example}"))?;
        let scheme = match url.scheme() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            other => bail!("--mirror: the scheme must be http or https, not '{other}': {example}"),
        };
        let Some(host) = url.host_str().filter(|h| !h.is_empty()) else {
            bail!("--mirror: '{s}' names no host: {example}");
        };
        if !url.username().is_empty() || url.password().is_some() {
            bail!(
                "--mirror: '{s}' holds credentials: node configuration files are world-readable; \
                 give the runtime credentials its own way"
            );
        }
        if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
            bail!("--mirror: '{s}' has a path or query: ociregistry serves /v2/ at the root, so {example}");
        }
        let authority = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_owned(),
        };
        Ok(Mirror { scheme, authority })
    }

    /// `scheme://host[:port]`, as containerd and k3s name a host.
    fn url(&self) -> String {
        format!("{}://{}", self.scheme.as_str(), self.authority)
    }
}

/// A registry named with `--registry`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Registry {
    host: RegistryHost,
    /// How the registry itself is reached (for the fallback).
    scheme: Scheme,
}

impl Registry {
    fn parse(s: &str) -> Result<Registry> {
        let t = s.trim();
        let (scheme, rest) = if let Some(r) = t.strip_prefix("http://") {
            (Scheme::Http, r)
        } else if let Some(r) = t.strip_prefix("https://") {
            (Scheme::Https, r)
        } else {
            (Scheme::Https, t)
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let host = RegistryHost::parse(rest).map_err(|e| {
            anyhow::anyhow!(
                "--registry: '{s}' is not a registry host ({e}); give host[:port] such as quay.io or \
                 10.0.0.5:5000, or http://host[:port] for a plain-HTTP registry"
            )
        })?;
        Ok(Registry { host, scheme })
    }

    /// Where the registry itself answers: containerd's `server`, the fallback.
    fn origin(&self) -> String {
        if self.host.as_str() == "docker.io" {
            return "https://registry-1.docker.io".to_owned();
        }
        format!("{}://{}", self.scheme.as_str(), self.host)
    }

    /// containers/image cannot parse a `host:port` (or an IPv6 literal) as a
    /// path component, so `<mirror>/10.0.0.5:5000` is an invalid reference.
    fn fits_in_path(&self) -> bool {
        !self.host.as_str().contains([':', '[', ']'])
    }

    /// The name the mirror knows such a registry by in the in-path form:
    /// `10.0.0.5:5000` is `10-0-0-5-5000.invalid`. `.invalid` never resolves
    /// (RFC 6761), so a mirror not told about the name cannot reach some other
    /// host by it; it reaches the registry through its `registries:` entry.
    fn alias(&self) -> String {
        let mut out = String::new();
        for c in self.host.as_str().chars() {
            if c.is_ascii_alphanumeric() {
                out.push(c);
            } else if !out.ends_with('-') {
                out.push('-');
            }
        }
        format!("{}.invalid", out.trim_matches('-'))
    }

    /// The repository prefix of this registry at the mirror, in-path form.
    fn mirror_path(&self) -> String {
        if self.fits_in_path() { self.host.to_string() } else { self.alias() }
    }
}

/// What the command produces: files (path on the node, contents) and what the
/// operator must do or know.
#[derive(Debug, Default)]
struct Plan {
    files: Vec<(PathBuf, String)>,
    notes: Vec<String>,
}

/// TLS settings for an https:// mirror.
#[derive(Debug, Clone, Default)]
struct Tls {
    ca: Option<String>,
    insecure: bool,
}

pub fn run(args: &HostsTomlArgs) -> Result<()> {
    if args.stay_running && !(args.write || args.remove) {
        bail!("--stay-running keeps a --write or --remove running; give one of them");
    }
    if args.remove {
        remove(args)?;
    } else {
        print_or_write(args)?;
    }
    if args.stay_running {
        wait_for_stop()?;
    }
    Ok(())
}

/// Prints `out` now: with --stay-running the process lives on, so nothing may
/// wait in a buffer.
fn emit(out: &str) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(out.as_bytes()).and_then(|()| stdout.flush()).context("writing to standard output")
}

/// Blocks until SIGTERM or SIGINT: the container stops when its pod does.
fn wait_for_stop() -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the signal handler")?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("listening for SIGTERM")?;
        tokio::select! {
            _ = term.recv() => {}
            r = tokio::signal::ctrl_c() => r.context("listening for SIGINT")?,
        }
        Ok(())
    })
}

fn print_or_write(args: &HostsTomlArgs) -> Result<()> {
    let plan = plan(args)?;
    let mut out = String::new();
    if args.write {
        // Refuse before writing anything, rather than leave half a set.
        for (node_path, _) in &plan.files {
            refuse_to_replace(&under_root(&args.root, node_path))?;
        }
        for (node_path, contents) in &plan.files {
            let path = under_root(&args.root, node_path);
            let line = match write_file(&path, contents)? {
                Wrote::Created => format!("wrote {}", path.display()),
                Wrote::Updated => format!("updated {}", path.display()),
                Wrote::Unchanged => format!("unchanged {}", path.display()),
                Wrote::Replaced { backup } => {
                    format!(
                        "wrote {} (the file that was there is kept as {})",
                        path.display(),
                        backup.display()
                    )
                }
            };
            out.push_str(&line);
            out.push('\n');
        }
        out.push('\n');
        for n in &plan.notes {
            out.push_str(&wrap(n, 100));
            out.push('\n');
        }
    } else {
        // Everything printed is a file or a comment, so with one file the
        // output can be redirected into place as it is.
        for (node_path, contents) in &plan.files {
            out.push_str(&format!("# ==> {} <==\n{contents}\n", node_path.display()));
        }
        out.push_str("# ---- on the node ----\n");
        for n in &plan.notes {
            for line in wrap(n, 100).lines() {
                if line.is_empty() {
                    out.push_str("#\n");
                } else {
                    out.push_str("# ");
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
    }
    emit(&out)
}

/// The files and notes for `args`, reading containerd's config when asked for
/// containerd; nothing is written.
fn plan(args: &HostsTomlArgs) -> Result<Plan> {
    let Some(mirror) = &args.mirror else {
        bail!("--mirror is required: the mirror's URL as the nodes reach it, such as http://127.0.0.1:31080");
    };
    let mirror = Mirror::parse(mirror)?;
    let tls = tls(args, &mirror)?;
    let registries = registries(&args.registry)?;
    let mut plan = match args.format {
        Format::Containerd => containerd_plan(args, &mirror, &tls, &registries)?,
        Format::K3s | Format::Rke2 => k3s_plan(args.format, &mirror, &tls, &registries, args.no_fallback),
        Format::Crio => crio_plan(&mirror, &tls, &registries, args.no_fallback),
    };
    if mirror.scheme == Scheme::Http && args.insecure {
        plan.notes
            .push("--insecure has no effect: the mirror is plain http://, there is no certificate.".into());
    }
    if let Some(ca) = &tls.ca
        && !under_root(&args.root, Path::new(ca)).is_file()
    {
        let under = if args.root == Path::new("/") {
            String::new()
        } else {
            format!(" (under {})", args.root.display())
        };
        plan.notes
            .push(format!("Note: the CA file {ca} does not exist on this node{under} yet: put it there."));
    }
    Ok(plan)
}

fn tls(args: &HostsTomlArgs, mirror: &Mirror) -> Result<Tls> {
    let ca = match &args.ca {
        None => None,
        Some(_) if mirror.scheme == Scheme::Http => {
            bail!("--ca: the mirror is plain http:// ({}); a CA applies to an https:// mirror", mirror.url())
        }
        Some(p) if !p.is_absolute() => bail!(
            "--ca: give the CA file's absolute path on the node, not '{}' (hosts.toml reads a relative \
             path from its own directory)",
            p.display()
        ),
        Some(p) => Some(
            p.to_str()
                .with_context(|| {
                    format!("--ca: '{}' is not UTF-8, which the config files cannot hold", p.display())
                })?
                .to_owned(),
        ),
    };
    Ok(Tls { ca, insecure: args.insecure && mirror.scheme == Scheme::Https })
}

fn registries(given: &[String]) -> Result<Vec<Registry>> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for s in given.iter().filter(|s| !s.trim().is_empty()) {
        let r = Registry::parse(s)?;
        if seen.insert(r.host.clone()) {
            out.push(r);
        }
    }
    Ok(out)
}

// ---- containerd ----

fn containerd_plan(
    args: &HostsTomlArgs,
    mirror: &Mirror,
    tls: &Tls,
    registries: &[Registry],
) -> Result<Plan> {
    let detected = detect_containerd(args)?;
    let hosts_dir = hosts_dir(args, detected.as_ref())?;
    let mut plan = Plan::default();
    plan.files.push((
        hosts_dir.join("_default").join("hosts.toml"),
        hosts_toml(mirror, tls, None, args.no_fallback),
    ));
    for r in registries {
        plan.files.push((
            hosts_dir.join(r.host.as_str()).join("hosts.toml"),
            hosts_toml(mirror, tls, Some(r), args.no_fallback),
        ));
    }
    plan.notes = containerd_notes(detected.as_ref(), &hosts_dir, args.no_fallback);
    Ok(plan)
}

/// One `hosts.toml`: the mirror first, containerd naming the registry with
/// `?ns=` (so no `override_path`), then the registry itself unless `no_fallback`.
fn hosts_toml(mirror: &Mirror, tls: &Tls, registry: Option<&Registry>, no_fallback: bool) -> String {
    let which = registry.map_or_else(|| "every registry".to_owned(), |r| r.host.to_string());
    let mut s = format!(
        "{MARKER} (`--remove` undoes it).\n\
         # Pulls of {which} go to the mirror {} (containerd names the registry with ?ns=).\n",
        mirror.url()
    );
    let tls_lines = |indent: &str| {
        let mut t = String::new();
        if let Some(ca) = &tls.ca {
            t.push_str(&format!("{indent}ca = {}\n", toml_string(ca)));
        }
        if tls.insecure {
            t.push_str(&format!("{indent}skip_verify = true\n"));
        }
        t
    };
    if no_fallback {
        s.push_str("# No fallback: the mirror is the server, the registry itself is never contacted.\n");
        s.push_str(&format!("server = {}\n", toml_string(&mirror.url())));
        s.push_str("capabilities = [\"pull\", \"resolve\"]\n");
        s.push_str(&tls_lines(""));
        // containerd 1.6 and 1.7 ignore a hosts.toml without a host table.
        s.push_str("\n# No other hosts (containerd 1.6 and 1.7 need the table, even empty).\n[host]\n");
        return s;
    }
    match registry {
        Some(r) => {
            s.push_str(
                "# If the mirror fails or lacks the image, containerd falls back to the registry (server).\n",
            );
            s.push_str(&format!("server = {}\n", toml_string(&r.origin())));
        }
        None => s.push_str(
            "# If the mirror fails or lacks the image, containerd falls back to the registry itself.\n",
        ),
    }
    s.push_str(&format!(
        "\n[host.{}]\n  capabilities = [\"pull\", \"resolve\"]\n",
        toml_string(&mirror.url())
    ));
    s.push_str(&tls_lines("  "));
    s
}

/// What containerd's config file says about the registry settings.
#[derive(Debug)]
struct Detected {
    path: PathBuf,
    /// `version` (1 when absent).
    version: i64,
    config_path: Option<String>,
    /// `use_local_image_pull` under `io.containerd.cri.v1.images`.
    use_local_image_pull: Option<bool>,
    /// The deprecated inline `registry.mirrors` is set.
    inline_mirrors: bool,
    imports: Vec<String>,
}

impl Detected {
    /// The table that holds `config_path` in this file's version.
    fn key(&self) -> &'static str {
        match self.version {
            3.. => CRI_V3_KEY,
            2 => CRI_V2_KEY,
            _ => CRI_V1_KEY,
        }
    }
}

/// Reads `--containerd-config`, or `<root>/etc/containerd/config.toml` when it exists.
fn detect_containerd(args: &HostsTomlArgs) -> Result<Option<Detected>> {
    let (path, shown) = match &args.containerd_config {
        Some(p) => (p.clone(), p.clone()),
        None => {
            let p = under_root(&args.root, Path::new(DEFAULT_CONTAINERD_CONFIG));
            if !p.exists() {
                return Ok(None);
            }
            (p.clone(), p)
        }
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("--containerd-config: reading {}", path.display()))?;
    parse_containerd_config(&text, shown).map(Some)
}

fn parse_containerd_config(text: &str, path: PathBuf) -> Result<Detected> {
    let table: toml::Table = text.parse().with_context(|| {
        format!(
            "--containerd-config: {} is not valid TOML (containerd would not start with it)",
            path.display()
        )
    })?;
    let version = table.get("version").and_then(toml::Value::as_integer).unwrap_or(1);
    let plugin = |name: &str| table.get("plugins").and_then(|p| p.get(name));
    let registry = |name: &str| plugin(name).and_then(|p| p.get("registry"));
    let cri = match version {
        3.. => "io.containerd.cri.v1.images",
        2 => "io.containerd.grpc.v1.cri",
        _ => "cri",
    };
    let config_path =
        registry(cri).and_then(|r| r.get("config_path")).and_then(|v| v.as_str()).map(str::to_owned);
    let inline_mirrors = registry(cri)
        .and_then(|r| r.get("mirrors"))
        .and_then(|m| m.as_table())
        .is_some_and(|m| !m.is_empty());
    let use_local_image_pull = plugin("io.containerd.cri.v1.images")
        .and_then(|p| p.get("use_local_image_pull"))
        .and_then(|v| v.as_bool());
    let imports = table
        .get("imports")
        .and_then(|i| i.as_array())
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    Ok(Detected { path, version, config_path, use_local_image_pull, inline_mirrors, imports })
}

/// `--hosts-dir`, else containerd's `config_path` (its first directory when it
/// is a list), else `/etc/containerd/certs.d`: a path on the node.
fn hosts_dir(args: &HostsTomlArgs, detected: Option<&Detected>) -> Result<PathBuf> {
    if let Some(d) = &args.hosts_dir {
        return std::path::absolute(d).with_context(|| format!("--hosts-dir: {}", d.display()));
    }
    let from_config =
        detected.and_then(|d| d.config_path.as_deref()).and_then(|p| p.split(':').find(|s| !s.is_empty()));
    Ok(PathBuf::from(from_config.unwrap_or(DEFAULT_HOSTS_DIR)))
}

fn containerd_notes(detected: Option<&Detected>, hosts_dir: &Path, no_fallback: bool) -> Vec<String> {
    let dir = hosts_dir.display().to_string();
    let q = toml_string(&dir);
    let mut notes = Vec::new();
    let transfer_trap = "CRI pulls may go through the transfer service, which was reported to ignore \
         hosts.toml until `use_local_image_pull = true` is set under [plugins.'io.containerd.cri.v1.images'] \
         (spegel#1272; disputed there). After a restart, pull one image with crictl and check that the \
         mirror's access log shows it.";
    let list_trap = |value: &str| {
        format!(
            "config_path = '{value}' is a list of directories (containerd 2.2.0's default). With it, \
             containerd 2.2.0 was reported to stop using _default/hosts.toml (containerd#12636), and the \
             transfer service reads config_path as one directory (containerd#12415): set \
             config_path = {q}, then restart containerd."
        )
    };
    match detected {
        None => {
            notes.push(format!(
                "No containerd config found at {DEFAULT_CONTAINERD_CONFIG} (--containerd-config names another). \
                 containerd's CRI (the kubelet's pulls) reads these files once its config.toml (`containerd \
                 config default` prints a whole one) points at the directory:\n  containerd 1.x (config version 2):\n    {CRI_V2_KEY}\n      config_path = {q}\n  \
                 containerd 2.x (config version 3):\n    {CRI_V3_KEY}\n      config_path = {q}\n\
                 Then restart containerd (systemctl restart containerd; running containers keep running)."
            ));
            notes.push(format!(
                "containerd 2.x traps: a list such as config_path = '/etc/containerd/certs.d:/etc/docker/certs.d' \
                 (2.2.0's default) was reported to stop _default mirroring until it is one directory \
                 (containerd#12636); and from containerd 2.1, {transfer_trap}"
            ));
        }
        Some(d) => {
            let what = match d.version {
                3.. => "version 3: containerd 2.x".to_owned(),
                2 => "version 2: containerd 1.x's format, which containerd 2.x also reads".to_owned(),
                v => format!("version {v}: the oldest format; better converted to version 2 or 3"),
            };
            notes.push(format!("containerd config {} ({what}).", d.path.display()));
            let key = d.key();
            match d.config_path.as_deref() {
                None | Some("") => notes.push(format!(
                    "config_path is not set: add\n    {key}\n      config_path = {q}\n\
                     to {}, then restart containerd (systemctl restart containerd; running containers keep running).",
                    d.path.display()
                )),
                Some(v) if v.contains(':') => notes.push(list_trap(v)),
                Some(v) if Path::new(v) != hosts_dir => notes.push(format!(
                    "config_path = '{v}', but the files are for {dir} (--hosts-dir): containerd will not read \
                     them there. Set config_path = {q} under {key}, or drop --hosts-dir."
                )),
                Some(v) => notes.push(format!("config_path = '{v}' under {key}: containerd reads these files.")),
            }
            if d.inline_mirrors {
                notes.push(format!(
                    "{} also sets registry.mirrors (deprecated): containerd refuses to start with both mirrors and \
                     config_path. Move those mirrors into hosts.toml files and delete the mirrors tables.",
                    d.path.display()
                ));
            }
            if !d.imports.is_empty() {
                notes.push(format!(
                    "It imports {}: a registry setting there overrides this file's.",
                    d.imports.join(", ")
                ));
            }
            match (d.version, d.use_local_image_pull) {
                (_, Some(true)) => notes.push(
                    "use_local_image_pull = true: CRI pulls take the local path, which reads hosts.toml."
                        .into(),
                ),
                (3.., _) => notes.push(format!(
                    "use_local_image_pull is not set to true: from containerd 2.1, {transfer_trap}"
                )),
                _ => notes.push(format!(
                    "If this node runs containerd 2.1 or later (containerd --version), {transfer_trap}"
                )),
            }
        }
    }
    notes.push(format!(
        "hosts.toml files are read at every pull: no restart for them. `ctr image pull` reads them only when \
         given --hosts-dir {dir}."
    ));
    if !no_fallback {
        notes.push(
            "With the mirror down, pulls fall back to each registry itself; --no-fallback stops that.".into(),
        );
    }
    notes
}

// ---- k3s / RKE2 ----

fn k3s_plan(format: Format, mirror: &Mirror, tls: &Tls, registries: &[Registry], no_fallback: bool) -> Plan {
    let (path, service) = match format {
        Format::Rke2 => ("/etc/rancher/rke2/registries.yaml", "rke2-server (rke2-agent on agents)"),
        _ => ("/etc/rancher/k3s/registries.yaml", "k3s (k3s-agent on agents)"),
    };
    let mut s = format!(
        "{MARKER} (`--remove` undoes it).\n# Pulls go to the mirror {}; k3s and RKE2 turn this file into containerd hosts.toml files.\n",
        mirror.url()
    );
    s.push_str("mirrors:\n");
    let mut entry = |name: &str, extra: Option<String>| {
        s.push_str(&format!(
            "  {}:\n    endpoint:\n      - {}\n",
            yaml_string(name),
            yaml_string(&mirror.url())
        ));
        if let Some(e) = extra {
            s.push_str(&format!("      - {}\n", yaml_string(&e)));
        }
    };
    entry("*", None);
    for r in registries {
        // The default endpoint k3s falls back to is https://<registry>: a
        // plain-HTTP registry's own address has to be listed.
        let own = (r.scheme == Scheme::Http && !no_fallback).then(|| r.origin());
        entry(r.host.as_str(), own);
    }
    if tls.ca.is_some() || tls.insecure {
        s.push_str(&format!("configs:\n  {}:\n    tls:\n", yaml_string(&mirror.authority)));
        if let Some(ca) = &tls.ca {
            s.push_str(&format!("      ca_file: {}\n", yaml_string(ca)));
        }
        if tls.insecure {
            s.push_str("      insecure_skip_verify: true\n");
        }
    }
    let mut notes = vec![
        format!(
            "This file goes to {path} on every node (servers too, when they run workloads). It replaces any \
             registries.yaml there: merge what the old one had (with --write it is kept as \
             {path}{BACKUP_SUFFIX})."
        ),
        format!("k3s and RKE2 read it at start: restart {service} on each node."),
        "The \"*\" entry (every registry) needs a k3s/RKE2 release that knows it; with an older one, \
         name the registries with --registry."
            .to_owned(),
    ];
    if no_fallback {
        notes.push(
            "No fallback: containerd always tries the registry itself last; start k3s/RKE2 with \
             --disable-default-registry-endpoint (releases from January 2024 on) to stop that."
                .to_owned(),
        );
    }
    Plan { files: vec![(PathBuf::from(path), s)], notes }
}

// ---- CRI-O ----

fn crio_plan(mirror: &Mirror, tls: &Tls, registries: &[Registry], no_fallback: bool) -> Plan {
    let defaulted;
    let registries = if registries.is_empty() {
        defaulted =
            CRIO_DEFAULT_REGISTRIES.iter().filter_map(|r| Registry::parse(r).ok()).collect::<Vec<_>>();
        &defaulted[..]
    } else {
        registries
    };
    // containers/image allows plain HTTP (or an unverified certificate) per
    // location with `insecure`.
    let mirror_insecure = mirror.scheme == Scheme::Http || tls.insecure;
    let mut s = format!(
        "{MARKER} (`--remove` undoes it).\n# Pulls of these registries go to the mirror {}, naming the registry \
         in the path (<mirror>/<registry>/<repository>).\n",
        mirror.url()
    );
    for r in registries {
        let at_mirror = format!("{}/{}", mirror.authority, r.mirror_path());
        s.push_str(&format!("\n[[registry]]\nprefix = {}\n", toml_string(r.host.as_str())));
        if no_fallback {
            s.push_str(&format!("location = {}\n", toml_string(&at_mirror)));
            if mirror_insecure {
                s.push_str("insecure = true\n");
            }
            continue;
        }
        s.push_str(&format!("location = {}\n", toml_string(r.host.as_str())));
        if r.scheme == Scheme::Http {
            s.push_str("insecure = true\n");
        }
        s.push_str(&format!("\n[[registry.mirror]]\nlocation = {}\n", toml_string(&at_mirror)));
        if mirror_insecure {
            s.push_str("insecure = true\n");
        }
    }
    let names: Vec<String> = registries.iter().map(|r| r.host.to_string()).collect();
    let mut notes = vec![
        format!(
            "This file goes to {CRIO_DROP_IN}; CRI-O, podman, skopeo and buildah read it. It mirrors only {}: \
             name others with --registry. A later drop-in (in name order) with the same prefix replaces these entries.",
            names.join(", ")
        ),
        "CRI-O re-reads it on SIGHUP: systemctl reload crio (or restart crio). podman and skopeo read it on every run."
            .to_owned(),
    ];
    let aliased: Vec<&Registry> = registries.iter().filter(|r| !r.fits_in_path()).collect();
    if !aliased.is_empty() {
        let mut entries = String::new();
        for r in &aliased {
            entries.push_str(&format!("  - name: {}\n    endpoint: {}\n", r.alias(), r.origin()));
        }
        notes.push(format!(
            "containers/image cannot put a host:port in a path (<mirror>/10.0.0.5:5000/... is an invalid \
             reference), so the mirror knows {} by another name. Add to the mirror's configuration file \
             (registries:), then restart the mirror:\nregistries:\n{entries}",
            aliased.iter().map(|r| r.host.to_string()).collect::<Vec<_>>().join(", ")
        ));
    }
    if let Some(ca) = &tls.ca {
        notes.push(format!(
            "containers/image takes a registry's CA from a directory, not from this file: copy {ca} to \
             /etc/containers/certs.d/{}/ca.crt.",
            mirror.authority
        ));
    }
    if !no_fallback {
        notes.push(
            "With the mirror down, pulls fall back to each registry itself; --no-fallback stops that.".into(),
        );
    }
    Plan { files: vec![(PathBuf::from(CRIO_DROP_IN), s)], notes }
}

/// Wraps a note's long lines at `width` columns; indented lines (snippets of
/// configuration) are kept whole, and so is a word longer than the width.
fn wrap(text: &str, width: usize) -> String {
    let mut out = String::new();
    for line in text.lines() {
        if line.starts_with(' ') || line.len() <= width {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let mut current = String::new();
        for word in line.split(' ') {
            if !current.is_empty() && current.len() + 1 + word.len() > width {
                out.push_str(&current);
                out.push('\n');
                current.clear();
            }
            if !current.is_empty() {
                current.push(' ');
            }
            current.push_str(word);
        }
        out.push_str(&current);
        out.push('\n');
    }
    out.truncate(out.trim_end_matches('\n').len());
    out
}

// ---- quoting ----

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A YAML double-quoted scalar (a JSON string is one).
fn yaml_string(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

// ---- writing and removing ----

/// `node_path` (absolute on the node) under `root`.
fn under_root(root: &Path, node_path: &Path) -> PathBuf {
    let relative: PathBuf =
        node_path.components().filter(|c| matches!(c, std::path::Component::Normal(_))).collect();
    root.join(relative)
}

fn backup_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(BACKUP_SUFFIX);
    PathBuf::from(s)
}

fn is_ours(bytes: &[u8]) -> bool {
    bytes.starts_with(MARKER.as_bytes())
}

/// `Ok(None)` when the file does not exist.
fn read_if_exists(path: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Wrote {
    Created,
    /// A file this command wrote before, rewritten.
    Updated,
    Unchanged,
    /// Someone else's file, now kept as `backup`.
    Replaced {
        backup: PathBuf,
    },
}

/// Writes `contents` to `path` atomically (temporary file, fsync, rename),
/// creating directories. A file already there that this command did not write
/// is first kept as `<path>.ociregistry-backup` (a hard link, so the original
/// stays in place until the rename replaces it); a backup is made once.
fn write_file(path: &Path, contents: &str) -> Result<Wrote> {
    let dir = path.parent().with_context(|| format!("{} has no parent directory", path.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let backup = backup_path(path);
    let mut outcome = Wrote::Created;
    let mut mode = 0o644;
    if let Some(old) = read_if_exists(path)? {
        if old == contents.as_bytes() {
            return Ok(Wrote::Unchanged);
        }
        mode = std::fs::metadata(path)
            .map_or(mode, |m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()));
        if is_ours(&old) {
            outcome = Wrote::Updated;
        } else {
            refuse_to_replace(path)?;
            // A backup equal to this very file is from a write that stopped half-way.
            if read_if_exists(&backup)?.is_none() {
                keep_as_backup(path, &backup)?;
            }
            outcome = Wrote::Replaced { backup };
        }
    }
    atomic_write(path, contents.as_bytes(), mode)?;
    Ok(outcome)
}

/// Errs when `path` holds a file this command did not write while its backup
/// holds another one: replacing it would lose one of them.
fn refuse_to_replace(path: &Path) -> Result<()> {
    let Some(current) = read_if_exists(path)? else { return Ok(()) };
    if is_ours(&current) {
        return Ok(());
    }
    let backup = backup_path(path);
    match read_if_exists(&backup)? {
        Some(b) if b != current => bail!(
            "{} was not written by ociregistry hosts-toml, and {} already holds an earlier file: \
             move one of them away, then run again",
            path.display(),
            backup.display()
        ),
        _ => Ok(()),
    }
}

fn keep_as_backup(path: &Path, backup: &Path) -> Result<()> {
    if std::fs::hard_link(path, backup).is_err() {
        // A file system without hard links: a copy, synced.
        std::fs::copy(path, backup)
            .with_context(|| format!("keeping {} as {}", path.display(), backup.display()))?;
        std::fs::File::open(backup)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("syncing {}", backup.display()))?;
    }
    Ok(())
}

fn atomic_write(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let dir = path.parent().with_context(|| format!("{} has no parent directory", path.display()))?;
    let name = path.file_name().with_context(|| format!("{} has no file name", path.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".ociregistry-tmp-{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(bytes).with_context(|| format!("writing {}", tmp.display()))?;
        f.sync_all().with_context(|| format!("syncing {}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("syncing {}", dir.display()))
}

#[derive(Debug, PartialEq, Eq)]
enum Removal {
    Deleted,
    Restored,
    /// There, but not written by this command: left alone.
    NotOurs,
    Absent,
}

/// Undoes [`write_file`]: removes the file if this command wrote it, and puts
/// a backup back (a rename: the original bytes, owner and mode).
fn remove_file(path: &Path) -> Result<Removal> {
    let backup = backup_path(path);
    let has_backup = std::fs::symlink_metadata(&backup).is_ok();
    let restore = || -> Result<Removal> {
        std::fs::rename(&backup, path)
            .with_context(|| format!("restoring {} from {}", path.display(), backup.display()))?;
        Ok(Removal::Restored)
    };
    let outcome = match read_if_exists(path)? {
        Some(b) if is_ours(&b) => {
            if has_backup {
                restore()?
            } else {
                std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
                Removal::Deleted
            }
        }
        Some(_) => return Ok(Removal::NotOurs),
        None if has_backup => restore()?,
        None => return Ok(Removal::Absent),
    };
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(outcome)
}

/// `--remove`: the files `--write` would write for these arguments, and for
/// containerd every hosts.toml in the hosts directory that it wrote.
fn remove(args: &HostsTomlArgs) -> Result<()> {
    let mut paths: Vec<PathBuf> = Vec::new();
    let mut dirs_to_prune = Vec::new();
    match args.format {
        Format::Containerd => {
            let detected = detect_containerd(args)?;
            let hosts_dir = under_root(&args.root, &hosts_dir(args, detected.as_ref())?);
            let mut names: BTreeSet<String> = BTreeSet::from(["_default".to_owned()]);
            names.extend(registries(&args.registry)?.iter().map(|r| r.host.to_string()));
            if let Ok(entries) = std::fs::read_dir(&hosts_dir) {
                for e in entries.flatten() {
                    let p = e.path();
                    if p.join("hosts.toml").exists() || backup_path(&p.join("hosts.toml")).exists() {
                        names.insert(e.file_name().to_string_lossy().into_owned());
                    }
                }
            }
            for n in names {
                paths.push(hosts_dir.join(&n).join("hosts.toml"));
                dirs_to_prune.push(hosts_dir.join(&n));
            }
        }
        Format::K3s => paths.push(under_root(&args.root, Path::new("/etc/rancher/k3s/registries.yaml"))),
        Format::Rke2 => paths.push(under_root(&args.root, Path::new("/etc/rancher/rke2/registries.yaml"))),
        Format::Crio => paths.push(under_root(&args.root, Path::new(CRIO_DROP_IN))),
    }
    let mut out = String::new();
    let mut changed = false;
    for p in &paths {
        let line = match remove_file(p)? {
            Removal::Deleted => format!("removed {}", p.display()),
            Removal::Restored => format!("restored {} from {}", p.display(), backup_path(p).display()),
            Removal::NotOurs => format!("left {}: ociregistry hosts-toml did not write it", p.display()),
            Removal::Absent => continue,
        };
        changed |= !line.starts_with("left");
        out.push_str(&line);
        out.push('\n');
    }
    // A registry directory this command created and emptied goes too.
    for d in dirs_to_prune {
        if std::fs::read_dir(&d).is_ok_and(|mut e| e.next().is_none()) {
            let _ = std::fs::remove_dir(&d);
        }
    }
    if !changed {
        out.push_str("nothing to remove: no file written by ociregistry hosts-toml is there\n");
    } else {
        out.push_str(match args.format {
            Format::Containerd => "containerd reads hosts.toml at every pull: no restart needed.\n",
            Format::K3s => "Restart k3s (k3s-agent on agents) for it to take effect.\n",
            Format::Rke2 => "Restart rke2-server (rke2-agent on agents) for it to take effect.\n",
            Format::Crio => "Reload CRI-O (systemctl reload crio) for it to take effect.\n",
        });
    }
    emit(&out)
}

#[cfg(test)]
mod tests {
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
        assert_eq!(
            Mirror::parse("https://Mirror.Example:8443/").unwrap().url(),
            "https://mirror.example:8443"
        );
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
        let p =
            plan_in(root.path(), &["--mirror", "http://127.0.0.1:31080", "--registry", "docker.io,quay.io"]);
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
            host.get("override_path").is_none()
                && host.get("skip_verify").is_none()
                && host.get("ca").is_none()
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
        assert_eq!(
            t["host"].as_table().map(|h| h.len()),
            Some(0),
            "no fallback: the mirror is the only host"
        );
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
        std::fs::write(
            &cfg,
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".cni]\n  bin_dir = \"/x\"\n",
        )
        .unwrap();
        let n = notes(&plan_in(root.path(), &m));
        assert!(
            n.contains("config_path is not set") && n.contains(CRI_V2_KEY) && !n.contains(CRI_V3_KEY),
            "{n}"
        );

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
            plan(&args(&["--mirror", "http://m:1", "--containerd-config", "/nonexistent/c.toml"]))
                .unwrap_err()
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

        let p =
            plan_in(root.path(), &["--format", "rke2", "--mirror", "http://10.0.0.2:31080", "--no-fallback"]);
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
        assert_eq!(
            (hub.prefix.as_str(), hub.location.as_str(), hub.insecure),
            ("docker.io", "docker.io", false)
        );
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
        let e = Cli::try_parse_from(["x", "--mirror", "http://m:1", "--format", "docker"])
            .err()
            .unwrap()
            .to_string();
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
        let e =
            format!("{:#}", plan(&args(&["--mirror", "http://m:1", "--registry", "no/such"])).unwrap_err());
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
}
