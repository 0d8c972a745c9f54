//! `cacheSize`, `minFreeDisk`, `pinned`, `pruneConfig`, `manifestCacheBytes` and the admin API's port and token.

use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::limits::parse_bytes;
use super::{AdminAuthFile, File};
use crate::cache::capacity::{Capacity, Pinned, PruneRule, PruneSchedule};
use crate::cache::prune::Selection;

pub(super) fn resolve_capacity(file: &File) -> Result<Capacity> {
    let size = |key: &str, v: &Option<String>| -> Result<Option<u64>> {
        v.as_deref()
            .map(|s| parse_bytes(s).with_context(|| format!("{key}: '{s}' is not a size like 20GiB")))
            .transpose()
    };
    let (max, target) = match &file.cache_size {
        Some(c) => (size("cacheSize.max", &c.max)?, size("cacheSize.target", &c.target)?),
        None => (None, None),
    };
    if target.is_some() && max.is_none() {
        bail!("cacheSize.target: give cacheSize.max too");
    }
    if let (Some(m), Some(t)) = (max, target)
        && t > m
    {
        bail!("cacheSize.target: must not be more than cacheSize.max");
    }
    let pinned =
        Pinned::new(&file.pinned).context("pinned: not a list of globs like 'docker.io/library/*:*'")?;
    Ok(Capacity {
        max,
        target,
        min_free_disk: size("minFreeDisk", &file.min_free_disk)?,
        pinned,
        pin_running: file.pin_running_images.unwrap_or(false),
    })
}

/// Manifest bodies kept in memory: a few MiB holds the manifests of the
/// images being pulled now; the rest wait in the page cache.
pub const DEFAULT_MANIFEST_CACHE_BYTES: u64 = 4 << 20;

pub(super) fn resolve_manifest_cache(file: &File) -> Result<u64> {
    match file.manifest_cache_bytes.as_deref() {
        None => Ok(DEFAULT_MANIFEST_CACHE_BYTES),
        Some(s) => {
            parse_bytes(s).with_context(|| format!("manifestCacheBytes: '{s}' is not a size like 4MiB"))
        }
    }
}

/// Go durations plus `d` for days (`30d`, `12h`, `1d12h`).
fn duration(key: &str, v: &str) -> Result<Duration> {
    humantime::parse_duration(v).with_context(|| format!("{key}: '{v}' is not a duration like 30d or 12h"))
}

pub(super) fn resolve_prune(file: &File) -> Result<Option<PruneSchedule>> {
    let Some(p) = &file.prune_config else { return Ok(None) };
    if !p.enabled.unwrap_or(false) {
        return Ok(None);
    }
    // The reference read these values case-insensitively.
    let kind = p.kind.as_deref().map(str::to_ascii_lowercase);
    let rule = match kind.as_deref() {
        Some("accessed") | Some("created") => {
            let d = p
                .duration
                .as_deref()
                .context("pruneConfig.duration: required with type accessed or created")?;
            let d = duration("pruneConfig.duration", d)?;
            if kind.as_deref() == Some("accessed") { PruneRule::Accessed(d) } else { PruneRule::Created(d) }
        }
        Some("pattern") => {
            let expr = p.expr.as_deref().context("pruneConfig.expr: required with type pattern")?;
            let patterns =
                Selection::patterns(expr).with_context(|| format!("pruneConfig.expr: '{expr}'"))?;
            if patterns.is_empty() {
                bail!("pruneConfig.expr: no pattern given");
            }
            PruneRule::Pattern(patterns)
        }
        Some(other) => bail!("pruneConfig.type: '{other}' must be accessed, created or pattern"),
        None => bail!("pruneConfig.type: required (accessed, created or pattern)"),
    };
    let every = duration("pruneConfig.frequency", p.frequency.as_deref().unwrap_or("1d"))?;
    if every < Duration::from_secs(1) {
        bail!("pruneConfig.frequency: must be at least 1s");
    }
    let count = match p.count {
        // 0 is how the reference said "no limit" too.
        None | Some(-1) | Some(0) => None,
        Some(n) if n > 0 => Some(n as usize),
        Some(n) => bail!("pruneConfig.count: {n} must be more than 0, or -1 (or 0) for no limit"),
    };
    Ok(Some(PruneSchedule { rule, every, count, dry_run: p.dry_run.unwrap_or(false) }))
}

/// The admin API's bearer token, read once at start-up.
pub(super) fn resolve_admin_token(f: Option<&AdminAuthFile>) -> Result<Option<String>> {
    let Some(f) = f else { return Ok(None) };
    let token = match (&f.token_file, &f.token_from_env) {
        (Some(path), None) => std::fs::read_to_string(path)
            .with_context(|| format!("adminAuth.tokenFile: reading {}", path.display()))?,
        (None, Some(var)) => {
            std::env::var(var).with_context(|| format!("adminAuth.tokenFromEnv: ${var} is not set"))?
        }
        (Some(_), Some(_)) => bail!("adminAuth: give tokenFile or tokenFromEnv, not both"),
        (None, None) => return Ok(None),
    };
    let token = token.trim().to_owned();
    if token.len() < 16 {
        bail!("adminAuth: the token must be at least 16 characters");
    }
    Ok(Some(token))
}
