//! End-to-end tests of `ociregistry` against real parts on loopback: Debian's
//! `docker-registry` (CNCF distribution 2.8) as the upstream, `skopeo` and
//! containerd as clients, and the real binary as the mirror, with a counting,
//! fault-injecting proxy between mirror and upstream. Run with
//! `cargo test --test e2e` (harness self-tests only: `cargo test --test e2e harness::`).
//!
//! Needs the Debian packages `docker-registry`, `skopeo`, `containerd`,
//! `apache2-utils` and `openssl`, and root (containerd); a missing tool fails the
//! test that needs it, naming the package.

mod support;

// The fixtures checked on their own, without the server: upstream modes, proxy, token server, containerd.
#[path = "e2e/harness.rs"]
mod harness;

// skopeo pulls through the mirror byte-identically: each auth/TLS mode, in-path/defaultNs/ns= addressing, Docker and OCI types, indexes.
#[path = "e2e/pull_through.rs"]
mod pull_through;

// containerd (`ctr image pull` with a hosts.toml mirror) pulls through the mirror and unpacks.
#[path = "e2e/containerd.rs"]
mod containerd;

// A second pull makes zero upstream requests, also after a restart and with the upstream gone.
#[path = "e2e/zero_upstream.rs"]
mod zero_upstream;

// Concurrent clients of one uncached blob cause one upstream download, streamed to all while it runs.
#[path = "e2e/single_flight.rs"]
mod single_flight;

// kill -9 in the middle of a fill: after a restart no partial blob is served and a new pull completes.
#[path = "e2e/crash.rs"]
mod crash;

// Upstream faults (flipped byte, reset mid-blob, garbage/oversized/wrong manifests, 5xx): refused, never cached, healed after.
#[path = "e2e/faults.rs"]
mod faults;

// Upstream TLS: a client certificate for an mTLS upstream, insecureSkipVerify; failures are clean OCI errors.
#[path = "e2e/tls.rs"]
mod tls;

// Each malformed input gets its 4xx with the OCI error envelope and never reaches the upstream.
#[path = "e2e/bad_input.rs"]
mod bad_input;

// Protocol details: headers, Range/206/416, API version, OCI-Namespace, 405s, catalog, upstream errors.
#[path = "e2e/protocol.rs"]
mod protocol;

// The command line: config errors name the key, unwritable cache dir, reference keys warn, --help.
#[path = "e2e/cli.rs"]
mod cli;

// Bad links: upstream down/back, resumes, tag TTL with stale-if-error, air-gapped, fail-over, offline tag lists.
#[path = "e2e/edge.rs"]
mod edge;

// Operations: HTTPS/mTLS on the data port and certificate rotation, metrics, health/ready, JSON logs, SIGTERM, banner, pull auth.
#[path = "e2e/ops.rs"]
mod ops;

// Security hardening: address spellings, error bodies, bounded state, per-registry fills/manifests/links, token realms, proxies, connections, htpasswd timing, corruption, conformance.
#[path = "e2e/security.rs"]
mod security;

// The managed cache: load (image lists, archives, preload) then pull offline, check, list, prune beside a running server, export/load across an air gap.
#[path = "e2e/managed.rs"]
mod managed;

// Keeping the cache inside its disk: LRU eviction past cacheSize with pins, 507 when full of pinned images, pruneConfig in serve, pinRunningImages.
#[path = "e2e/capacity.rs"]
mod capacity;

// The admin API: token and port separation, load jobs, prune, evict, pins, the reference's /cmd paths, --server, upstream bandwidth.
#[path = "e2e/admin.rs"]
mod admin;

// Moving from the Go reference server: load --from-reference-cache imports its cache directory, verified, beside a running mirror.
#[path = "e2e/reference_cache.rs"]
mod reference_cache;

// hosts-toml: node configs it writes work with ctr and skopeo (CRI-O drop-in), parse as the runtimes do, and --remove restores a node byte for byte.
#[path = "e2e/node_config.rs"]
mod node_config;

// Upstream credentials from a Docker config.json (rotated in place), an exec credential helper, a static token, OCIREGISTRY_* variables.
#[path = "e2e/credentials.rs"]
mod credentials;

// Replicas sharing one cache in an S3-compatible bucket (s3s-fs): one replica's pull is another's hit.
#[path = "e2e/replicas.rs"]
mod replicas;
