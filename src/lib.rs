//! ociregistry: a pull-only, pull-through, caching OCI Distribution server.
//!
//! # Layout
//! Data flows one way: request → route → cache → (on a miss) upstream → cache → response.
//!
//! - [`oci`]: the vocabulary (names, tags, digests, paths, manifests); pure, no I/O.
//! - [`config`]: the YAML file, flags and environment, validated once into [`config::Config`].
//! - [`upstream`]: talking to real registries (selection, allowlist, auth, TLS, timeouts).
//! - [`cache`]: the content-addressed store and single-flight fills; the one face handlers call.
//! - [`server`]: the HTTP surface (v2 routes, OCI errors, access log, TLS, health and metrics
//!   ports, graceful shutdown).
//! - [`metrics`]: the process-wide Prometheus metrics every room records into.

pub mod cache;
pub mod config;
pub mod hello;
pub mod metrics;
pub mod oci;
pub mod server;
pub mod tls;
pub mod upstream;
