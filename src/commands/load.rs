//! `ociregistry load` (and `serve --preload-images`): fill the cache ahead
//! of a disconnection, from registries or archives.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use futures_util::StreamExt;
use indicatif::ProgressBar;
use tracing::{info, warn};

use ociregistry::cache::catalog::Platforms;
use ociregistry::cache::{Cache, LoadProgress};

use super::{Input, bytes, rate};

#[derive(Args, Debug)]
pub struct LoadArgs {
    /// Image lists (one reference per line, # comments), docker-save
    /// tarballs, OCI layouts or oci-archives (gzip or not; told apart by
    /// content); comma-separated, globs allowed [file: imageFile]
    #[arg(long, value_name = "FILE,...")]
    pub image_file: Vec<String>,
    /// Image references to load, besides those in --image-file
    pub images: Vec<String>,
    /// Platforms to load from a multi-platform image: all, or a list such as
    /// linux/amd64,linux/arm64 [default: the host's, or --os/--arch]
    #[arg(long, value_name = "LIST")]
    pub platform: Option<String>,
    /// Operating system to load [file: os]
    #[arg(long)]
    pub os: Option<String>,
    /// Architecture to load [file: arch]
    #[arg(long)]
    pub arch: Option<String>,
    /// Images loaded at once; each fetches as many blobs at once
    #[arg(long, visible_alias = "concurrent", default_value_t = 3, value_name = "N")]
    pub parallel: usize,
    /// Stop at the first image that fails (default: load the rest, list the failures)
    #[arg(long)]
    pub fail_fast: bool,
    /// Have a running server load the images (a job its admin API runs, e.g.
    /// http://127.0.0.1:9091) instead of loading into the directory here; the
    /// token comes from $OCIREGISTRY_ADMIN_TOKEN
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// Import the cache directory of the Go reference server (its imagePath:
    /// blobs/, img/, lts/), verifying every blob and manifest; may be given
    /// without --image-file
    #[arg(long, value_name = "DIR", conflicts_with = "server")]
    pub from_reference_cache: Option<PathBuf>,
    /// Milliseconds to wait for an upstream's response headers [file: pullTimeout]
    #[arg(long, value_name = "MS")]
    pub pull_timeout: Option<u64>,
}

/// A progress bar on a terminal; plain lines otherwise.
struct Meter {
    bar: ProgressBar,
    arrived: AtomicU64,
}

impl LoadProgress for Meter {
    fn planned(&self, bytes: u64) {
        self.bar.inc_length(bytes);
    }
    fn arrived(&self, bytes: u64) {
        self.arrived.fetch_add(bytes, Ordering::Relaxed);
        self.bar.inc(bytes);
    }
}

/// Loads every input; `Err` lists what failed.
pub async fn run(
    cache: &Cache,
    inputs: Vec<Input>,
    platforms: &Platforms,
    parallel: usize,
    fail_fast: bool,
) -> Result<()> {
    let started = Instant::now();
    let total = inputs.len();
    let bar = super::progress_bar(0);
    let meter = Arc::new(Meter { bar: bar.clone(), arrived: AtomicU64::new(0) });
    let done = AtomicU64::new(0);
    let mut failures: Vec<String> = Vec::new();
    let mut loaded = 0;
    let mut work = futures_util::stream::iter(inputs)
        .map(|input| {
            let meter = meter.clone();
            async move {
                let t = Instant::now();
                let result: Result<String> = match &input {
                    Input::Image(image) => cache
                        .preload(image, platforms, parallel, meter)
                        .await
                        .map(|p| {
                            let platforms: Vec<String> =
                                p.platforms.iter().map(ToString::to_string).collect();
                            format!(
                                "loaded {image} {} ({}{} blobs, {} already cached)",
                                p.digest,
                                if platforms.is_empty() {
                                    String::new()
                                } else {
                                    format!("{}; ", platforms.join(","))
                                },
                                p.blobs,
                                p.cached
                            )
                        })
                        .map_err(anyhow::Error::from),
                    Input::Archive(path) => {
                        if let Ok(m) = std::fs::metadata(path) {
                            meter.planned(m.len());
                        }
                        cache.import(path.clone(), meter).await.map(|images| {
                            let names: Vec<String> =
                                images.iter().flat_map(|i| i.names.iter().map(ToString::to_string)).collect();
                            format!(
                                "imported {} ({} images: {})",
                                path.display(),
                                images.len(),
                                names.join(", ")
                            )
                        })
                    }
                };
                let what = match &input {
                    Input::Image(i) => i.to_string(),
                    Input::Archive(p) => p.display().to_string(),
                };
                (what, result, t.elapsed())
            }
        })
        .buffer_unordered(parallel.max(1));
    while let Some((what, result, took)) = work.next().await {
        let n = done.fetch_add(1, Ordering::Relaxed) + 1;
        bar.set_message(format!("images {n}/{total}"));
        match result {
            Ok(line) => {
                loaded += 1;
                info!(image = %what, took_ms = took.as_millis() as u64, "{line}");
                say(&bar, format!("[{n}/{total}] {line} in {:.1}s", took.as_secs_f64()));
            }
            Err(e) => {
                warn!(image = %what, error = %format!("{e:#}"), "could not load");
                // An archive's errors start with its path already.
                let e = format!("{e:#}");
                let failure = if e.starts_with(&what) { e } else { format!("{what}: {e}") };
                say(&bar, format!("[{n}/{total}] FAILED {failure}"));
                failures.push(failure);
                if fail_fast {
                    break;
                }
            }
        }
    }
    drop(work);
    bar.finish_and_clear();
    let fetched = meter.arrived.load(Ordering::Relaxed);
    let took = started.elapsed();
    println!(
        "loaded {loaded} of {total} inputs; {} fetched in {:.1}s ({})",
        bytes(fetched),
        took.as_secs_f64(),
        rate(fetched, took)
    );
    if failures.is_empty() {
        return Ok(());
    }
    for f in &failures {
        println!("failed: {f}");
    }
    anyhow::bail!(
        "{} of {total} inputs failed{}",
        failures.len(),
        if fail_fast { " (stopped at the first: --fail-fast)" } else { "" }
    )
}

/// `load` into the cache directory here: the reference server's cache when
/// given, then the inputs (also after a failed import, unless --fail-fast).
pub async fn run_local(
    cache: &Cache,
    args: &LoadArgs,
    inputs: Vec<Input>,
    platforms: &Platforms,
) -> Result<()> {
    let reference_cache = args.from_reference_cache.as_deref();
    let imported = match reference_cache {
        Some(dir) => run_reference_cache(cache, dir).await,
        None => Ok(()),
    };
    if reference_cache.is_some() && (inputs.is_empty() || (imported.is_err() && args.fail_fast)) {
        return imported;
    }
    let loaded = run(cache, inputs, platforms, args.parallel, args.fail_fast).await;
    match (imported, loaded) {
        (Err(a), Err(b)) => Err(anyhow::anyhow!("{a:#}; and {b:#}")),
        (a, b) => a.and(b),
    }
}

/// `load --from-reference-cache DIR`: the Go reference server's cache
/// directory imported; what was skipped listed with its reason. `Err` when
/// anything was corrupt or nothing could be imported.
pub async fn run_reference_cache(cache: &Cache, dir: &Path) -> Result<()> {
    let started = Instant::now();
    let bar = super::progress_bar(0);
    bar.set_message(format!("importing {}", dir.display()));
    let meter = Arc::new(Meter { bar: bar.clone(), arrived: AtomicU64::new(0) });
    let imported = cache.import_reference_cache(dir.to_path_buf(), meter).await;
    bar.finish_and_clear();
    let report =
        imported.with_context(|| format!("importing the reference server's cache {}", dir.display()))?;
    for s in &report.skipped {
        let kind = if s.corrupt { "corrupt" } else { "not imported" };
        println!("skipped {} ({kind}): {}", s.path.display(), s.why);
    }
    for d in &report.unreferenced {
        println!("unreferenced blob {d}: no imported manifest uses it (imported all the same)");
    }
    for note in &report.notes {
        println!("note: {note}");
    }
    if !report.missing.is_empty() {
        println!(
            "incomplete: {} blobs the imported manifests use are not in the cache (fetched from the upstream on first pull)",
            report.missing.len()
        );
    }
    let took = started.elapsed();
    println!(
        "imported {}: {} manifests, {} tags, {} by digest; {} blobs ({}), {} already cached; {} pull times; {} files skipped ({} corrupt) in {:.1}s",
        dir.display(),
        report.manifests,
        report.tags,
        report.digest_links,
        report.blobs_imported,
        bytes(report.blob_bytes),
        report.blobs_cached,
        report.pulls,
        report.skipped.len(),
        report.corrupt(),
        took.as_secs_f64()
    );
    if report.nothing_imported() {
        anyhow::bail!("{}: nothing could be imported", dir.display());
    }
    if report.corrupt() > 0 {
        anyhow::bail!(
            "{}: {} corrupt or unreadable files were not imported (listed above); everything else was",
            dir.display(),
            report.corrupt()
        );
    }
    Ok(())
}

/// Above the bar on a terminal; a plain line otherwise.
fn say(bar: &ProgressBar, line: String) {
    if bar.is_hidden() { println!("{line}") } else { bar.println(line) }
}

/// `load --server`: a job on the running server, followed until it ends.
pub async fn run_remote(
    remote: &super::remote::Remote,
    inputs: Vec<Input>,
    platforms: &Platforms,
) -> Result<()> {
    let mut images = Vec::new();
    for input in inputs {
        match input {
            Input::Image(i) => images.push(i.to_string()),
            Input::Archive(p) => anyhow::bail!(
                "{}: archives are loaded into the cache directory directly (leave out --server; it is safe beside a running server)",
                p.display()
            ),
        }
    }
    let started = Instant::now();
    let job = remote
        .post("/api/v1/load", &serde_json::json!({ "images": images, "platforms": platforms.to_string() }))
        .await?;
    let path = job["status"].as_str().context("the server did not say where the job's status is")?.to_owned();
    let mut shown = 0;
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let status = remote.get(&path).await?;
        let results = status["results"].as_array().cloned().unwrap_or_default();
        for r in results.iter().skip(shown) {
            match r["error"].as_str() {
                Some(e) => println!("FAILED {}: {e}", r["image"].as_str().unwrap_or("?")),
                None => println!(
                    "loaded {} {}",
                    r["image"].as_str().unwrap_or("?"),
                    r["digest"].as_str().unwrap_or("")
                ),
            }
        }
        shown = results.len();
        if status["state"] != "running" {
            let fetched = status["bytes"].as_u64().unwrap_or(0);
            let took = started.elapsed();
            println!(
                "server job {}: {}; {} fetched in {:.1}s ({})",
                status["id"],
                status["state"].as_str().unwrap_or("?"),
                bytes(fetched),
                took.as_secs_f64(),
                rate(fetched, took)
            );
            if status["state"] == "failed" {
                anyhow::bail!("{} of {} images failed", status["failed"], status["images"]);
            }
            return Ok(());
        }
    }
}
