//! `pinRunningImages`: which images the cluster's pods run, read from the
//! Kubernetes API, so eviction never takes away what a node may need to
//! restart a running workload.
//!
//! A plain list of pods every minute (one `GET /api/v1/pods`, needing only
//! `list pods`), not a watch: the answer only has to be right by the time
//! eviction runs, and a list survives API-server restarts without bookkeeping.
//! Until the first list succeeds, eviction is held off (see `cache::capacity`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use serde::Deserialize;
use tracing::{info, warn};

use super::{Api, Settings};
use crate::cache::Cache;
use crate::cache::capacity::Running;
use crate::oci::{Digest, ImageRef};

const EVERY: Duration = Duration::from_secs(60);
/// A pod list larger than this is not believed (a cluster's is a few MiB at most).
const MAX_LIST_BYTES: usize = 64 << 20;
const PODS: &str = "/api/v1/pods";

#[derive(Deserialize)]
struct PodList {
    #[serde(default)]
    items: Vec<Pod>,
}

#[derive(Deserialize)]
struct Pod {
    #[serde(default)]
    spec: PodSpec,
    #[serde(default)]
    status: PodStatus,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct PodSpec {
    #[serde(default)]
    containers: Vec<Container>,
    #[serde(default)]
    init_containers: Vec<Container>,
    #[serde(default)]
    ephemeral_containers: Vec<Container>,
}

#[derive(Deserialize)]
struct Container {
    #[serde(default)]
    image: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct PodStatus {
    #[serde(default)]
    phase: String,
    #[serde(default)]
    container_statuses: Vec<ContainerStatus>,
    #[serde(default)]
    init_container_statuses: Vec<ContainerStatus>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContainerStatus {
    /// `docker.io/library/nginx@sha256:…`: what the node resolved.
    #[serde(default, rename = "imageID")]
    image_id: String,
}

/// The images (by reference) and digests the pods of a list use.
fn running(list: PodList) -> Running {
    let mut out = Running::default();
    for pod in list.items.into_iter().filter(|p| !matches!(p.status.phase.as_str(), "Succeeded" | "Failed")) {
        let spec = pod.spec;
        for c in spec.containers.iter().chain(&spec.init_containers).chain(&spec.ephemeral_containers) {
            if let Ok(r) = ImageRef::parse(&c.image) {
                if let Some(d) = &r.digest {
                    out.digests.insert(d.clone());
                }
                // `repo@digest` names no tag (ImageRef adds `latest` only when neither is given).
                if let Some(t) = &r.tag {
                    out.names.insert(format!("{}/{}:{t}", r.registry, r.repo));
                }
            }
        }
        for s in pod.status.container_statuses.iter().chain(&pod.status.init_container_statuses) {
            if let Some(d) = s.image_id.rsplit_once('@').and_then(|(_, d)| Digest::parse(d).ok()) {
                out.digests.insert(d);
            }
        }
    }
    out
}

/// Keeps the cache told which images the cluster's pods use.
pub fn spawn(settings: &Settings, cache: Cache) -> Result<()> {
    let api = Arc::new(Api::new(settings, "kubernetesApi")?);
    info!(api = %api.base(), "pinRunningImages: images of running pods are never evicted");
    tokio::spawn(async move {
        let mut failing = false;
        loop {
            let list = api
                .get_json::<PodList>(PODS, MAX_LIST_BYTES, "the chart's ClusterRole grants `list pods`")
                .await;
            match list.map(running) {
                Ok(running) => {
                    if failing {
                        info!("pinRunningImages: the Kubernetes API answers again");
                    }
                    failing = false;
                    cache.set_running(running);
                }
                Err(e) => {
                    if !failing {
                        warn!(error = %format!("{e:#}"), "pinRunningImages: cannot list pods; eviction keeps what it last knew to be running (none is evicted until a first list succeeds)");
                    }
                    failing = true;
                }
            }
            tokio::time::sleep(EVERY).await;
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_images_and_resolved_digests_of_live_pods() {
        let d = format!("sha256:{}", "a".repeat(64));
        let json = format!(
            r#"{{"items":[
              {{"spec":{{"containers":[{{"image":"nginx:1.25"}}],"initContainers":[{{"image":"quay.io/x/init"}}]}},
               "status":{{"phase":"Running","containerStatuses":[{{"imageID":"docker.io/library/nginx@{d}"}}]}}}},
              {{"spec":{{"containers":[{{"image":"busybox:done"}}]}},"status":{{"phase":"Succeeded"}}}},
              {{"spec":{{"containers":[{{"image":"NOT A REF"}}]}},"status":{{}}}}
            ]}}"#
        );
        let r = running(serde_json::from_str(&json).unwrap());
        assert!(r.names.contains("docker.io/library/nginx:1.25"));
        assert!(r.names.contains("quay.io/x/init:latest"));
        assert!(!r.names.iter().any(|n| n.contains("busybox")), "finished pods need nothing");
        assert!(r.digests.contains(&Digest::parse(&d).unwrap()));
    }
}
