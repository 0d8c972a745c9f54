//! Command line: parse, load config, run one command.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use tracing::{info, warn};

use ociregistry::cache::Cache;
use ociregistry::config::{self, Config, Overrides};
use ociregistry::server::{self, AppState};
use ociregistry::upstream::Upstreams;

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
    /// logLevel, pullTimeout, registries, ...; see the README).
    #[arg(long, global = true, env = "OCIREGISTRY_CONFIG", value_name = "FILE")]
    config_file: Option<PathBuf>,

    /// Cache directory [file: imagePath] [default: /var/lib/ociregistry]
    #[arg(long, global = true, value_name = "DIR")]
    image_path: Option<PathBuf>,

    /// error, warn, info, debug or trace, or a filter such as
    /// "info,ociregistry=debug" [file: logLevel] [default: info]
    #[arg(long, global = true, value_name = "LEVEL")]
    log_level: Option<String>,

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
    /// Seconds to let in-flight responses finish after SIGTERM/SIGINT
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    shutdown_grace: u64,
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
    match cli.command {
        Command::Version => {
            println!("ociregistry {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Serve(args) => {
            let file = match &cli.config_file {
                Some(path) => config::File::load(path)?,
                None => config::File::default(),
            };
            let overrides = Overrides {
                image_path: cli.image_path,
                log_level: cli.log_level,
                port: args.port,
                host: args.host,
                default_ns: args.default_ns,
                pull_timeout: args.pull_timeout,
                allow_unconfigured: args.allow_unconfigured,
                air_gapped: args.air_gapped,
            };
            let config = Config::resolve(file, overrides)?;
            let _log_guard = init_logging(&config.log_level);
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?
                .block_on(serve(config, Duration::from_secs(args.shutdown_grace)))
        }
    }
}

/// Log lines go through a channel to a writer thread, so a request never
/// waits on the stderr lock or a slow log pipe. Keep the guard alive: it
/// flushes what is queued when dropped.
fn init_logging(level: &str) -> tracing_appender::non_blocking::WorkerGuard {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_new(level).unwrap_or_else(|_| "info".into());
    let ansi = std::io::stderr().is_terminal();
    let (writer, guard) =
        tracing_appender::non_blocking::NonBlockingBuilder::default().lossy(false).finish(std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(writer).init();
    guard
}

async fn serve(config: Config, grace: Duration) -> Result<()> {
    let started = Instant::now();
    for w in &config.warnings {
        warn!("{w}");
    }
    let upstreams = Upstreams::new(&config)?;
    let (cache, report) = Cache::open(&config, upstreams).await?;
    let addr = format!("{}:{}", config.host, config.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("listening on {addr} (host / port)"))?;
    info!(
        version = env!("CARGO_PKG_VERSION"),
        listen = %listener.local_addr().map_or(addr.clone(), |a| a.to_string()),
        cache = %config.image_path.display(),
        registries = config.registries.len(),
        default_ns = config.default_ns.as_ref().map_or("-", |n| n.as_str()),
        manifests = report.manifests,
        tags = report.tags,
        blobs = report.blobs,
        skipped = report.skipped,
        load_ms = started.elapsed().as_millis() as u64,
        "ociregistry ready: pull-only caching registry mirror"
    );
    let state = Arc::new(AppState { cache, default_ns: config.default_ns.clone() });
    server::serve(listener, state, shutdown_signal(), grace).await.context("serving")?;
    info!("shut down");
    Ok(())
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
