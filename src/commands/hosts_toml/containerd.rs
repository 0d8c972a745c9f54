//! containerd 1.x and 2.x: `hosts.toml` files, and what its `config.toml`
//! says about where it reads them and which 2.x traps apply.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::*;

pub(super) fn containerd_plan(
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
pub(super) fn hosts_toml(
    mirror: &Mirror,
    tls: &Tls,
    registry: Option<&Registry>,
    no_fallback: bool,
) -> String {
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
pub(super) struct Detected {
    pub(super) path: PathBuf,
    /// `version` (1 when absent).
    pub(super) version: i64,
    pub(super) config_path: Option<String>,
    /// `use_local_image_pull` under `io.containerd.cri.v1.images`.
    pub(super) use_local_image_pull: Option<bool>,
    /// The deprecated inline `registry.mirrors` is set.
    pub(super) inline_mirrors: bool,
    pub(super) imports: Vec<String>,
}

impl Detected {
    /// The table that holds `config_path` in this file's version.
    pub(super) fn key(&self) -> &'static str {
        match self.version {
            3.. => CRI_V3_KEY,
            2 => CRI_V2_KEY,
            _ => CRI_V1_KEY,
        }
    }
}

/// Reads `--containerd-config`, or `<root>/etc/containerd/config.toml` when it exists.
pub(super) fn detect_containerd(args: &HostsTomlArgs) -> Result<Option<Detected>> {
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

pub(super) fn parse_containerd_config(text: &str, path: PathBuf) -> Result<Detected> {
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
pub(super) fn hosts_dir(args: &HostsTomlArgs, detected: Option<&Detected>) -> Result<PathBuf> {
    if let Some(d) = &args.hosts_dir {
        return std::path::absolute(d).with_context(|| format!("--hosts-dir: {}", d.display()));
    }
    let from_config =
        detected.and_then(|d| d.config_path.as_deref()).and_then(|p| p.split(':').find(|s| !s.is_empty()));
    Ok(PathBuf::from(from_config.unwrap_or(DEFAULT_HOSTS_DIR)))
}

pub(super) fn containerd_notes(
    detected: Option<&Detected>,
    hosts_dir: &Path,
    no_fallback: bool,
) -> Vec<String> {
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
