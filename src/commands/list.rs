//! `ociregistry list`: the images in the cache.

use anyhow::{Context, Result};
use clap::Args;

use ociregistry::cache::catalog::{Catalog, Image};
use ociregistry::cache::prune::Selection;
use ociregistry::oci::ManifestKind;

use super::{bytes, date, is_terminal, print_rows};

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Only images whose name (registry/repo:tag or registry/repo@digest)
    /// matches one of these comma-separated regular expressions
    #[arg(long, value_name = "REGEX,...")]
    pattern: Option<String>,
    /// Print a header line when piped (a terminal always gets one)
    #[arg(long)]
    header: bool,
    /// Cut digests to their first 10 hex characters
    #[arg(long)]
    short_digest: bool,
    /// One JSON document: every image with its platforms, manifests, blobs and what is missing
    #[arg(long)]
    json: bool,
}

/// The reference's type words for the root manifest's media type.
fn kind(image: &Image) -> &'static str {
    let m = image.media_type.as_str();
    match (m.contains("docker"), image.kind) {
        (true, ManifestKind::Index) => "docker-list",
        (true, ManifestKind::Image) => "docker-manifest",
        (false, ManifestKind::Index) => "oci-index",
        (false, ManifestKind::Image) => "oci-manifest",
    }
}

pub fn run(catalog: &Catalog, args: &ListArgs) -> Result<()> {
    let patterns = match &args.pattern {
        Some(p) => Selection::patterns(p).context("--pattern")?,
        None => Vec::new(),
    };
    let selection = Selection { patterns, ..Selection::default() };
    let images: Vec<&Image> = catalog.images.iter().filter(|i| selection.matches(i)).collect();
    if args.json {
        let list: Vec<serde_json::Value> = images
            .iter()
            .map(|i| {
                serde_json::json!({
                    "name": i.name(),
                    "registry": i.loc.registry.as_str(),
                    "repository": i.loc.repo.as_str(),
                    "tag": i.tag.as_ref().map(|t| t.as_str()),
                    "digest": i.digest.to_string(),
                    "mediaType": i.media_type,
                    "platforms": i.platforms.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "size": i.size,
                    "created": i.created.map(|t| date(Some(t))),
                    "pulled": i.pulled.map(|t| date(Some(t))),
                    "manifests": i.manifests.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "blobs": i.blobs.len(),
                    "complete": i.missing.is_empty(),
                    "missing": i.missing.iter().map(ToString::to_string).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    let terminal = is_terminal();
    let mut rows = Vec::new();
    if terminal || args.header {
        let mut header = vec!["IMAGE", "TAG/DIGEST", "TYPE", "CREATED", "PULLED", "SIZE(MB)"];
        if terminal {
            header.push("PLATFORMS");
        }
        rows.push(header.into_iter().map(String::from).collect());
    }
    for i in &images {
        let reference = match (&i.tag, args.short_digest) {
            (Some(t), _) => t.to_string(),
            (None, true) => i.digest.hex()[..10].to_owned(),
            (None, false) => i.digest.to_string(),
        };
        let mut row = vec![
            i.loc.to_string(),
            reference,
            kind(i).to_owned(),
            date(i.created),
            date(i.pulled),
            format!("{:.1}", i.size as f64 / 1_000_000.0),
        ];
        if terminal {
            let platforms: Vec<String> = i.platforms.iter().map(ToString::to_string).collect();
            row.push(if platforms.is_empty() { "-".into() } else { platforms.join(",") });
        }
        rows.push(row);
    }
    print_rows(&rows, terminal);
    if terminal {
        let total: u64 = catalog.total_bytes();
        println!("\n{} images, {} in the cache", images.len(), bytes(total));
    }
    Ok(())
}
