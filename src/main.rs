//! Command line: parse, load config, run one command.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use tracing::{info, warn};

use ociregistry::cache::{self, Cache};
use ociregistry::config::{self, Config, LogFormat, Overrides};
use ociregistry::metrics::Metrics;
use ociregistry::server::{self, Readiness};
use ociregistry::upstream::{self, Upstreams};

mod commands;

const VERSION: &str = env!("CARGO_PKG_VERSION");
const COMMIT: &str = env!("OCIREGISTRY_COMMIT");
const BUILD_DATE: &str = env!("OCIREGISTRY_BUILD_DATE");

/// A pull-only, pull-through, caching OCI registry mirror.
///
/// Point containerd's registry mirror (hosts.toml) at it: every image pulled
/// once keeps pulling when the upstream is unreachable, and no layer is
/// downloaded twice. Configuration comes from a YAML file (--config-file);
/// flags override the file.
#[derive(Parser, Debug)]
#[command(name = "ociregistry", version, about, long_about)]
struct Cli {
    /// YAML configuration file (keys: imagePath, port, host, defaultNs,
    /// logLevel, pullTimeout, registries, ...; see the README). Any key can
    /// also be set as OCIREGISTRY_<KEY> (OCIREGISTRY_CACHE_SIZE__MAX=40GiB),
    /// over the file and under the flags.
    #[arg(long, global = true, env = "OCIREGISTRY_CONFIG", value_name = "FILE")]
    config_file: Option<PathBuf>,

    /// Cache directory [file: imagePath] [default: /var/lib/ociregistry]
    #[arg(long, global = true, value_name = "DIR")]
    image_path: Option<PathBuf>,

    /// error, warn, info, debug or trace, or a filter such as
    /// "info,ociregistry=debug" [file: logLevel] [default: info]
    #[arg(long, global = true, value_name = "LEVEL")]
    log_level: Option<String>,

    /// Write logs to this file instead of standard error [file: logFile]
    #[arg(long, global = true, value_name = "FILE")]
    log_file: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the registry mirror.
    ///
    /// Example: ociregistry serve --config-file /etc/ociregistry.yaml
    /// With no configuration at all it listens on 0.0.0.0:8080, caches in
    /// /var/lib/ociregistry and mirrors any public HTTPS registry named by
    /// the client (containerd's ?ns=, or /v2/<host>/<repo>/...).
    Serve(ServeArgs),
    /// Re-hash every cached blob and manifest; move what fails to <imagePath>/quarantine/.
    ///
    /// Safe while the server runs: quarantined content is fetched again on its
    /// next request. Exits 1 when anything was quarantined or unreadable.
    ///
    /// Example: ociregistry verify --image-path /var/lib/ociregistry
    Verify,
    /// Fill the cache ahead of a disconnection: image lists, docker-save
    /// tarballs, OCI layouts and oci-archives.
    ///
    /// Pulls through the same verified, resumable path as `serve` (auth, TLS,
    /// endpoints from --config-file), skipping what is cached. Safe while a
    /// server runs on the same --image-path: it serves what is loaded within
    /// a second. Exits 1 unless everything loaded.
    ///
    /// Examples:
    ///   ociregistry load --image-file images.txt --platform linux/amd64,linux/arm64
    ///   ociregistry load --image-file bundle.tar        (from `export`, skopeo or docker save)
    ///   ociregistry load docker.io/library/alpine:3.20
    Load(commands::load::LoadArgs),
    /// Will these workloads start offline? Checks each listed image (and the
    /// platforms asked for) is complete in the cache.
    ///
    /// Exits 0 only when every image is complete; otherwise names what is missing.
    ///
    /// Example: ociregistry check --image-file images.txt --platform linux/amd64
    Check(commands::check::CheckArgs),
    /// List the images in the cache: tag or digest, type, when cached and
    /// last pulled, size, platforms.
    ///
    /// Piped, it prints the reference server's format (IMAGE TAG/DIGEST TYPE
    /// CREATED PULLED SIZE(MB), space-separated); on a terminal, a table.
    /// Read-only; safe while a server runs.
    ///
    /// Example: ociregistry list --pattern 'docker.io/library/' --short-digest
    List(commands::list::ListArgs),
    /// Remove images by name, cache date or last pull; blobs another image
    /// uses stay.
    ///
    /// Also collects content no image uses and stale partial downloads.
    /// Safe while a server runs: what is being served or downloaded is never
    /// pulled from under a client, and the server forgets pruned tags within
    /// a second. Try --dry-run first.
    ///
    /// Examples:
    ///   ociregistry prune --pattern 'quay.io/,:v1\.' --dry-run
    ///   ociregistry prune --accessed-before 30d
    Prune(commands::prune::PruneArgs),
    /// Write cached images to an oci-archive, to carry across an air gap.
    ///
    /// `ociregistry load` reads it on the other side (verifying every digest);
    /// so do `skopeo copy oci-archive:...` and `ctr import`.
    ///
    /// Example: ociregistry export --image-file images.txt -o bundle.tar
    Export(commands::export::ExportArgs),
    /// Print (or --write) the node-side mirror configuration: containerd
    /// hosts.toml, k3s/RKE2 registries.yaml or a CRI-O registries.conf.d drop-in.
    ///
    /// Reads containerd's config.toml to say which key must point at the files
    /// and which containerd 2.x traps apply. Never restarts anything.
    HostsToml(commands::hosts_toml::HostsTomlArgs),
    /// Print the version.
    Version,
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// Port to listen on [file: port] [default: 8080]
    #[arg(long)]
    port: Option<u16>,
    /// Address to listen on [file: host] [default: 0.0.0.0]
    #[arg(long, value_name = "ADDR")]
    host: Option<String>,
    /// Registry used when a request names none, e.g. docker.io [file: defaultNs]
    #[arg(long, value_name = "HOST")]
    default_ns: Option<String>,
    /// Milliseconds to wait for an upstream's response headers [file: pullTimeout] [default: 60000]
    #[arg(long, value_name = "MS")]
    pull_timeout: Option<u64>,
    /// Whether registries not listed in the config may be contacted (HTTPS,
    /// public addresses only) [file: allowUnconfigured] [default: true]
    #[arg(long, value_name = "BOOL")]
    allow_unconfigured: Option<bool>,
    /// Never contact any upstream: serve only what is cached, answer 404 for
    /// the rest [file: airGapped]
    #[arg(long)]
    air_gapped: bool,
    /// Serve a tiny built-in docker.io/library/hello-world:latest (linux/amd64)
    /// with no upstream: checks a new set-up end to end [file: helloWorld]
    #[arg(long)]
    hello_world: bool,
    /// Seconds to let in-flight responses finish after SIGTERM/SIGINT
    /// [file: shutdownGracePeriod] [default: 30]
    #[arg(long, value_name = "SECS")]
    shutdown_grace: Option<u64>,
    /// Log line format: text or json [file: logFormat] [default: text]
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<String>,
    /// Image list to load in the background once serving (see `load`)
    /// [file: preloadImages]
    #[arg(long, value_name = "FILE")]
    preload_images: Option<String>,
    /// Port for /health and /ready [file: health]
    #[arg(long, value_name = "PORT")]
    health: Option<u16>,
    /// Port for Prometheus /metrics [file: metrics]
    #[arg(long, value_name = "PORT")]
    metrics: Option<u16>,
    /// Re-check `latest` tags upstream on every pull [file: alwaysPullLatest]
    #[arg(long)]
    always_pull_latest: bool,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ociregistry: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let globals = Globals {
        config_file: cli.config_file.clone(),
        image_path: cli.image_path.clone(),
        log_level: cli.log_level.clone(),
        log_file: cli.log_file.clone(),
    };
    match cli.command {
        Command::Version => {
            println!("ociregistry {VERSION} (commit {COMMIT}, built {BUILD_DATE})");
            Ok(())
        }
        Command::Verify => {
            let config = Config::resolve(
                load_file(&cli.config_file)?,
                Overrides { image_path: cli.image_path, log_level: cli.log_level, ..Overrides::default() },
            )?;
            let _log_guard = init_logging(&config)?;
            verify(&config)
        }
        Command::Load(args) => {
            let config = command_config(&globals)?;
            let _log_guard = init_logging(&config)?;
            let mut files = args.image_file.clone();
            if files.is_empty() && args.images.is_empty() && args.from_reference_cache.is_none() {
                files.extend(config.load.image_file.clone());
            }
            let inputs = commands::read_inputs(&files, &args.images)?;
            if inputs.is_empty() && args.from_reference_cache.is_none() {
                anyhow::bail!(
                    "nothing to load: give --image-file FILE, image references or --from-reference-cache DIR (or imageFile in the config)"
                );
            }
            let platforms = commands::platforms(
                args.platform.as_deref(),
                args.os.as_deref().or(config.load.os.as_deref()),
                args.arch.as_deref().or(config.load.arch.as_deref()),
            )?;
            runtime()?.block_on(async {
                if let Some(url) = &args.server {
                    let remote = commands::remote::Remote::new(url)?;
                    return commands::load::run_remote(&remote, inputs, &platforms).await;
                }
                let cache = open_cache(&config).await?;
                commands::load::run_local(&cache, &args, inputs, &platforms).await
            })
        }
        Command::Check(args) => {
            let config = command_config(&globals)?;
            let _log_guard = init_logging(&config)?;
            // No cache yet is an answer too: nothing is complete.
            let catalog = cache::catalog::Catalog::load(&cache::FsStore::new(&config.image_path));
            commands::check::run(&catalog, &args, config.load.os.as_deref(), config.load.arch.as_deref())
        }
        Command::List(args) => {
            let config = command_config(&globals)?;
            let _log_guard = init_logging(&config)?;
            if let Some(url) = &args.server {
                let remote = commands::remote::Remote::new(url)?;
                let images = runtime()?
                    .block_on(commands::list::remote_summaries(&remote, args.pattern.as_deref()))?;
                return commands::list::print(&images, &args, None);
            }
            let catalog = cache::catalog::Catalog::load(&existing_store(&config)?);
            let images = commands::list::summaries(&catalog, args.pattern.as_deref())?;
            commands::list::print(&images, &args, Some(catalog.total_bytes()))
        }
        Command::Prune(args) => {
            let config = command_config(&globals)?;
            let _log_guard = init_logging(&config)?;
            if let Some(url) = &args.server {
                let remote = commands::remote::Remote::new(url)?;
                return runtime()?.block_on(commands::prune::run_remote(&remote, &args));
            }
            commands::prune::run(&existing_store(&config)?, &args)
        }
        Command::HostsToml(args) => commands::hosts_toml::run(&args),
        Command::Export(args) => {
            let config = command_config(&globals)?;
            let _log_guard = init_logging(&config)?;
            commands::export::run(&existing_store(&config)?, &args)
        }
        Command::Serve(args) => {
            let file = load_file(&cli.config_file)?;
            let overrides = Overrides {
                image_path: cli.image_path,
                log_level: cli.log_level,
                port: args.port,
                host: args.host,
                default_ns: args.default_ns,
                pull_timeout: args.pull_timeout,
                allow_unconfigured: args.allow_unconfigured,
                air_gapped: args.air_gapped,
                hello_world: args.hello_world,
                log_format: args.log_format,
                shutdown_grace: args.shutdown_grace.map(Duration::from_secs),
                preload_images: args.preload_images,
                health_port: args.health,
                metrics_port: args.metrics,
                always_pull_latest: args.always_pull_latest,
                log_file: cli.log_file,
            };
            let config = Config::resolve(file, overrides)?;
            let _log_guard = init_logging(&config)?;
            runtime()?.block_on(serve(config))
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")
}

/// The configuration a cache command runs with: the file's registries and
/// cache directory; logging at `warn` unless asked (the command prints its own lines).
fn command_config(cli: &Globals) -> Result<Config> {
    let log_level = cli.log_level.clone().or_else(|| Some("warn".to_owned()));
    let overrides = Overrides {
        image_path: cli.image_path.clone(),
        log_level,
        log_file: cli.log_file.clone(),
        ..Overrides::default()
    };
    Config::resolve(load_file(&cli.config_file)?, overrides)
}

/// The flags every command takes.
struct Globals {
    config_file: Option<PathBuf>,
    image_path: Option<PathBuf>,
    log_level: Option<String>,
    log_file: Option<PathBuf>,
}

/// The cache directory a read or prune command works on; it must already hold a cache.
fn existing_store(config: &Config) -> Result<cache::FsStore> {
    let root = &config.image_path;
    if !root.join("blobs").is_dir() {
        anyhow::bail!("{} holds no cache (no blobs/ directory) (imagePath / --image-path)", root.display());
    }
    Ok(cache::FsStore::new(root))
}

/// A cache that can pull from upstreams, as `serve` opens it.
async fn open_cache(config: &Config) -> Result<Cache> {
    let metrics = Arc::new(Metrics::new());
    let upstreams = Upstreams::new(&upstream_settings(config), metrics.clone())?;
    // The size cap and pruning are a running server's business: a command
    // evicting with its own accounting would fight it.
    let settings = cache::Settings { capacity: Default::default(), prune: None, ..cache_settings(config) };
    let (cache, _) = Cache::open(settings, upstreams, metrics).await?;
    Ok(cache)
}

fn load_file(path: &Option<PathBuf>) -> Result<config::File> {
    config::File::load_with_env(path.as_deref())
}

fn verify(config: &Config) -> Result<()> {
    let root = &config.image_path;
    let store = existing_store(config)?;
    let started = Instant::now();
    let report = cache::verify::verify_all(&store, None, &Metrics::new());
    println!(
        "verified {} blobs ({} bytes) and {} manifests in {:.1} s",
        report.blobs,
        report.bytes,
        report.manifests,
        started.elapsed().as_secs_f64()
    );
    for d in &report.quarantined {
        println!("corrupt: {d} (moved to {})", root.join("quarantine").display());
    }
    if report.unreadable > 0 {
        println!("unreadable: {} files (see the log above)", report.unreadable);
    }
    if report.quarantined.is_empty() && report.unreadable == 0 {
        println!("ok");
        Ok(())
    } else {
        anyhow::bail!("{} corrupt, {} unreadable", report.quarantined.len(), report.unreadable)
    }
}

/// Raises the soft limit on open files to the hard limit (as Go does at
/// start-up) and returns it: each client connection takes a descriptor.
fn raise_fd_limit() -> u64 {
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

/// Log lines go through a channel to a writer thread, so a request never
/// waits on the stderr lock or a slow log pipe. Keep the guard alive: it
/// flushes what is queued when dropped.
fn init_logging(config: &Config) -> Result<tracing_appender::non_blocking::WorkerGuard> {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_level).unwrap_or_else(|_| "info".into());
    let builder = tracing_appender::non_blocking::NonBlockingBuilder::default().lossy(false);
    let (writer, guard, ansi) = match &config.log_file {
        Some(path) => {
            let file = std::fs::File::options()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("logFile / --log-file: opening {}", path.display()))?;
            let (w, g) = builder.finish(file);
            (w, g, false)
        }
        None => {
            let (w, g) = builder.finish(std::io::stderr());
            (w, g, std::io::stderr().is_terminal())
        }
    };
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    match config.log_format {
        LogFormat::Text => fmt.with_ansi(ansi).init(),
        LogFormat::Json => fmt.json().flatten_event(true).init(),
    }
    Ok(guard)
}

async fn serve(config: Config) -> Result<()> {
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
    let (cache, report) = Cache::open(cache_settings(&config), upstreams, metrics.clone()).await?;
    if config.hello_world {
        let image = ociregistry::hello::image().context("building the hello-world image")?;
        cache.install(image).await.context("installing the hello-world image")?;
    }
    cache.spawn_housekeeping();
    if let Some(k) = &config.kubernetes {
        ociregistry::kube::spawn(k, cache.clone()).context("pinRunningImages")?;
    }
    if let Some(file) = &config.load.preload_images {
        spawn_preload(&cache, file, &config)?;
    }
    let listener = bind(&config.host, config.port, "port").await?;
    let fd_limit = raise_fd_limit();
    // Leave a quarter of the descriptors for cache files and upstream connections.
    let max_connections = config.connections.max.unwrap_or((fd_limit as usize / 4 * 3).clamp(16, 65_536));
    if let Some(v) = config.verify {
        cache::verify::spawn_background(
            Arc::new(cache::FsStore::new(&config.image_path)),
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
        registries = config.registries.len(),
        default_ns = config.default_ns.as_ref().map_or("-", |n| n.as_str()),
        air_gapped = config.air_gapped,
        manifests = report.manifests,
        tags = report.tags,
        blobs = report.blobs,
        skipped = report.skipped,
        load_ms = started.elapsed().as_millis() as u64,
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
fn upstream_settings(config: &Config) -> upstream::Settings {
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

fn cache_settings(config: &Config) -> cache::Settings {
    cache::Settings {
        root: config.image_path.clone(),
        tag_policy: config.tag_policy.clone(),
        revalidate: config.revalidate,
        max_background_fills: config.resilience.max_background_fills,
        resume_attempts: config.resilience.resume_attempts,
        capacity: config.capacity.clone(),
        prune: config.prune.clone(),
    }
}

async fn bind(host: &str, port: u16, key: &str) -> Result<tokio::net::TcpListener> {
    let addr = format!("{host}:{port}");
    tokio::net::TcpListener::bind(&addr).await.with_context(|| format!("listening on {addr} (host / {key})"))
}

async fn shutdown_signal() {
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
