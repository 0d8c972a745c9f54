//! The command line: every command, flag and help text.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::commands;

/// A pull-only, pull-through, caching OCI registry mirror.
///
/// Point containerd's registry mirror (hosts.toml) at it: every image pulled
/// once keeps pulling when the upstream is unreachable, and no layer is
/// downloaded twice. Configuration comes from a YAML file (--config-file);
/// flags override the file.
#[derive(Parser, Debug)]
#[command(name = "ociregistry", version, about, long_about)]
pub struct Cli {
    /// YAML configuration file (keys: imagePath, port, host, defaultNs,
    /// logLevel, pullTimeout, registries, ...; see the README). Any key can
    /// also be set as OCIREGISTRY_<KEY> (OCIREGISTRY_CACHE_SIZE__MAX=40GiB),
    /// over the file and under the flags.
    #[arg(long, global = true, env = "OCIREGISTRY_CONFIG", value_name = "FILE")]
    pub config_file: Option<PathBuf>,

    /// Cache directory [file: imagePath] [default: /var/lib/ociregistry]
    #[arg(long, global = true, value_name = "DIR")]
    pub image_path: Option<PathBuf>,

    /// error, warn, info, debug or trace, or a filter such as
    /// "info,ociregistry=debug" [file: logLevel] [default: info]
    #[arg(long, global = true, value_name = "LEVEL")]
    pub log_level: Option<String>,

    /// Write logs to this file instead of standard error [file: logFile]
    #[arg(long, global = true, value_name = "FILE")]
    pub log_file: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
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
    /// Create the cache directory and give it to the server's user: run as
    /// root before a non-root server, on a cache the kubelet created (hostPath)
    /// or a root-owned one (the reference server's).
    ///
    /// Only what is not the owner's already changes, and nothing when the
    /// directory itself is theirs. Symbolic links are not followed; files
    /// with other hard links are left alone (and named).
    ///
    /// Example: ociregistry prepare-cache --owner 65532:65532 /var/lib/ociregistry
    PrepareCache(commands::prepare_cache::PrepareCacheArgs),
    /// Wait until a DaemonSet has rolled out: every pod it schedules updated
    /// and available (the Helm chart's uninstall hook, with the pod's
    /// service-account token).
    ///
    /// Example: ociregistry wait-daemonset ociregistry-node-cleanup -n ociregistry --timeout 5m
    #[command(hide = true)]
    WaitDaemonset(commands::wait_daemonset::WaitDaemonSetArgs),
    /// Print the version.
    Version,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Port to listen on [file: port] [default: 8080]
    #[arg(long)]
    pub port: Option<u16>,
    /// Address to listen on [file: host] [default: 0.0.0.0]
    #[arg(long, value_name = "ADDR")]
    pub host: Option<String>,
    /// Registry used when a request names none, e.g. docker.io [file: defaultNs]
    #[arg(long, value_name = "HOST")]
    pub default_ns: Option<String>,
    /// Milliseconds to wait for an upstream's response headers [file: pullTimeout] [default: 60000]
    #[arg(long, value_name = "MS")]
    pub pull_timeout: Option<u64>,
    /// Whether registries not listed in the config may be contacted (HTTPS,
    /// public addresses only) [file: allowUnconfigured] [default: true]
    #[arg(long, value_name = "BOOL")]
    pub allow_unconfigured: Option<bool>,
    /// Never contact any upstream: serve only what is cached, answer 404 for
    /// the rest [file: airGapped]
    #[arg(long)]
    pub air_gapped: bool,
    /// Serve a tiny built-in docker.io/library/hello-world:latest (linux/amd64)
    /// with no upstream: checks a new set-up end to end [file: helloWorld]
    #[arg(long)]
    pub hello_world: bool,
    /// Seconds to let in-flight responses finish after SIGTERM/SIGINT
    /// [file: shutdownGracePeriod] [default: 30]
    #[arg(long, value_name = "SECS")]
    pub shutdown_grace: Option<u64>,
    /// Log line format: text or json [file: logFormat] [default: text]
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// Image list to load in the background once serving (see `load`)
    /// [file: preloadImages]
    #[arg(long, value_name = "FILE")]
    pub preload_images: Option<String>,
    /// Port for /health and /ready [file: health]
    #[arg(long, value_name = "PORT")]
    pub health: Option<u16>,
    /// Port for Prometheus /metrics [file: metrics]
    #[arg(long, value_name = "PORT")]
    pub metrics: Option<u16>,
    /// Re-check `latest` tags upstream on every pull [file: alwaysPullLatest]
    #[arg(long)]
    pub always_pull_latest: bool,
    /// The OS --preload-images chooses from a multi-platform image [file: os]
    /// [default: this machine's]
    #[arg(long, value_name = "OS")]
    pub os: Option<String>,
    /// The architecture --preload-images chooses [file: arch] [default: this
    /// machine's]
    #[arg(long, value_name = "ARCH")]
    pub arch: Option<String>,
}
