//! Prometheus metrics: a set created by `main` (or a test) and handed to each
//! room, so two servers in one process count apart.
//!
//! Names follow the reference server where the meaning is the same
//! (`ociregistry_cached_pulls_by_ns_total`, ...). Labels stay bounded: no
//! repository or digest labels, and a registry is named in a label only when
//! it is configured or one of a fixed list of well-known public registries:
//! any other host a client names is `other`, so clients cannot create series.

use std::collections::HashSet;
use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

mod process;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NsLabels {
    pub ns: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    /// `cache` or `upstream`.
    pub source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: &'static str,
    /// `2xx`, `4xx`, ...
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegistryLabels {
    pub registry: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamErrorLabels {
    pub registry: String,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointUpLabels {
    pub registry: String,
    pub endpoint: String,
}

/// The v2 API endpoint a request was for: a bounded label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Endpoint {
    Base,
    Catalog,
    Manifests,
    Blobs,
    Uploads,
    Tags,
    Referrers,
    #[default]
    Other,
}

impl Endpoint {
    const ALL: usize = 8;

    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Base => "base",
            Endpoint::Catalog => "catalog",
            Endpoint::Manifests => "manifests",
            Endpoint::Blobs => "blobs",
            Endpoint::Uploads => "uploads",
            Endpoint::Tags => "tags",
            Endpoint::Referrers => "referrers",
            Endpoint::Other => "other",
        }
    }
}

/// Where a response's bytes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Cache,
    Upstream,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Cache => "cache",
            Source::Upstream => "upstream",
        }
    }
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The series every request adds to, each resolved from its family on first
/// use and then held: a request hashes no labels and takes no family lock.
/// Resolved lazily so that `/metrics` lists only series that were used.
#[derive(Default)]
struct PerRequest {
    hits: [OnceLock<Counter>; Endpoint::ALL],
    durations: [[OnceLock<Histogram>; STATUS_CLASSES.len()]; Endpoint::ALL],
    manifest_pulls: [OnceLock<Counter>; 2],
    blob_pulls: [OnceLock<Counter>; 2],
    served_bytes: [OnceLock<Counter>; 2],
}

pub struct Metrics {
    registry: Registry,
    per_request: PerRequest,
    pub cached_pulls_by_ns: Family<NsLabels, Counter>,
    pub upstream_pulls_by_ns: Family<NsLabels, Counter>,
    pub manifest_pulls: Family<SourceLabels, Counter>,
    pub blob_pulls: Family<SourceLabels, Counter>,
    pub blob_bytes_on_disk: Gauge,
    pub manifest_bytes_on_disk: Gauge,
    pub cached_manifest_count: Gauge,
    pub cached_blob_count: Gauge,
    pub v2_api_endpoint_hits: Family<EndpointLabels, Counter>,
    pub api_errors: Family<CodeLabels, Counter>,
    pub request_duration: Family<RouteLabels, Histogram>,
    pub served_bytes: Family<SourceLabels, Counter>,
    pub upstream_request_duration: Family<RegistryLabels, Histogram>,
    pub upstream_errors: Family<UpstreamErrorLabels, Counter>,
    pub upstream_up: Family<EndpointUpLabels, Gauge>,
    pub stale_serves: Counter,
    pub fills_in_flight: Gauge,
    pub fill_resumes: Counter,
    pub connection_errors: Family<CodeLabels, Counter>,
    /// The configured registries, set once at start-up; read without a lock.
    configured: OnceLock<HashSet<String>>,
    pub connections_open: Gauge,
    pub connections_closed: Family<ReasonLabels, Counter>,
    pub quarantined_blobs: Counter,
    pub evicted_images: Counter,
    pub pruned_bytes: Counter,
    pub fills_refused_full: Counter,
    pub disk_free_bytes: Gauge,
    pub load_images: Family<ResultLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// Public registries that get a label of their own even when not configured.
const WELL_KNOWN_REGISTRIES: &[&str] = &[
    "docker.io",
    "quay.io",
    "ghcr.io",
    "gcr.io",
    "registry.k8s.io",
    "k8s.gcr.io",
    "mcr.microsoft.com",
    "public.ecr.aws",
    "nvcr.io",
    "registry.gitlab.com",
    "docker.elastic.co",
    "registry.access.redhat.com",
    "registry.redhat.io",
    "cgr.dev",
];

fn latency_histogram() -> Histogram {
    // 0.25 ms … ~8 s.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

fn upstream_histogram() -> Histogram {
    // 5 ms … ~160 s: upstreams on slow links.
    Histogram::new(exponential_buckets(0.005, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            registry: Registry::default(),
            per_request: PerRequest::default(),
            cached_pulls_by_ns: Family::default(),
            upstream_pulls_by_ns: Family::default(),
            manifest_pulls: Family::default(),
            blob_pulls: Family::default(),
            blob_bytes_on_disk: Gauge::default(),
            manifest_bytes_on_disk: Gauge::default(),
            cached_manifest_count: Gauge::default(),
            cached_blob_count: Gauge::default(),
            v2_api_endpoint_hits: Family::default(),
            api_errors: Family::default(),
            request_duration: Family::new_with_constructor(latency_histogram),
            served_bytes: Family::default(),
            upstream_request_duration: Family::new_with_constructor(upstream_histogram),
            upstream_errors: Family::default(),
            upstream_up: Family::default(),
            stale_serves: Counter::default(),
            fills_in_flight: Gauge::default(),
            fill_resumes: Counter::default(),
            connection_errors: Family::default(),
            configured: OnceLock::new(),
            connections_open: Gauge::default(),
            connections_closed: Family::default(),
            quarantined_blobs: Counter::default(),
            evicted_images: Counter::default(),
            pruned_bytes: Counter::default(),
            fills_refused_full: Counter::default(),
            disk_free_bytes: Gauge::default(),
            load_images: Family::default(),
        };
        let r = &mut registry;
        r.register(
            "ociregistry_cached_pulls_by_ns",
            "Image pulls (tag manifest requests) served from the cache, by registry",
            m.cached_pulls_by_ns.clone(),
        );
        r.register(
            "ociregistry_upstream_pulls_by_ns",
            "Image pulls (tag manifest requests) that went to the upstream, by registry",
            m.upstream_pulls_by_ns.clone(),
        );
        r.register("ociregistry_manifest_pulls", "Manifests served, by source", m.manifest_pulls.clone());
        r.register("ociregistry_blob_pulls", "Blobs served, by source", m.blob_pulls.clone());
        r.register(
            "ociregistry_blob_bytes_on_disk_total",
            "Bytes of blobs in the cache",
            m.blob_bytes_on_disk.clone(),
        );
        r.register(
            "ociregistry_manifest_bytes_on_disk_total",
            "Bytes of manifests in the cache",
            m.manifest_bytes_on_disk.clone(),
        );
        r.register(
            "ociregistry_cached_manifest_count",
            "Manifests in the cache",
            m.cached_manifest_count.clone(),
        );
        r.register("ociregistry_cached_blob_count", "Blobs in the cache", m.cached_blob_count.clone());
        r.register(
            "ociregistry_v2_api_endpoint_hits",
            "Requests by API endpoint",
            m.v2_api_endpoint_hits.clone(),
        );
        r.register("ociregistry_api_errors", "Error responses by OCI error code", m.api_errors.clone());
        r.register(
            "ociregistry_http_request_duration_seconds",
            "Time to response headers, by route and status class",
            m.request_duration.clone(),
        );
        r.register(
            "ociregistry_served_bytes",
            "Body bytes served: from the cache (bandwidth saved) or fetched from an upstream",
            m.served_bytes.clone(),
        );
        r.register(
            "ociregistry_upstream_request_duration_seconds",
            "Upstream requests: time to response headers, by registry",
            m.upstream_request_duration.clone(),
        );
        r.register(
            "ociregistry_upstream_errors",
            "Upstream failures by registry and reason",
            m.upstream_errors.clone(),
        );
        r.register(
            "ociregistry_upstream_up",
            "1 if the upstream endpoint is reachable, 0 while marked down",
            m.upstream_up.clone(),
        );
        r.register(
            "ociregistry_stale_serves",
            "Tags served from the cache because their upstream re-check failed",
            m.stale_serves.clone(),
        );
        r.register("ociregistry_fills_in_flight", "Blob downloads in progress", m.fills_in_flight.clone());
        r.register(
            "ociregistry_fill_resumes",
            "Blob downloads resumed after a broken connection",
            m.fill_resumes.clone(),
        );
        r.register(
            "ociregistry_connection_errors",
            "Client connections that failed before a request (TLS handshake, timeouts)",
            m.connection_errors.clone(),
        );
        r.register(
            "ociregistry_connections_open",
            "Client connections open on the data port",
            m.connections_open.clone(),
        );
        r.register(
            "ociregistry_connections_closed",
            "Client connections closed by the server: first_byte_timeout, idle_timeout, evicted (idle, to make room), over_limit (refused)",
            m.connections_closed.clone(),
        );
        r.register(
            "ociregistry_quarantined_blobs",
            "Cached blobs found corrupt (wrong size or digest) and moved to quarantine/",
            m.quarantined_blobs.clone(),
        );
        r.register(
            "ociregistry_evicted_images",
            "Images evicted to keep the cache within cacheSize / minFreeDisk",
            m.evicted_images.clone(),
        );
        r.register("ociregistry_pruned_bytes", "Bytes freed by eviction and pruning", m.pruned_bytes.clone());
        r.register(
            "ociregistry_fills_refused_full",
            "Downloads refused because the cache was full of what cannot be evicted",
            m.fills_refused_full.clone(),
        );
        r.register(
            "ociregistry_disk_free_bytes",
            "Free bytes on the cache directory's filesystem",
            m.disk_free_bytes.clone(),
        );
        r.register(
            "ociregistry_load_images",
            "Images preloaded (serve --preload-images, admin API loads), by result",
            m.load_images.clone(),
        );
        Metrics { registry, ..m }
    }

    /// A request for `endpoint` answered with `status` after `secs`.
    pub fn request(&self, endpoint: Endpoint, status: u16, secs: f64) {
        let e = endpoint as usize;
        let class = usize::from(status / 100).clamp(1, STATUS_CLASSES.len()) - 1;
        let hits = &self.per_request.hits[e];
        hits.get_or_init(|| {
            self.v2_api_endpoint_hits.get_or_create(&EndpointLabels { endpoint: endpoint.as_str() }).clone()
        })
        .inc();
        self.per_request.durations[e][class]
            .get_or_init(|| {
                let labels = RouteLabels { route: endpoint.as_str(), status: STATUS_CLASSES[class] };
                self.request_duration.get_or_create(&labels).clone()
            })
            .observe(secs);
    }

    /// A manifest (or, `blob`, a blob) served from `source`.
    pub fn pulled(&self, blob: bool, source: Source) {
        let (slots, family) = match blob {
            false => (&self.per_request.manifest_pulls, &self.manifest_pulls),
            true => (&self.per_request.blob_pulls, &self.blob_pulls),
        };
        slots[source as usize]
            .get_or_init(|| family.get_or_create(&SourceLabels { source: source.as_str() }).clone())
            .inc();
    }

    /// Body bytes sent from `source`.
    pub fn served(&self, source: Source, bytes: u64) {
        self.per_request.served_bytes[source as usize]
            .get_or_init(|| {
                self.served_bytes.get_or_create(&SourceLabels { source: source.as_str() }).clone()
            })
            .inc_by(bytes);
    }

    /// Names the configured registries (once, at start-up).
    pub fn set_configured_registries(&self, names: impl IntoIterator<Item = String>) {
        let _ = self.configured.set(names.into_iter().collect());
    }

    /// The label value for a registry: its name when configured or well known, else `other`.
    pub fn registry_label(&self, name: &str) -> String {
        let configured = self.configured.get().is_some_and(|c| c.contains(name));
        if configured || WELL_KNOWN_REGISTRIES.contains(&name) { name.to_owned() } else { "other".to_owned() }
    }

    /// The text exposition, process metrics included.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode_registry(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out.push_str(&process::metrics());
        out.push_str("# EOF\n");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_series_count_in_the_families_they_came_from() {
        let m = Metrics::new();
        m.request(Endpoint::Manifests, 200, 0.001);
        m.request(Endpoint::Manifests, 204, 0.001);
        m.request(Endpoint::Blobs, 404, 0.001);
        m.pulled(true, Source::Cache);
        m.served(Source::Upstream, 10);
        m.served(Source::Upstream, 5);
        let text = m.encode();
        for line in [
            r#"ociregistry_v2_api_endpoint_hits_total{endpoint="manifests"} 2"#,
            r#"ociregistry_v2_api_endpoint_hits_total{endpoint="blobs"} 1"#,
            r#"ociregistry_http_request_duration_seconds_count{route="manifests",status="2xx"} 2"#,
            r#"ociregistry_http_request_duration_seconds_count{route="blobs",status="4xx"} 1"#,
            r#"ociregistry_blob_pulls_total{source="cache"} 1"#,
            r#"ociregistry_served_bytes_total{source="upstream"} 15"#,
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line} in:\n{text}");
        }
        assert!(!text.contains(r#"endpoint="tags""#), "only series used are listed:\n{text}");
    }
}
