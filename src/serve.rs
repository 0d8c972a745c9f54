//! `ociregistry serve`: the rooms wired together from the one validated
//! configuration, the listeners bound, and the server run until a signal.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use tracing::{info, warn};

use ociregistry::cache::{self, Cache};
use ociregistry::config::Config;
use ociregistry::metrics::Metrics;
use ociregistry::server::{self, Readiness};
use ociregistry::upstream::{self, Upstreams};

use crate::commands;
use crate::{BUILD_DATE, COMMIT, VERSION};

/// Raises the soft limit on open files to the hard limit (as Go does at
/// start-up) and returns it: each client connection takes a descriptor.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit read and write the struct we pass; no other memory.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

pub async fn serve(config: Config) -> Result<()> {
    let started = Instant::now();
    let started_at = std::time::SystemTime::now();
    for w in &config.warnings {
        warn!("{w}");
    }
    // The health port comes up first, so /ready can say "not yet" while the cache loads.
    let readiness = Readiness::default();
    if let Some(port) = config.health_port {
        let listener = bind(&config.host, port, "health").await?;
        tokio::spawn(server::serve_health(listener, readiness.clone()));
    }
    let tls = match &config.server_tls {
        Some(t) => {
            let (tls, cert) = server::tls::server_config(t)?;
            cert.watch();
            Some(tls)
        }
        None => None,
    };
    let metrics = Arc::new(Metrics::new());
    let upstreams = Upstreams::new(&upstream_settings(&config), metrics.clone())?;
    let cache = Cache::open(cache_settings(&config), upstreams, metrics.clone()).await?;
    spawn_index_load(&cache);
    if config.hello_world {
        let image = ociregistry::hello::image().context("building the hello-world image")?;
        cache.install(image).await.context("installing the hello-world image")?;
    }
    cache.spawn_housekeeping();
    if let Some(k) = &config.kubernetes {
        ociregistry::kube::spawn(k, cache.clone()).context("pinRunningImages")?;
    }
    spawn_reference_conversion(&cache);
    if let Some(file) = &config.load.preload_images {
        spawn_preload(&cache, file, &config)?;
    }
    let listener = bind(&config.host, config.port, "port").await?;
    let fd_limit = raise_fd_limit();
    // Leave a quarter of the descriptors for cache files and upstream connections.
    let max_connections = config.connections.max.unwrap_or((fd_limit as usize / 4 * 3).clamp(16, 65_536));
    if let Some(v) = config.verify {
        cache::verify::spawn_background(
            cache::store::open(&config.storage, &config.image_path)?,
            v.interval,
            v.rate,
            metrics.clone(),
        );
    }
    if let Some(port) = config.admin_port {
        // Without a token, only this machine (or `kubectl port-forward`) reaches it.
        let host = if config.admin_token.is_some() { config.host.as_str() } else { "127.0.0.1" };
        let listener = bind(host, port, "admin").await?;
        if config.admin_token.is_none() {
            warn!(port, "the admin API has no token (adminAuth), so it listens on 127.0.0.1 only");
        }
        tokio::spawn(server::serve_admin(
            listener,
            cache.clone(),
            metrics.clone(),
            config.admin_token.clone(),
            config.load_window,
        ));
    }
    if let cache::store::Backend::S3(s3) = &config.storage
        && let Some(peers) = &s3.peers
    {
        let listener = bind(&config.host, peers.port, "storage.s3.peers.port").await?;
        tokio::spawn(server::serve_peers(listener, cache.clone(), peers.token.clone()));
    }
    if let Some(port) = config.metrics_port {
        let listener = bind(&config.host, port, "metrics").await?;
        tokio::spawn(server::serve_metrics(listener, cache.clone(), metrics.clone()));
    }
    // SAFETY: getuid/getgid take no arguments and cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let tls_mode = match &config.server_tls {
        None => "off",
        Some(t) if t.verify_clients => "mtls",
        Some(_) => "on",
    };
    info!(
        version = VERSION,
        commit = COMMIT,
        built = BUILD_DATE,
        started = %humantime::format_rfc3339_seconds(started_at),
        listen = %listener.local_addr().map_or_else(|_| format!("{}:{}", config.host, config.port), |a| a.to_string()),
        tls = tls_mode,
        health = config.health_port.map_or("-".to_owned(), |p| p.to_string()),
        metrics = config.metrics_port.map_or("-".to_owned(), |p| p.to_string()),
        admin = config.admin_port.map_or("-".to_owned(), |p| p.to_string()),
        max_connections,
        uid,
        gid,
        pid = std::process::id(),
        cmdline = %std::env::args().collect::<Vec<_>>().join(" "),
        cache = %config.image_path.display(),
        storage = %storage_name(&config.storage),
        registries = config.registries.len(),
        default_ns = config.default_ns.as_ref().map_or("-", |n| n.as_str()),
        air_gapped = config.air_gapped,
        startup_ms = started.elapsed().as_millis() as u64,
        "ociregistry ready: pull-only, pull-through caching registry mirror"
    );
    readiness.set(true);
    let shutdown = {
        let (readiness, cache) = (readiness.clone(), cache.clone());
        async move {
            shutdown_signal().await;
            readiness.set(false);
            cache.begin_shutdown();
        }
    };
    let settings = server::Settings {
        default_ns: config.default_ns.clone(),
        pull_auth: config.pull_auth.clone(),
        connections: server::ConnectionLimits {
            max: max_connections,
            first_byte: config.connections.first_byte_timeout,
            idle: config.connections.idle_timeout,
        },
        shutdown_grace: config.shutdown_grace,
    };
    server::serve(listener, settings, cache.clone(), metrics, tls, shutdown).await.context("serving")?;
    // Pulls served during the drain are recorded too.
    cache.flush_pulls().await;
    info!("shut down");
    Ok(())
}

/// The whole index is read in the background: the mirror serves at once,
/// each repository read from the store on its first lookup until then.
fn spawn_index_load(cache: &Cache) {
    let cache = cache.clone();
    let started = Instant::now();
    tokio::spawn(async move {
        let loaded = cache.load_index().await;
        release_freed_memory();
        match loaded {
            Ok(report) => info!(
                manifests = report.manifests,
                tags = report.tags,
                blobs = report.blobs,
                skipped = report.skipped,
                load_ms = started.elapsed().as_millis() as u64,
                "cache index loaded"
            ),
            Err(e) => {
                warn!(error = %e, "reading the cache index failed; repositories are still read from the cache directory on first use")
            }
        }
    });
}

/// Reading the index allocates and frees a file's worth of memory per
/// manifest, tag and link; glibc keeps what was freed in its heaps. Give
/// it back once, when the load is done.
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap memory to the system.
    unsafe {
        libc::malloc_trim(0);
    }
    #[cfg(target_env = "musl")]
    // SAFETY: mi_collect only frees what mimalloc holds unused.
    unsafe {
        libmimalloc_sys::mi_collect(true);
    }
}

/// The reference server's files in `imagePath` (an operator switching on the
/// same volume) become ours in the background, verified, while the mirror
/// already serves what it has.
fn spawn_reference_conversion(cache: &Cache) {
    let cache = cache.clone();
    tokio::spawn(async move {
        match cache.convert_reference_layout().await {
            Ok(None) => {}
            Ok(Some(r)) => info!(
                manifests = r.manifests,
                tags = r.tags,
                blobs = r.blobs_imported + r.blobs_cached,
                bytes = r.blob_bytes,
                not_converted = r.skipped.len(),
                missing_blobs = r.missing.len(),
                "converted the reference server's cache found in imagePath (files that could not be used are left in place and logged above)"
            ),
            Err(e) => warn!(
                error = %format!("{e:#}"),
                "imagePath holds the reference server's cache, but converting it failed; try `ociregistry load --from-reference-cache` on a copy"
            ),
        }
    });
}

/// `--preload-images`: loaded in the background, so the mirror serves what it
/// has at once, even when the upstream is unreachable at boot.
fn spawn_preload(cache: &Cache, file: &str, config: &Config) -> Result<()> {
    let inputs =
        commands::read_inputs(&[file.to_owned()], &[]).context("preloadImages / --preload-images")?;
    let platforms = commands::platforms(None, config.load.os.as_deref(), config.load.arch.as_deref())?;
    let cache = cache.clone();
    info!(images = inputs.len(), file, %platforms, "preloading images in the background");
    let window = config.load_window;
    tokio::spawn(async move {
        if let Some(w) = window {
            info!("preloading waits for loadWindow");
            w.wait_open().await;
        }
        match commands::load::run(&cache, inputs, &platforms, 3, false).await {
            Ok(()) => info!("preloading done"),
            Err(e) => warn!(error = %format!("{e:#}"), "preloading finished with failures"),
        }
    });
    Ok(())
}

/// Each room's settings are built here, from the one validated configuration.
pub fn upstream_settings(config: &Config) -> upstream::Settings {
    upstream::Settings {
        registries: config.registries.clone(),
        allow_unconfigured: config.allow_unconfigured,
        air_gapped: config.air_gapped,
        timeouts: config.timeouts,
        limits: upstream::Limits {
            max_concurrent_requests: config.resilience.max_concurrent_requests,
            probe_interval: config.resilience.probe_interval,
            max_probe_interval: config.resilience.max_probe_interval,
        },
        bandwidth: config.upstream_bandwidth,
        docker_config: config.docker_config.clone(),
    }
}

/// `fs`, or `s3://bucket/prefix` and what is on with it, for the banner.
fn storage_name(b: &cache::store::Backend) -> String {
    match b {
        cache::store::Backend::Fs => "fs".into(),
        cache::store::Backend::S3(s) => {
            let mut name = format!("s3://{}/{}", s.bucket, s.prefix.trim_matches('/'));
            if let Some(p) = &s.peers {
                name.push_str(&format!(" peers={} advertise={}", p.port, p.advertise));
            }
            if s.local_cache_size > 0 {
                name.push_str(&format!(" local_cache_bytes={}", s.local_cache_size));
            }
            if s.redirect {
                name.push_str(" redirect=on");
            }
            name
        }
    }
}

pub fn cache_settings(config: &Config) -> cache::Settings {
    cache::Settings {
        root: config.image_path.clone(),
        tag_policy: config.tag_policy.clone(),
        revalidate: config.revalidate,
        max_background_fills: config.resilience.max_background_fills,
        resume_attempts: config.resilience.resume_attempts,
        capacity: config.capacity.clone(),
        prune: config.prune.clone(),
        manifest_cache_bytes: config.manifest_cache_bytes,
        backend: config.storage.clone(),
    }
}

async fn bind(host: &str, port: u16, key: &str) -> Result<tokio::net::TcpListener> {
    let addr = format!("{host}:{port}");
    tokio::net::TcpListener::bind(&addr).await.with_context(|| format!("listening on {addr} (host / {key})"))
}

/// Returns at SIGTERM or SIGINT: the server drains then, and a
/// `hosts-toml --stay-running` container ends.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the server");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => info!("received SIGTERM, shutting down"),
        _ = tokio::signal::ctrl_c() => info!("received SIGINT, shutting down"),
    }
}
