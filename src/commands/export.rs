//! `ociregistry export`: images out of the cache as an oci-archive, to carry
//! across an air gap and `load` on the other side (or `skopeo copy`,
//! `ctr import`).

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;

use ociregistry::cache::Store;
use ociregistry::cache::archive::{ExportImage, export};
use ociregistry::cache::catalog::{Catalog, Image};
use ociregistry::cache::prune::Selection;
use ociregistry::cache::store::StoredManifest;
use ociregistry::cache::{Locator, catalog};

use super::{Input, bytes, rate, read_inputs};

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Image lists naming what to export (one reference per line), comma-separated or globs
    #[arg(long, value_name = "FILE,...")]
    image_file: Vec<String>,
    /// Image references to export, besides those in --image-file
    images: Vec<String>,
    /// Also export images whose name matches one of these comma-separated regular expressions
    #[arg(long, value_name = "REGEX,...")]
    pattern: Option<String>,
    /// Export every image in the cache
    #[arg(long)]
    all: bool,
    /// Where to write the oci-archive (a tar); `-` for standard output
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
}

/// The images chosen, in catalog order.
fn choose<'a>(catalog: &'a Catalog, args: &ExportArgs) -> Result<Vec<&'a Image>> {
    let mut chosen: Vec<&Image> = Vec::new();
    let patterns = match &args.pattern {
        Some(p) => Selection::patterns(p).context("--pattern")?,
        None => Vec::new(),
    };
    let selection = Selection { patterns, ..Selection::default() };
    for i in &catalog.images {
        if args.all || (!selection.is_empty() && selection.matches(i)) {
            chosen.push(i);
        }
    }
    for input in read_inputs(&args.image_file, &args.images)? {
        let Input::Image(r) = input else { bail!("export takes image lists and references, not archives") };
        let loc = Locator { registry: r.registry.clone(), repo: r.repo.clone() };
        let image = catalog
            .find(&loc, r.tag.as_ref(), r.digest.as_ref())
            .with_context(|| format!("{r} is not in the cache (see `ociregistry list`)"))?;
        if !chosen.iter().any(|c| std::ptr::eq(*c, image)) {
            chosen.push(image);
        }
    }
    if chosen.is_empty() {
        bail!("nothing to export: give image references, --image-file, --pattern or --all");
    }
    Ok(chosen)
}

fn read_manifests(store: &dyn Store, image: &Image) -> Result<Vec<StoredManifest>> {
    let wanted: std::collections::HashSet<_> = image.manifests.iter().collect();
    let mut found: Vec<StoredManifest> =
        store.manifests().into_iter().flatten().filter(|m| wanted.contains(&m.digest)).collect();
    found.sort_by_key(|m| image.manifests.iter().position(|d| *d == m.digest));
    if found.len() != image.manifests.len() {
        bail!("{}: a manifest went missing while exporting (pruned meanwhile?)", image.name());
    }
    Ok(found)
}

pub fn run(store: &dyn Store, args: &ExportArgs) -> Result<()> {
    let started = Instant::now();
    let catalog = Catalog::load(store);
    let chosen = choose(&catalog, args)?;
    let mut images = Vec::new();
    for image in &chosen {
        if let Some(m) = image.missing.iter().find(|m| matches!(m, catalog::Missing::Blob { .. })) {
            bail!("{} is incomplete in the cache ({m}); pull or load it first", image.name());
        }
        if !image.missing.is_empty() {
            eprintln!(
                "note: {} is exported with the platforms it has cached ({} of its index are not cached)",
                image.name(),
                image.missing.len()
            );
        }
        let blobs = image
            .blobs
            .iter()
            .map(|d| {
                catalog
                    .blob_len(d)
                    .map(|len| (d.clone(), len))
                    .with_context(|| format!("{}: blob {d} is missing", image.name()))
            })
            .collect::<Result<Vec<_>>>()?;
        images.push(ExportImage { name: image.name(), manifests: read_manifests(store, image)?, blobs });
    }
    let total: u64 = {
        let mut seen = std::collections::HashSet::new();
        images.iter().flat_map(|i| &i.blobs).filter(|(d, _)| seen.insert(d.clone())).map(|(_, l)| l).sum()
    };
    let bar = super::progress_bar(total);
    let written = std::sync::atomic::AtomicU64::new(0);
    let on_bytes = |n: u64| {
        written.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        bar.inc(n);
    };
    if args.output.as_os_str() == "-" {
        let mut out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
        export(store, &images, &mut out, &on_bytes)?;
        out.flush().context("writing to standard output")?;
    } else {
        // Written beside the target and renamed: a cut-short export never looks whole.
        let mut part = args.output.clone().into_os_string();
        part.push(".part");
        let part = PathBuf::from(part);
        let file = std::fs::File::create(&part).with_context(|| format!("creating {}", part.display()))?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        let result = export(store, &images, &mut out, &on_bytes)
            .and_then(|()| out.into_inner().map_err(|e| e.into_error()).context("writing the archive"))
            .and_then(|f| f.sync_all().context("syncing the archive"))
            .and_then(|()| {
                std::fs::rename(&part, &args.output)
                    .with_context(|| format!("renaming into {}", args.output.display()))
            });
        if let Err(e) = result {
            let _ = std::fs::remove_file(&part);
            return Err(e);
        }
    }
    bar.finish_and_clear();
    let n = written.load(std::sync::atomic::Ordering::Relaxed);
    let took = started.elapsed();
    eprintln!(
        "exported {} images ({}) to {} in {:.1}s ({})",
        images.len(),
        bytes(n),
        args.output.display(),
        took.as_secs_f64(),
        rate(n, took)
    );
    for i in &images {
        eprintln!("  {}", i.name);
    }
    Ok(())
}
