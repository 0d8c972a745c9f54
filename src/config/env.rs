//! `OCIREGISTRY_*` environment variables set any config key, as distribution's
//! `REGISTRY_*` do. A key's words are upper-cased and joined by `_`, levels by
//! `__`, list items by their index: `OCIREGISTRY_CACHE_SIZE__MAX=40GiB` is
//! `cacheSize: {max: 40GiB}`, `OCIREGISTRY_REGISTRIES__0__AUTH__PASSWORD` the
//! first registry's password. Values are YAML, so a list or a map can be given
//! whole. They override the file; command-line flags override them.

use std::ffi::OsString;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::File;

const PREFIX: &str = "OCIREGISTRY_";

/// Variables with the prefix that are not config keys: the commands' own, the
/// build's, and the test suites'.
const NOT_KEYS: [&str; 5] = [
    "OCIREGISTRY_CONFIG",
    "OCIREGISTRY_ADMIN_TOKEN",
    "OCIREGISTRY_BIN",
    "OCIREGISTRY_COMMIT",
    "OCIREGISTRY_BUILD_DATE",
];
const NOT_KEYS_PREFIX: &str = "OCIREGISTRY_E2E_";

/// One variable: where it goes in the file and what it says.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    var: String,
    path: Vec<Segment>,
    raw: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Key(String),
    Index(usize),
}

/// The `OCIREGISTRY_*` config variables among `vars`, in name order.
pub fn overrides(vars: impl Iterator<Item = (OsString, OsString)>) -> Result<Vec<Override>> {
    let mut out = Vec::new();
    for (name, value) in vars {
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with(PREFIX) || NOT_KEYS.contains(&name) || name.starts_with(NOT_KEYS_PREFIX) {
            continue;
        }
        let raw = value.into_string().map_err(|_| anyhow::anyhow!("{name}: the value is not UTF-8"))?;
        let path =
            parse_name(&name[PREFIX.len()..]).with_context(|| format!("environment variable {name}"))?;
        out.push(Override { var: name.to_owned(), path, raw });
    }
    out.sort_by(|a, b| a.var.cmp(&b.var));
    Ok(out)
}

/// `CACHE_SIZE__MAX` → `cacheSize`, `max`; `REGISTRIES__0__NAME` → `registries`, 0, `name`.
fn parse_name(rest: &str) -> Result<Vec<Segment>> {
    if rest.is_empty() {
        bail!("names no key: write OCIREGISTRY_<KEY>, such as OCIREGISTRY_IMAGE_PATH");
    }
    rest.split("__")
        .map(|level| {
            if let Ok(i) = level.parse::<usize>() {
                return Ok(Segment::Index(i));
            }
            let words: Vec<&str> = level.split('_').collect();
            let valid = |w: &&str| !w.is_empty() && w.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
            if !words.iter().all(valid) {
                bail!("'{level}' is not a key: upper-case words joined by _ (levels by __), such as CACHE_SIZE__MAX");
            }
            let mut key = words[0].to_ascii_lowercase();
            for w in &words[1..] {
                key.push_str(&w[..1]);
                key.push_str(&w[1..].to_ascii_lowercase());
            }
            Ok(Segment::Key(key))
        })
        .collect()
}

/// The file's text with `overrides` laid over it, read as the file is.
pub fn apply(text: &str, overrides: &[Override]) -> Result<File> {
    let mut doc: Value = if text.trim().is_empty() {
        Value::Object(Default::default())
    } else {
        serde_saphyr::from_str(text).context("reading the config file")?
    };
    for o in overrides {
        set(&mut doc, o, typed(&o.raw))?;
    }
    // A value that reads as a number or a boolean where the key wants text
    // (a password of digits) is retried as the text it was written as.
    let mut as_text = vec![false; overrides.len()];
    loop {
        match serde_path_to_error::deserialize::<_, File>(doc.clone()) {
            Ok(file) => return Ok(file),
            Err(e) => {
                let at = e.path().to_string();
                let culprit = overrides.iter().position(|o| render(&o.path) == at);
                match culprit {
                    Some(i) if !as_text[i] && !typed(&overrides[i].raw).is_string() => {
                        as_text[i] = true;
                        set(&mut doc, &overrides[i], Value::String(overrides[i].raw.clone()))?;
                    }
                    _ => {
                        let from = overrides
                            .iter()
                            .find(|o| {
                                let p = render(&o.path);
                                at.starts_with(&p) || p.starts_with(&at)
                            })
                            .map(|o| format!("{}: ", o.var))
                            .unwrap_or_default();
                        bail!("{from}{at}: {}", e.inner());
                    }
                }
            }
        }
    }
}

/// The value as YAML reads it; an empty value is the empty string.
fn typed(raw: &str) -> Value {
    if raw.is_empty() {
        return Value::String(String::new());
    }
    serde_saphyr::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_owned()))
}

/// The path as serde_path_to_error prints it: `cacheSize.max`, `registries[0].name`.
fn render(path: &[Segment]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Segment::Key(k) if s.is_empty() => s.push_str(k),
            Segment::Key(k) => {
                s.push('.');
                s.push_str(k);
            }
            Segment::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

fn set(doc: &mut Value, o: &Override, value: Value) -> Result<()> {
    let mut here = doc;
    for (depth, seg) in o.path.iter().enumerate() {
        let last = depth + 1 == o.path.len();
        let next_empty = || match o.path.get(depth + 1) {
            Some(Segment::Index(_)) => Value::Array(Vec::new()),
            _ => Value::Object(Default::default()),
        };
        here = match seg {
            Segment::Key(k) => {
                if here.is_null() {
                    *here = Value::Object(Default::default());
                }
                let Value::Object(map) = here else {
                    bail!("{}: {} is not a map in the config file", o.var, render(&o.path[..depth]));
                };
                map.entry(k.clone()).or_insert_with(next_empty)
            }
            Segment::Index(i) => {
                if here.is_null() {
                    *here = Value::Array(Vec::new());
                }
                let Value::Array(list) = here else {
                    bail!("{}: {} is not a list in the config file", o.var, render(&o.path[..depth]));
                };
                if *i == list.len() {
                    list.push(next_empty());
                } else if *i > list.len() {
                    bail!(
                        "{}: {} has {} items, so the next one is index {}",
                        o.var,
                        render(&o.path[..depth]),
                        list.len(),
                        list.len()
                    );
                }
                &mut list[*i]
            }
        };
        if last {
            *here = value;
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<Override> {
        overrides(pairs.iter().map(|(k, v)| (OsString::from(k), OsString::from(v)))).unwrap()
    }

    #[test]
    fn names_map_to_camel_case_keys_and_indexes() {
        let o =
            vars(&[("OCIREGISTRY_CACHE_SIZE__MAX", "1G"), ("OCIREGISTRY_REGISTRIES__0__AUTH__USER", "u")]);
        assert_eq!(render(&o[0].path), "cacheSize.max");
        assert_eq!(render(&o[1].path), "registries[0].auth.user");
        assert!(
            vars(&[("OCIREGISTRY_CONFIG", "/x"), ("OCIREGISTRY_ADMIN_TOKEN", "t"), ("HOME", "/")]).is_empty()
        );
        for bad in ["OCIREGISTRY_", "OCIREGISTRY_cache", "OCIREGISTRY_A___B", "OCIREGISTRY_A__"] {
            let e = overrides([(OsString::from(bad), OsString::from("1"))].into_iter()).unwrap_err();
            assert!(format!("{e:#}").contains(bad), "{bad}: {e:#}");
        }
    }

    #[test]
    fn env_overrides_the_file_and_types_follow_the_key() {
        let file = "port: 1\nregistries:\n  - name: quay.io\n";
        let o = vars(&[
            ("OCIREGISTRY_PORT", "8443"),
            ("OCIREGISTRY_AIR_GAPPED", "true"),
            ("OCIREGISTRY_REGISTRIES__0__AUTH__USER", "bot"),
            ("OCIREGISTRY_REGISTRIES__0__AUTH__PASSWORD", "12345"),
            ("OCIREGISTRY_REGISTRIES__1", "{name: ghcr.io, scheme: https}"),
            ("OCIREGISTRY_PINNED", "['docker.io/**']"),
        ]);
        let f = apply(file, &o).unwrap();
        assert_eq!(f.port, Some(8443));
        assert_eq!(f.air_gapped, Some(true));
        let auth = f.registries[0].auth.as_ref().unwrap();
        assert_eq!((auth.user.as_deref(), auth.password.as_deref()), (Some("bot"), Some("12345")));
        assert_eq!(f.registries[1].name, "ghcr.io");
        assert_eq!(f.pinned, vec!["docker.io/**".to_owned()]);
    }

    #[test]
    fn errors_name_the_variable() {
        let e = apply("", &vars(&[("OCIREGISTRY_CACHESIZE", "1G")])).unwrap_err();
        assert!(
            format!("{e:#}").contains("OCIREGISTRY_CACHESIZE") && format!("{e:#}").contains("cacheSize"),
            "{e:#}"
        );
        let e = apply("", &vars(&[("OCIREGISTRY_PORT", "eighty")])).unwrap_err();
        assert!(format!("{e:#}").starts_with("OCIREGISTRY_PORT: port:"), "{e:#}");
        let e = apply("", &vars(&[("OCIREGISTRY_REGISTRIES__3__NAME", "x")])).unwrap_err();
        assert!(format!("{e:#}").contains("next one is index 0"), "{e:#}");
        let e = apply("port: 1\n", &vars(&[("OCIREGISTRY_PORT__X", "1")])).unwrap_err();
        assert!(format!("{e:#}").contains("port is not a map"), "{e:#}");
    }
}
