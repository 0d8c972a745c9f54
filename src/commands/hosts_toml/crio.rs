//! CRI-O, podman, skopeo and buildah: a `registries.conf.d` drop-in, naming
//! each registry in the mirror's path (with a port-free alias where a port
//! would make an invalid reference).

use std::path::PathBuf;

use super::*;

pub(super) fn crio_plan(mirror: &Mirror, tls: &Tls, registries: &[Registry], no_fallback: bool) -> Plan {
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
