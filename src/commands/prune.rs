//! `ociregistry prune`: remove images by name, age or last pull.

use std::collections::HashSet;

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
    let doomed: HashSet<usize> = catalog
        .images
        .iter()
        .enumerate()
        .filter(|(_, i)| !selection.is_empty() && selection.matches(i))
        .map(|(n, _)| n)
        .collect();
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
