//! k3s and RKE2: one `registries.yaml`, which they turn into containerd's
//! hosts.toml files at start.

use std::path::PathBuf;

use super::*;

pub(super) fn k3s_plan(
    format: Format,
    mirror: &Mirror,
    tls: &Tls,
    registries: &[Registry],
    no_fallback: bool,
) -> Plan {
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
