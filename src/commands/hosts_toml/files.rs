//! Writing the files atomically with the operator's own kept aside, and
//! putting them back.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::*;

/// `node_path` (absolute on the node) under `root`.
pub(super) fn under_root(root: &Path, node_path: &Path) -> PathBuf {
    let relative: PathBuf =
        node_path.components().filter(|c| matches!(c, std::path::Component::Normal(_))).collect();
    root.join(relative)
}

pub(super) fn backup_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(BACKUP_SUFFIX);
    PathBuf::from(s)
}

pub(super) fn is_ours(bytes: &[u8]) -> bool {
    bytes.starts_with(MARKER.as_bytes())
}

/// `Ok(None)` when the file does not exist.
pub(super) fn read_if_exists(path: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Wrote {
    Created,
    /// A file this command wrote before, rewritten.
    Updated,
    Unchanged,
    /// Someone else's file, now kept as `backup`.
    Replaced {
        backup: PathBuf,
    },
}

/// Writes `contents` to `path` atomically (temporary file, fsync, rename),
/// creating directories. A file already there that this command did not write
/// is first kept as `<path>.ociregistry-backup` (a hard link, so the original
/// stays in place until the rename replaces it); a backup is made once.
pub(super) fn write_file(path: &Path, contents: &str) -> Result<Wrote> {
    let dir = path.parent().with_context(|| format!("{} has no parent directory", path.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let backup = backup_path(path);
    let mut outcome = Wrote::Created;
    let mut mode = 0o644;
    if let Some(old) = read_if_exists(path)? {
        if old == contents.as_bytes() {
            return Ok(Wrote::Unchanged);
        }
        mode = std::fs::metadata(path)
            .map_or(mode, |m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()));
        if is_ours(&old) {
            outcome = Wrote::Updated;
        } else {
            refuse_to_replace(path)?;
            // A backup equal to this very file is from a write that stopped half-way.
            if read_if_exists(&backup)?.is_none() {
                keep_as_backup(path, &backup)?;
            }
            outcome = Wrote::Replaced { backup };
        }
    }
    atomic_write(path, contents.as_bytes(), mode)?;
    Ok(outcome)
}

/// Errs when `path` holds a file this command did not write while its backup
/// holds another one: replacing it would lose one of them.
pub(super) fn refuse_to_replace(path: &Path) -> Result<()> {
    let Some(current) = read_if_exists(path)? else { return Ok(()) };
    if is_ours(&current) {
        return Ok(());
    }
    let backup = backup_path(path);
    match read_if_exists(&backup)? {
        Some(b) if b != current => bail!(
            "{} was not written by ociregistry hosts-toml, and {} already holds an earlier file: \
             move one of them away, then run again",
            path.display(),
            backup.display()
        ),
        _ => Ok(()),
    }
}

pub(super) fn keep_as_backup(path: &Path, backup: &Path) -> Result<()> {
    if std::fs::hard_link(path, backup).is_err() {
        // A file system without hard links: a copy, synced.
        std::fs::copy(path, backup)
            .with_context(|| format!("keeping {} as {}", path.display(), backup.display()))?;
        std::fs::File::open(backup)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("syncing {}", backup.display()))?;
    }
    Ok(())
}

pub(super) fn atomic_write(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let dir = path.parent().with_context(|| format!("{} has no parent directory", path.display()))?;
    let name = path.file_name().with_context(|| format!("{} has no file name", path.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".ociregistry-tmp-{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(bytes).with_context(|| format!("writing {}", tmp.display()))?;
        f.sync_all().with_context(|| format!("syncing {}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

pub(super) fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("syncing {}", dir.display()))
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Removal {
    Deleted,
    Restored,
    /// There, but not written by this command: left alone.
    NotOurs,
    Absent,
}

/// Undoes [`write_file`]: removes the file if this command wrote it, and puts
/// a backup back (a rename: the original bytes, owner and mode).
pub(super) fn remove_file(path: &Path) -> Result<Removal> {
    let backup = backup_path(path);
    let has_backup = std::fs::symlink_metadata(&backup).is_ok();
    let restore = || -> Result<Removal> {
        std::fs::rename(&backup, path)
            .with_context(|| format!("restoring {} from {}", path.display(), backup.display()))?;
        Ok(Removal::Restored)
    };
    let outcome = match read_if_exists(path)? {
        Some(b) if is_ours(&b) => {
            if has_backup {
                restore()?
            } else {
                std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
                Removal::Deleted
            }
        }
        Some(_) => return Ok(Removal::NotOurs),
        None if has_backup => restore()?,
        None => return Ok(Removal::Absent),
    };
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(outcome)
}
