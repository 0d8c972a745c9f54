//! `ociregistry prune`: remove images by name, age or last pull.

use anyhow::{Context, Result};
use clap::Args;

use ociregistry::cache::Store;
use ociregistry::cache::catalog::Catalog;
use ociregistry::cache::prune::{ORPHAN_GRACE, Plan, Selection, apply};

use super::{bytes, date, time_arg};

#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Images whose name (registry/repo:tag or registry/repo@digest) matches
    /// one of these comma-separated regular expressions
    #[arg(long, value_name = "REGEX,...")]
    pattern: Option<String>,
    /// Images cached before this date (2024-03-01T22:17:31, UTC)
    #[arg(long, value_name = "DATE", conflicts_with = "older_than")]
    date: Option<String>,
    /// Images cached longer ago than this (30d, 12h)
    #[arg(long, value_name = "DURATION")]
    older_than: Option<String>,
    /// Images not pulled since this date, or for this long (7d); never
    /// pulled counts from when they were cached
    #[arg(long, value_name = "DATE|DURATION")]
    accessed_before: Option<String>,
    /// Show exactly what would go, and how many bytes, without removing anything
    #[arg(long)]
    dry_run: bool,
    /// Ask a running server's admin API (e.g. http://127.0.0.1:9091) to prune
    /// instead of working on the directory; the token comes from $OCIREGISTRY_ADMIN_TOKEN
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
}

pub fn selection(args: &PruneArgs) -> Result<Selection> {
    Ok(Selection {
        patterns: match &args.pattern {
            Some(p) => Selection::patterns(p).context("--pattern")?,
            None => Vec::new(),
        },
        created_before: match (&args.date, &args.older_than) {
            (Some(d), _) => Some(time_arg("--date", d)?),
            (None, Some(d)) => Some(time_arg("--older-than", d)?),
            (None, None) => None,
        },
        accessed_before: args
            .accessed_before
            .as_deref()
            .map(|a| time_arg("--accessed-before", a))
            .transpose()?,
    })
}

pub fn run(store: &dyn Store, args: &PruneArgs) -> Result<()> {
    let selection = selection(args)?;
    let catalog = Catalog::load(store);
    let doomed = selection.pick(&catalog, None);
    let plan = Plan::new(&catalog, store, &doomed, ORPHAN_GRACE);
    let verb = if args.dry_run { "would remove" } else { "removing" };
    if selection.is_empty() {
        println!(
            "no --pattern, --date/--older-than or --accessed-before: only content no image uses (orphans) and stale partial downloads go"
        );
    }
    for i in &plan.images {
        println!(
            "{verb} {} (cached {}, pulled {}, {})",
            i.name(),
            date(i.created),
            date(i.pulled),
            bytes(i.size)
        );
    }
    let summary = format!(
        "{} images, {} manifests, {} blobs ({} used by no image), {}",
        plan.images.len(),
        plan.manifests.len(),
        plan.blobs.len(),
        plan.orphans,
        bytes(plan.bytes)
    );
    if args.dry_run {
        println!("dry run: would remove {summary}");
        return Ok(());
    }
    let Some(_turn) = store.claim_pruning().context("claiming the turn to prune")? else {
        anyhow::bail!("another replica is pruning the shared cache now; try again in a moment");
    };
    let done = apply(store, &plan);
    println!(
        "removed {} images, {} manifests, {} blobs and {} stale partial downloads: {} freed",
        done.images,
        done.manifests,
        done.blobs,
        done.partials,
        bytes(done.bytes)
    );
    if !done.errors.is_empty() {
        for e in &done.errors {
            println!("could not remove: {e}");
        }
        anyhow::bail!("{} removals failed", done.errors.len());
    }
    Ok(())
}

/// `prune --server`: the same selection, carried out by the running server.
pub async fn run_remote(remote: &super::remote::Remote, args: &PruneArgs) -> Result<()> {
    let selection = selection(args)?;
    if selection.is_empty() {
        anyhow::bail!(
            "give --pattern, --date/--older-than or --accessed-before (a server prunes orphans on its own)"
        );
    }
    let date = |t: std::time::SystemTime| humantime::format_rfc3339_seconds(t).to_string();
    let body = serde_json::json!({
        "pattern": args.pattern,
        "createdBefore": selection.created_before.map(date),
        "accessedBefore": selection.accessed_before.map(date),
        "dryRun": args.dry_run,
    });
    let answer = remote.post("/api/v1/prune", &body).await?;
    let verb = if args.dry_run { "would remove" } else { "removed" };
    for name in answer["images"].as_array().into_iter().flatten().filter_map(|n| n.as_str()) {
        println!("{verb} {name}");
    }
    println!(
        "{verb} {} images, {} manifests, {} blobs: {}",
        answer["images"].as_array().map_or(0, Vec::len),
        answer["manifests"],
        answer["blobs"],
        bytes(answer["freed"].as_u64().or(answer["bytes"].as_u64()).unwrap_or(0))
    );
    let errors: Vec<&str> =
        answer["errors"].as_array().into_iter().flatten().filter_map(|e| e.as_str()).collect();
    if !errors.is_empty() {
        for e in &errors {
            println!("could not remove: {e}");
        }
        anyhow::bail!("{} removals failed", errors.len());
    }
    Ok(())
}
