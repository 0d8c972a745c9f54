//! The managed-cache commands (`load`, `check`, `list`, `prune`, `export`):
//! what they print and how they choose images. Each works on the cache
//! directory directly, safely beside a running server on it. Besides them,
//! `hosts-toml` writes the node side: the runtimes' mirror configuration; and
//! `prepare-cache` hands a root-owned cache directory to the server's user.

pub mod check;
pub mod export;
pub mod hosts_toml;
pub mod list;
pub mod load;
pub mod prepare_cache;
pub mod prune;
pub mod remote;
pub mod wait_daemonset;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};

use ociregistry::cache::catalog::Platforms;
use ociregistry::oci::{ImageRef, Platform};

/// What `--image-file` and positional arguments name.
#[derive(Debug)]
pub enum Input {
    Image(ImageRef),
    Archive(PathBuf),
}

/// Expands comma-separated lists and globs, then reads each file: an
/// archive (docker-save, OCI layout, oci-archive, gzip) is an input of its
/// own; anything else is an image list.
pub fn read_inputs(files: &[String], images: &[String]) -> Result<Vec<Input>> {
    let mut out = Vec::new();
    for pattern in files.iter().flat_map(|f| f.split(',')).map(str::trim).filter(|p| !p.is_empty()) {
        let mut matched = false;
        for path in
            glob::glob(pattern).with_context(|| format!("--image-file: '{pattern}' is not a valid glob"))?
        {
            let path = path.with_context(|| format!("--image-file: reading a match of '{pattern}'"))?;
            matched = true;
            if is_archive(&path)? {
                out.push(Input::Archive(path));
            } else {
                out.extend(read_image_list(&path)?.into_iter().map(Input::Image));
            }
        }
        if !matched {
            bail!("--image-file: nothing matches '{pattern}'");
        }
    }
    for i in images {
        out.push(Input::Image(
            ImageRef::parse(i).with_context(|| format!("'{i}' is not an image reference"))?,
        ));
    }
    Ok(out)
}

/// One reference per line; `#` starts a comment; blank lines are skipped.
pub fn read_image_list(path: &Path) -> Result<Vec<ImageRef>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading image list {} (one image reference per line)", path.display()))?;
    let mut refs = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let r = ImageRef::parse(line).with_context(|| {
            format!("{} line {}: '{line}' is not an image reference", path.display(), n + 1)
        })?;
        refs.push(r);
    }
    Ok(refs)
}

/// A directory (an OCI layout), a gzip stream or a tar: by content, not by name.
fn is_archive(path: &Path) -> Result<bool> {
    if path.is_dir() {
        return Ok(true);
    }
    let mut head = [0u8; 512];
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let n = std::os::unix::fs::FileExt::read_at(&f, &mut head, 0)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(head[..n].starts_with(&[0x1f, 0x8b]) || (n >= 262 && &head[257..262] == b"ustar"))
}

/// `--platform` (`all` or a list), else `--os`/`--arch` (the reference's
/// flags and config keys), else the host's.
pub fn platforms(platform: Option<&str>, os: Option<&str>, arch: Option<&str>) -> Result<Platforms> {
    if let Some(p) = platform {
        return Platforms::parse(p).map_err(|e| anyhow::anyhow!("--platform: {e}"));
    }
    let host = Platform::host();
    let p = format!("{}/{}", os.unwrap_or(&host.os), arch.unwrap_or(&host.architecture));
    Platforms::parse(&p).map_err(|e| anyhow::anyhow!("--os/--arch: {e}"))
}

/// `30d`, `12h`, `90m` ago, or a date (`2024-03-01T22:17:31`, UTC, or RFC 3339).
pub fn time_arg(flag: &str, s: &str) -> Result<SystemTime> {
    if let Ok(d) = humantime::parse_duration(s) {
        return SystemTime::now()
            .checked_sub(d)
            .with_context(|| format!("{flag}: '{s}' reaches before 1970"));
    }
    humantime::parse_rfc3339_weak(s).with_context(|| {
        format!("{flag}: '{s}' is neither a duration like 30d nor a date like 2024-03-01T22:17:31")
    })
}

/// A byte progress bar on stderr when it is a terminal; hidden otherwise
/// (the commands then print a plain line per step).
pub fn progress_bar(total: u64) -> indicatif::ProgressBar {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    let template =
        "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}";
    bar.set_style(ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()));
    bar
}

pub fn is_terminal() -> bool {
    std::io::stdout().is_terminal()
}

/// `2024-03-01T22:17:31Z`, or `-` when unknown (the reference's empty date).
pub fn date(t: Option<SystemTime>) -> String {
    t.map_or_else(|| "-".to_owned(), |t| humantime::format_rfc3339_seconds(t).to_string())
}

pub fn bytes(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}

pub fn rate(n: u64, took: Duration) -> String {
    format!("{}/s", bytes((n as f64 / took.as_secs_f64().max(0.001)) as u64))
}

/// Prints rows as aligned columns (a terminal) or single-space-separated
/// (a pipe: the reference's format, easy to `awk`).
pub fn print_rows(rows: &[Vec<String>], aligned: bool) {
    let widths: Vec<usize> = (0..rows.first().map_or(0, Vec::len))
        .map(|c| rows.iter().map(|r| r.get(c).map_or(0, |s| s.chars().count())).max().unwrap_or(0))
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(
                |(c, s)| {
                    if aligned && c + 1 < r.len() { format!("{s:<w$}", w = widths[c]) } else { s.clone() }
                },
            )
            .collect();
        println!("{}", line.join(if aligned { "  " } else { " " }).trim_end());
    }
}
