//! The binary: parse the command line ([`cli`]), load the configuration, run
//! one command ([`commands`], or [`serve`] for the server).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;

use ociregistry::cache::{self, Cache};
use ociregistry::config::{self, Config, LogFormat, Overrides};
use ociregistry::metrics::Metrics;
use ociregistry::upstream::Upstreams;

mod cli;
mod commands;
mod serve;

use cli::{Cli, Command};
use serve::{cache_settings, serve, upstream_settings};

// musl's allocator takes one lock for every allocation in every thread: the
// static binary the image ships served small blobs at a third of the glibc
// build's rate. mimalloc instead (tuned in `tune_allocator`); glibc builds keep
// glibc's malloc.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc commits its arenas up front and purges freed pages 10 ms later,
/// and only when that thread allocates again: an idle server sat at 37 MiB,
/// twice the glibc build. Committing on demand and purging at once brought it
/// to 17 MiB with no measurable loss of speed (50 KB blobs, wrk). The arena
/// option counts only before the first allocation, which Rust's runtime makes
/// before `main`: hence a constructor.
#[cfg(target_env = "musl")]
#[used]
#[unsafe(link_section = ".init_array")]
static TUNE_MIMALLOC: extern "C" fn() = tune_mimalloc;

#[cfg(target_env = "musl")]
extern "C" fn tune_mimalloc() {
    use libmimalloc_sys::{mi_option_set, mi_option_t};
    // Not among the crate's named constants: positions in mimalloc.h's
    // `mi_option_e` (v2), which the pinned libmimalloc-sys builds.
    const ARENA_EAGER_COMMIT: mi_option_t = 4;
    const PURGE_DELAY: mi_option_t = 15;
    // SAFETY: sets allocator parameters; runs before any thread exists.
    unsafe {
        mi_option_set(ARENA_EAGER_COMMIT, 0);
        mi_option_set(PURGE_DELAY, 0);
    }
}

const VERSION: &str = env!("CARGO_PKG_VERSION");
const COMMIT: &str = env!("OCIREGISTRY_COMMIT");
const BUILD_DATE: &str = env!("OCIREGISTRY_BUILD_DATE");

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_)) {
        // A command's output piped into `head` ends quietly, as other Unix
        // tools do, instead of panicking on the closed pipe. The server keeps
        // Rust's default (ignored), and sockets send with MSG_NOSIGNAL anyway.
        // SAFETY: signal(2) with SIG_DFL, before any other thread exists.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
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
            let flags = Overrides { pull_timeout: args.pull_timeout, ..Overrides::default() };
            let config = command_config(&globals, flags)?;
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
            let config = command_config(&globals, Overrides::default())?;
            let _log_guard = init_logging(&config)?;
            // No cache yet is an answer too: nothing is complete.
            let catalog =
                cache::catalog::Catalog::load(&*cache::store::open(&config.storage, &config.image_path)?);
            commands::check::run(&catalog, &args, config.load.os.as_deref(), config.load.arch.as_deref())
        }
        Command::List(args) => {
            let config = command_config(&globals, Overrides::default())?;
            let _log_guard = init_logging(&config)?;
            if let Some(url) = &args.server {
                let remote = commands::remote::Remote::new(url)?;
                let images = runtime()?
                    .block_on(commands::list::remote_summaries(&remote, args.pattern.as_deref()))?;
                return commands::list::print(&images, &args, None);
            }
            let catalog = cache::catalog::Catalog::load(&*existing_store(&config)?);
            let images = commands::list::summaries(&catalog, args.pattern.as_deref())?;
            commands::list::print(&images, &args, Some(catalog.total_bytes()))
        }
        Command::Prune(args) => {
            let config = command_config(&globals, Overrides::default())?;
            let _log_guard = init_logging(&config)?;
            if let Some(url) = &args.server {
                let remote = commands::remote::Remote::new(url)?;
                return runtime()?.block_on(commands::prune::run_remote(&remote, &args));
            }
            commands::prune::run(&*existing_store(&config)?, &args)
        }
        Command::HostsToml(args) => commands::hosts_toml::run(&args),
        Command::PrepareCache(args) => commands::prepare_cache::run(&args),
        Command::WaitDaemonset(args) => commands::wait_daemonset::run(&args),
        Command::Export(args) => {
            let config = command_config(&globals, Overrides::default())?;
            let _log_guard = init_logging(&config)?;
            commands::export::run(&*existing_store(&config)?, &args)
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
                os: args.os,
                arch: args.arch,
            };
            tune_allocator();
            let config = Config::resolve(file, overrides)?;
            let _log_guard = init_logging(&config)?;
            runtime()?.block_on(serve(config))
        }
    }
}

/// Keeps the server's memory flat whatever it has served.
///
/// glibc serves a large allocation from its own mapping, returned to the
/// system when freed, but after the first such free it raises that
/// threshold (up to 32 MiB), and from then on manifest bodies and download
/// chunks come from per-thread heaps that keep the memory: RSS grew by
/// tens of MiB serving large manifests that were no longer held. A fixed
/// threshold keeps it flat.
///
/// mimalloc (musl builds) is tuned before the first allocation, in
/// [`tune_mimalloc`].
fn tune_allocator() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // A worker batches its access lines while it has work (see `access_line`).
        .on_thread_park(ociregistry::server::flush_access_lines)
        .on_thread_stop(ociregistry::server::flush_access_lines)
        .build()
        .context("starting the async runtime")
}

/// The configuration a cache command runs with: the file's registries and
/// cache directory; logging at `warn` unless asked (the command prints its own lines).
fn command_config(cli: &Globals, flags: Overrides) -> Result<Config> {
    let log_level = cli.log_level.clone().or_else(|| Some("warn".to_owned()));
    let overrides =
        Overrides { image_path: cli.image_path.clone(), log_level, log_file: cli.log_file.clone(), ..flags };
    Config::resolve(load_file(&cli.config_file)?, overrides)
}

/// The flags every command takes.
struct Globals {
    config_file: Option<PathBuf>,
    image_path: Option<PathBuf>,
    log_level: Option<String>,
    log_file: Option<PathBuf>,
}

/// The cache a read or prune command works on; a directory must already hold a cache.
fn existing_store(config: &Config) -> Result<Arc<dyn cache::Store>> {
    let root = &config.image_path;
    if matches!(config.storage, cache::store::Backend::Fs) && !root.join("blobs").is_dir() {
        anyhow::bail!("{} holds no cache (no blobs/ directory) (imagePath / --image-path)", root.display());
    }
    cache::store::open(&config.storage, root)
}

/// A cache that can pull from upstreams, as `serve` opens it.
async fn open_cache(config: &Config) -> Result<Cache> {
    let metrics = Arc::new(Metrics::new());
    let upstreams = Upstreams::new(&upstream_settings(config), metrics.clone())?;
    // The size cap and pruning are a running server's business: a command
    // evicting with its own accounting would fight it.
    let settings = cache::Settings { capacity: Default::default(), prune: None, ..cache_settings(config) };
    let cache = Cache::open(settings, upstreams, metrics).await?;
    cache.load_index().await.context("reading the cache index")?;
    Ok(cache)
}

fn load_file(path: &Option<PathBuf>) -> Result<config::File> {
    config::File::load_with_env(path.as_deref())
}

fn verify(config: &Config) -> Result<()> {
    let root = &config.image_path;
    let store = existing_store(config)?;
    let started = Instant::now();
    let report = cache::verify::verify_all(&*store, None, &Metrics::new());
    println!(
        "verified {} blobs ({} bytes) and {} manifests in {:.1} s",
        report.blobs,
        report.bytes,
        report.manifests,
        started.elapsed().as_secs_f64()
    );
    let quarantine = match &config.storage {
        cache::store::Backend::Fs => root.join("quarantine").display().to_string(),
        cache::store::Backend::S3(s) => format!("quarantine/ in s3://{}", s.bucket),
    };
    for d in &report.quarantined {
        println!("corrupt: {d} (moved to {quarantine})");
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

const LOG_QUEUE_LINES: usize = 8192;

/// The writer thread writes what is queued and flushes whenever the queue
/// is empty: buffered, a burst of access lines is a few writes instead of
/// one per line (a write per request was 18 % of a cache hit's cost), and
/// no line waits longer than the queue takes to drain.
fn batched<W: std::io::Write>(w: W) -> std::io::BufWriter<W> {
    std::io::BufWriter::with_capacity(64 * 1024, w)
}

/// Log lines go through a channel to a writer thread, so a request never
/// waits on the stderr lock or a slow log pipe. Keep the guard alive: it
/// flushes what is queued when dropped.
fn init_logging(config: &Config) -> Result<tracing_appender::non_blocking::WorkerGuard> {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_level).unwrap_or_else(|_| "info".into());
    // The queue is allocated and touched whole at start: the default 128,000
    // lines cost 4 MiB of RSS for nothing. 8,192 lines absorb any burst the
    // writer cannot keep up with for a moment; past that, requests wait
    // (never dropped lines).
    let builder = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(LOG_QUEUE_LINES);
    let (writer, guard, ansi) = match &config.log_file {
        Some(path) => {
            let file = std::fs::File::options()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("logFile / --log-file: opening {}", path.display()))?;
            let (w, g) = builder.finish(batched(file));
            (w, g, false)
        }
        None => {
            let (w, g) = builder.finish(batched(std::io::stderr()));
            (w, g, std::io::stderr().is_terminal())
        }
    };
    ociregistry::server::install_access_lines(writer.clone(), matches!(config.log_format, LogFormat::Json));
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    match config.log_format {
        LogFormat::Text => fmt.with_ansi(ansi).init(),
        LogFormat::Json => fmt.json().flatten_event(true).init(),
    }
    Ok(guard)
}
