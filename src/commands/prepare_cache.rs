//! `ociregistry prepare-cache`: the cache directory made ready for a server
//! that runs as another user. The kubelet creates a missing `hostPath`
//! directory owned by root, and a cache the reference server (or an earlier
//! root run) wrote is root's too; `fsGroup` does not apply to `hostPath`. The
//! Helm chart runs this as root, with only the capabilities it needs, in an
//! init container of the server's own image: no other image to pull at a
//! site that cannot.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;

#[derive(Args, Debug)]
pub struct PrepareCacheArgs {
    /// The user and group to give the cache to, as numbers: UID:GID
    #[arg(long, value_name = "UID:GID")]
    pub owner: String,
    /// The cache directory (created if missing)
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

/// What a run changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Prepared {
    pub changed: u64,
    /// Files with other hard links, left alone: giving one away would give
    /// away the file it is also linked as, wherever that is.
    pub skipped_links: Vec<PathBuf>,
}

pub fn run(args: &PrepareCacheArgs) -> Result<()> {
    let (uid, gid) = parse_owner(&args.owner)?;
    let done = prepare(&args.dir, uid, gid)?;
    for p in &done.skipped_links {
        eprintln!("left {}: it has other hard links", p.display());
    }
    println!("{}: {} entries given to {uid}:{gid}", args.dir.display(), done.changed);
    Ok(())
}

fn parse_owner(s: &str) -> Result<(u32, u32)> {
    let parsed = s.split_once(':').and_then(|(u, g)| Some((u.parse().ok()?, g.parse().ok()?)));
    parsed.with_context(|| format!("--owner: '{s}' is not UID:GID in numbers, such as 65532:65532"))
}

/// Creates `dir` if missing and gives it, and everything under it that is
/// not the owner's already, to `uid:gid`. When `dir` itself is theirs,
/// nothing below is looked at (as the kubelet's `OnRootMismatch`): a
/// restart costs one `stat`. Symbolic links are changed themselves, never
/// followed; the walk stays on `dir`'s filesystem.
pub fn prepare(dir: &Path, uid: u32, gid: u32) -> Result<Prepared> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let meta = std::fs::symlink_metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
    if !meta.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let mut done = Prepared::default();
    if (meta.uid(), meta.gid()) == (uid, gid) {
        return Ok(done);
    }
    for entry in walkdir::WalkDir::new(dir).follow_links(false).same_file_system(true) {
        let entry = entry.with_context(|| format!("walking {}", dir.display()))?;
        let meta = entry.metadata().with_context(|| format!("reading {}", entry.path().display()))?;
        if (meta.uid(), meta.gid()) == (uid, gid) {
            continue;
        }
        if meta.is_file() && meta.nlink() > 1 {
            done.skipped_links.push(entry.path().to_owned());
            continue;
        }
        std::os::unix::fs::lchown(entry.path(), Some(uid), Some(gid))
            .with_context(|| format!("giving {} to {uid}:{gid}", entry.path().display()))?;
        done.changed += 1;
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_is_two_numbers() {
        assert_eq!(parse_owner("65532:65532").unwrap(), (65532, 65532));
        for bad in ["65532", "nonroot:nonroot", "1:2:3", ""] {
            assert!(format!("{:#}", parse_owner(bad).unwrap_err()).contains("--owner"), "{bad}");
        }
    }
}
