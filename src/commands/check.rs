//! `ociregistry check`: will these workloads start offline?

use anyhow::{Result, bail};
use clap::Args;

use ociregistry::cache::Locator;
use ociregistry::cache::catalog::{Catalog, Missing};
use ociregistry::oci::ImageRef;

use super::{Input, bytes, print_rows, read_inputs};

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Image lists (one reference per line), comma-separated or globs
    #[arg(long, value_name = "FILE,...")]
    image_file: Vec<String>,
    /// Image references to check, besides those in --image-file
    images: Vec<String>,
    /// Platforms an index must hold complete: all, or a list such as
    /// linux/amd64,linux/arm64 [default: the host's, or --os/--arch]
    #[arg(long, value_name = "LIST")]
    platform: Option<String>,
    /// Operating system to check for [file: os]
    #[arg(long)]
    os: Option<String>,
    /// Architecture to check for [file: arch]
    #[arg(long)]
    arch: Option<String>,
    /// One JSON document instead of lines
    #[arg(long)]
    json: bool,
}

struct Verdict {
    image: ImageRef,
    size: u64,
    missing: Vec<String>,
}

pub fn run(catalog: &Catalog, args: &CheckArgs, os: Option<&str>, arch: Option<&str>) -> Result<()> {
    let platforms =
        super::platforms(args.platform.as_deref(), args.os.as_deref().or(os), args.arch.as_deref().or(arch))?;
    let mut verdicts = Vec::new();
    for input in read_inputs(&args.image_file, &args.images)? {
        let Input::Image(image) = input else {
            bail!("check takes image lists and references, not archives");
        };
        let loc = Locator { registry: image.registry.clone(), repo: image.repo.clone() };
        let (size, missing) = match catalog.find(&loc, image.tag.as_ref(), image.digest.as_ref()) {
            Some(cached) => (
                cached.size,
                catalog.missing_for(cached, &platforms).iter().map(Missing::to_string).collect(),
            ),
            None => (0, vec!["not cached".to_owned()]),
        };
        verdicts.push(Verdict { image, size, missing });
    }
    if verdicts.is_empty() {
        bail!("nothing to check: give --image-file FILE or image references");
    }
    let incomplete = verdicts.iter().filter(|v| !v.missing.is_empty()).count();
    if args.json {
        let list: Vec<serde_json::Value> = verdicts
            .iter()
            .map(|v| {
                serde_json::json!({
                    "image": v.image.to_string(),
                    "platforms": platforms.to_string(),
                    "complete": v.missing.is_empty(),
                    "size": v.size,
                    "missing": v.missing,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "complete": incomplete == 0, "images": list })
            )?
        );
    } else {
        let mut rows = Vec::new();
        for v in &verdicts {
            let status = if v.missing.is_empty() { "complete" } else { "MISSING" };
            let detail = if v.missing.is_empty() { bytes(v.size) } else { v.missing.join("; ") };
            rows.push(vec![status.to_owned(), v.image.to_string(), platforms.to_string(), detail]);
        }
        print_rows(&rows, true);
        println!(
            "{} of {} images complete for {platforms}{}",
            verdicts.len() - incomplete,
            verdicts.len(),
            if incomplete == 0 { ": they start offline" } else { "" }
        );
    }
    if incomplete > 0 {
        bail!("{incomplete} of {} images are not complete in the cache", verdicts.len());
    }
    Ok(())
}
