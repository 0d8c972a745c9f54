//! `ociregistry list`: the images in the cache.

use anyhow::{Context, Result};
use clap::Args;

use ociregistry::cache::catalog::{Catalog, Summary};
use ociregistry::cache::prune::Selection;

use super::remote::Remote;
use super::{bytes, is_terminal, print_rows};

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Only images whose name (registry/repo:tag or registry/repo@digest)
    /// matches one of these comma-separated regular expressions
    #[arg(long, value_name = "REGEX,...")]
    pub pattern: Option<String>,
    /// Print a header line when piped (a terminal always gets one)
    #[arg(long)]
    header: bool,
    /// Cut digests to their first 10 hex characters
    #[arg(long)]
    short_digest: bool,
    /// One JSON document: every image with its platforms, manifests, blobs and what is missing
    #[arg(long)]
    json: bool,
    /// Ask a running server's admin API (e.g. http://127.0.0.1:9091) instead
    /// of reading the directory; the token comes from $OCIREGISTRY_ADMIN_TOKEN
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
}

/// The reference's type words for the root manifest's media type.
fn kind(s: &Summary) -> &'static str {
    match (s.media_type.contains("docker"), s.index) {
        (true, true) => "docker-list",
        (true, false) => "docker-manifest",
        (false, true) => "oci-index",
        (false, false) => "oci-manifest",
    }
}

/// The images to list: the directory's, or a running server's (`--server`).
pub fn summaries(catalog: &Catalog, pattern: Option<&str>) -> Result<Vec<Summary>> {
    let patterns = Selection::patterns(pattern.unwrap_or("")).context("--pattern")?;
    let selection = Selection { patterns, ..Selection::default() };
    Ok(catalog.images.iter().filter(|i| selection.matches(i)).map(|i| i.summary()).collect())
}

pub async fn remote_summaries(remote: &Remote, pattern: Option<&str>) -> Result<Vec<Summary>> {
    Selection::patterns(pattern.unwrap_or("")).context("--pattern")?;
    let query: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("pattern", pattern.unwrap_or(""))
        .finish();
    let list = remote.get(&format!("/api/v1/images?{query}")).await?;
    serde_json::from_value(list).context("the server's image list is not in the expected shape")
}

pub fn print(images: &[Summary], args: &ListArgs, total: Option<u64>) -> Result<()> {
    if args.json {
        println!("{}", serde_json::to_string_pretty(images)?);
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
    for i in images {
        let reference = match (&i.tag, args.short_digest) {
            (Some(t), _) => t.clone(),
            (None, true) => {
                let hex = i.digest.split_once(':').map_or(i.digest.as_str(), |(_, h)| h);
                hex.get(..10).unwrap_or(hex).to_owned()
            }
            (None, false) => i.digest.clone(),
        };
        let mut row = vec![
            i.image.clone(),
            reference,
            kind(i).to_owned(),
            i.created.clone().unwrap_or_else(|| "-".into()),
            i.pulled.clone().unwrap_or_else(|| "-".into()),
            format!("{:.1}", i.size as f64 / 1_000_000.0),
        ];
        if terminal {
            row.push(if i.platforms.is_empty() { "-".into() } else { i.platforms.join(",") });
        }
        rows.push(row);
    }
    print_rows(&rows, terminal);
    if terminal {
        let cached = total.map(|t| format!(", {} in the cache", bytes(t))).unwrap_or_default();
        println!("\n{} images{cached}", images.len());
    }
    Ok(())
}
