//! ociregistry: a pull-only, pull-through, caching OCI Distribution server.
//!
//! # Layout
//! Data flows one way: request → route → cache → (on a miss) upstream → cache → response.
//!
//! - [`oci`]: the vocabulary (names, tags, digests, paths, manifests); pure, no I/O.
//! - [`config`]: the YAML file, flags and environment, validated once into
//!   [`config::Config`]; the only place that knows key names. `main` builds each
//!   room's `Settings` from it; no room imports it.
//! - [`upstream`]: talking to real registries (selection, address policy, auth, TLS,
//!   timeouts, reachability); knows nothing of the cache.
//! - [`cache`]: the content-addressed store, links, single-flight fills and
//!   verification; the one face handlers call; knows nothing of HTTP.
//! - [`server`]: the HTTP surface (v2 routes, OCI errors, access log, pull auth,
//!   connection limits, TLS, health and metrics ports, graceful shutdown).
//! - [`metrics`]: the Prometheus metrics, created by `main` (or a test) and
//!   handed to each room.
//! - [`tls`]: the crypto provider and PEM loading both sides share.
//! - [`hello`]: the built-in hello-world image (`serve --hello-world`).
//! - [`kube`]: the images the cluster's pods run (`pinRunningImages`).

pub mod cache;
pub mod config;
pub mod hello;
pub mod kube;
pub mod metrics;
pub mod oci;
pub mod server;
pub mod tls;
pub mod upstream;
