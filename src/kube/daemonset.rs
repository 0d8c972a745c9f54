//! Waiting for a DaemonSet to roll out: every pod it schedules updated and
//! available, as `kubectl rollout status` reads it. The chart's uninstall hook
//! waits so for the pods that restore each node's runtime configuration:
//! Helm waits for a hook Pod, not for a DaemonSet.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde::Deserialize;

use super::{Api, Settings};

const MAX_BYTES: usize = 1 << 20;
const EVERY: Duration = Duration::from_secs(2);

#[derive(Deserialize, Default)]
struct DaemonSet {
    #[serde(default)]
    metadata: Metadata,
    #[serde(default)]
    status: Status,
}

#[derive(Deserialize, Default)]
struct Metadata {
    #[serde(default)]
    generation: i64,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct Status {
    observed_generation: i64,
    desired_number_scheduled: i64,
    updated_number_scheduled: i64,
    number_available: i64,
}

/// Where a rollout is, in words; `None` once it is done.
fn progress(ds: &DaemonSet) -> Option<String> {
    let s = &ds.status;
    if s.observed_generation < ds.metadata.generation {
        return Some("waiting for the DaemonSet controller to see the newest spec".into());
    }
    if s.updated_number_scheduled < s.desired_number_scheduled {
        return Some(format!(
            "{} of {} pods updated",
            s.updated_number_scheduled, s.desired_number_scheduled
        ));
    }
    if s.number_available < s.desired_number_scheduled {
        return Some(format!(
            "{} of {} updated pods available",
            s.number_available, s.desired_number_scheduled
        ));
    }
    None
}

/// A namespace or object name: a DNS subdomain, so it cannot change the path.
fn check_name(what: &str, s: &str) -> Result<()> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !s.starts_with(['-', '.'])
        && !s.ends_with(['-', '.']);
    if !ok {
        bail!("{what}: '{s}' is not a Kubernetes name (lower-case letters, digits, '-' and '.')");
    }
    Ok(())
}

/// Polls `namespace/name` until it has rolled out, printing each change of
/// progress; an error after `timeout`, saying where it stood.
pub async fn wait(settings: &Settings, namespace: &str, name: &str, timeout: Duration) -> Result<()> {
    check_name("--namespace", namespace)?;
    check_name("NAME", name)?;
    let api = Api::new(settings, "--server")?;
    let path = format!("/apis/apps/v1/namespaces/{namespace}/daemonsets/{name}");
    let started = Instant::now();
    let mut last = String::new();
    loop {
        let now = match api
            .get_json::<DaemonSet>(&path, MAX_BYTES, "the hook's Role grants `get daemonsets`")
            .await
        {
            Ok(ds) => match progress(&ds) {
                None => {
                    println!(
                        "daemonset {namespace}/{name} rolled out: {} pods",
                        ds.status.desired_number_scheduled
                    );
                    return Ok(());
                }
                Some(p) => p,
            },
            // The API may blink; the timeout bounds the wait.
            Err(e) => format!("{e:#}"),
        };
        if now != last {
            println!("daemonset {namespace}/{name}: {now}");
            last = now;
        }
        if started.elapsed() >= timeout {
            bail!(
                "daemonset {namespace}/{name} did not roll out within {}: {last}",
                humantime::format_duration(timeout)
            );
        }
        tokio::time::sleep(EVERY.min(timeout.saturating_sub(started.elapsed()))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rolled_out_means_observed_updated_and_available() {
        let ds = |g, o, d, u, a| DaemonSet {
            metadata: Metadata { generation: g },
            status: Status {
                observed_generation: o,
                desired_number_scheduled: d,
                updated_number_scheduled: u,
                number_available: a,
            },
        };
        assert!(progress(&ds(2, 1, 3, 3, 3)).unwrap().contains("newest spec"));
        assert_eq!(progress(&ds(1, 1, 3, 2, 3)).unwrap(), "2 of 3 pods updated");
        assert_eq!(progress(&ds(1, 1, 3, 3, 1)).unwrap(), "1 of 3 updated pods available");
        assert_eq!(progress(&ds(1, 1, 3, 3, 3)), None);
        assert_eq!(progress(&ds(1, 1, 0, 0, 0)), None, "no node to run on: nothing to wait for");
    }

    #[test]
    fn names_cannot_change_the_path() {
        for bad in ["", "a/b", "..", "A", "x?y", "-a"] {
            assert!(check_name("NAME", bad).is_err(), "{bad}");
        }
        check_name("NAME", "ociregistry-node-cleanup").unwrap();
    }
}
