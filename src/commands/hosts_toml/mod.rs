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

mod containerd;
mod crio;
mod files;
mod k3s;
mod target;
#[cfg(test)]
mod tests;

use containerd::*;
use crio::*;
use files::*;
use k3s::*;
use target::*;

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
    rt.block_on(crate::serve::shutdown_signal());
    Ok(())
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
