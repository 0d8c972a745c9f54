//! The filesystem backend: the `imagePath` directory (see `layout.rs`).
//!
//! Commits are fsync, rename, fsync of the directory: after a crash a blob
//! is either whole at its final name or absent. A partial download is
//! `tmp/<alg>-<hex>.partial`, held with `flock` so two processes sharing the
//! directory never write the same one; the second writes a fresh temp file.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use bytes::Bytes;
use tracing::{debug, warn};

use super::{Committed, Listing, Partial, ReadAt, Skipped, Store, StoredManifest, StoredTag, unix_secs};
use crate::cache::Locator;
use crate::cache::store::layout::{LINKS_FILE, Layout, PULLED_FILE, TAGS_DIR};
use crate::oci::{Digest, RegistryHost, RepoName, Tag};

/// A committed blob's file. It is never written again: removal is an
/// unlink and quarantine a rename, both of which leave a mapping intact.
struct CommittedBlob(File);

impl ReadAt for CommittedBlob {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> std::io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(&self.0, buf, pos)
    }

    /// Served straight from the page cache: the socket write copies from the
    /// mapping, with no read into a buffer first. Each window is its own map,
    /// unmapped when the response has sent it, so RSS stays flat.
    fn map(&self, pos: u64, len: usize) -> Option<std::io::Result<Bytes>> {
        // SAFETY: the file is a committed blob, which this process and the
        // others sharing the directory never write or truncate again (see
        // the type's comment); only an operator truncating files under a
        // running server could turn the mapping short (SIGBUS).
        let mapped = unsafe { memmap2::MmapOptions::new().offset(pos).len(len).map(&self.0) };
        Some(mapped.map(|m| {
            // Read-ahead for the whole window now, not page by page as the socket copies.
            let _ = m.advise(memmap2::Advice::WillNeed);
            Bytes::from_owner(m)
        }))
    }
}

/// Temp files older than this are left-overs of a crash, not a live fill of
/// another instance sharing the directory.
const STALE_TEMP_AGE: Duration = Duration::from_secs(3600);
/// Interrupted downloads are kept this long for a later fill to resume.
const STALE_PARTIAL_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// A pull-time file is compacted (latest line per reference) past this size.
const PULLED_COMPACT_BYTES: u64 = 64 * 1024;

pub struct FsStore {
    layout: Layout,
}

impl FsStore {
    pub fn new(root: impl Into<PathBuf>) -> FsStore {
        FsStore { layout: Layout::new(root) }
    }

    /// Writes `contents` to `target` through a temp file and a rename.
    fn write_atomically(&self, target: &Path, contents: &[&[u8]]) -> std::io::Result<()> {
        let temp = self.layout.temp_file("meta");
        let result = (|| {
            let mut f = File::create(&temp)?;
            for c in contents {
                f.write_all(c)?;
            }
            publish(&f, &temp, target)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        result
    }

    fn sweep(&self) {
        let (n, _) = self.sweep_partials();
        if n > 0 {
            debug!(files = n, "removed stale partial downloads");
        }
    }

    /// Rewrites a repository's pull-time file with the latest time per reference.
    fn write_pulls(&self, path: &Path, pulls: &[(String, SystemTime)]) -> std::io::Result<()> {
        if pulls.is_empty() {
            return remove_if_present(path);
        }
        let text: String = pulls.iter().map(|(r, at)| format!("{r} {}\n", unix_secs(*at))).collect();
        self.write_atomically(path, &[text.as_bytes()])
    }

    fn quarantine(&self, path: &Path, d: &Digest, suffix: &str) -> std::io::Result<()> {
        std::fs::create_dir_all(self.layout.quarantine())?;
        let mut target = self.layout.quarantined(d).into_os_string();
        target.push(suffix);
        std::fs::rename(path, target)
    }
}

impl Store for FsStore {
    fn prepare(&self) -> anyhow::Result<()> {
        let l = &self.layout;
        for dir in [l.blobs(), l.manifests(), l.tags(), l.tmp()] {
            std::fs::create_dir_all(&dir).with_context(|| {
                format!("creating cache directory {} (imagePath / --image-path)", dir.display())
            })?;
        }
        let probe = l.temp_file("probe");
        std::fs::write(&probe, b"").with_context(|| {
            format!("cache directory {} is not writable (imagePath / --image-path)", l.root().display())
        })?;
        let _ = std::fs::remove_file(&probe);
        self.sweep();
        Ok(())
    }

    fn open_blob(&self, d: &Digest) -> std::io::Result<Option<(Arc<dyn ReadAt>, u64)>> {
        match File::open(self.layout.blob(d)) {
            Ok(file) => {
                let len = file.metadata()?.len();
                Ok(Some((Arc::new(CommittedBlob(file)), len)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn read_small_now(&self, d: &Digest, max: u64) -> Option<(Arc<dyn ReadAt>, Bytes)> {
        let file = super::nowait::open_cached(&self.layout.blob(d))?;
        // The inode is in memory once opened: fstat does not wait.
        let len = file.metadata().ok()?.len();
        if len > max {
            return None;
        }
        let bytes = super::nowait::read_cached(&file, len as usize)?;
        Some((Arc::new(CommittedBlob(file)), bytes))
    }

    fn blob_len(&self, d: &Digest) -> std::io::Result<Option<u64>> {
        match std::fs::metadata(self.layout.blob(d)) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn begin_blob(&self, d: &Digest) -> std::io::Result<Option<Partial>> {
        if self.layout.blob(d).exists() {
            return Ok(None);
        }
        let partial = self.layout.partial(d);
        match open_locked(&partial) {
            Ok(Some((file, len))) => Ok(Some(Partial { file: Arc::new(file), adopted: len, path: partial })),
            // Another download holds it (another registry's, or another process).
            Ok(None) => self.begin_anonymous().map(Some),
            Err(e) => {
                warn!(file = %partial.display(), error = %e, "cannot use the partial download file; downloading into a fresh one");
                self.begin_anonymous().map(Some)
            }
        }
    }

    fn downloading_elsewhere(&self, d: &Digest) -> bool {
        let partial = self.layout.partial(d);
        partial.exists() && matches!(open_locked(&partial), Ok(None))
    }

    fn begin_anonymous(&self) -> std::io::Result<Partial> {
        let path = self.layout.temp_file("blob");
        let file = File::options().read(true).write(true).create_new(true).open(&path)?;
        Ok(Partial { file: Arc::new(file), adopted: 0, path })
    }

    fn commit_blob(&self, p: &Partial, d: &Digest, len: u64) -> std::io::Result<Committed> {
        let target = self.layout.blob(d);
        // Another writer of the same digest committed first: it was verified
        // too, so keep it. A file of another length there is corrupt: replace it.
        if std::fs::metadata(&target).is_ok_and(|m| m.len() == len) {
            let _ = std::fs::remove_file(&p.path);
            return Ok(Committed::AlreadyThere);
        }
        publish(&p.file, &p.path, &target)?;
        Ok(Committed::Created)
    }

    fn abandon_blob(&self, p: &Partial, keep: bool) {
        if !keep {
            let _ = std::fs::remove_file(&p.path);
        }
    }

    fn quarantine_blob(&self, d: &Digest) -> std::io::Result<()> {
        self.quarantine(&self.layout.blob(d), d, "")
    }

    fn remove_blob(&self, d: &Digest) -> std::io::Result<()> {
        std::fs::remove_file(self.layout.blob(d))
    }

    fn blobs(&self) -> Vec<(Digest, u64)> {
        sharded_files(&self.layout.blobs())
            .filter_map(|(path, d)| Some((d, std::fs::metadata(&path).ok()?.len())))
            .collect()
    }

    fn blob_stored_at(&self, d: &Digest) -> Option<SystemTime> {
        std::fs::metadata(self.layout.blob(d)).and_then(|m| m.modified()).ok()
    }

    fn put_manifest(&self, m: &StoredManifest) -> std::io::Result<()> {
        let target = self.layout.manifest(&m.digest);
        if target.exists() {
            return Ok(());
        }
        let header = format!("{}\n", m.media_type);
        self.write_atomically(&target, &[header.as_bytes(), &m.bytes])
    }

    fn manifests(&self) -> Listing<StoredManifest> {
        sharded_files(&self.layout.manifests())
            .map(|(path, digest)| {
                read_manifest(&path, &digest).map_err(|why| Skipped {
                    what: path.display().to_string(),
                    why,
                    digest: Some(digest.clone()),
                })
            })
            .collect()
    }

    fn manifest(&self, d: &Digest) -> Result<Option<StoredManifest>, Skipped> {
        let path = self.layout.manifest(d);
        match read_manifest(&path, d) {
            Ok(m) => Ok(Some(m)),
            Err(_) if !path.exists() => Ok(None),
            Err(why) => Err(Skipped { what: path.display().to_string(), why, digest: Some(d.clone()) }),
        }
    }

    fn quarantine_manifest(&self, d: &Digest) -> std::io::Result<()> {
        self.quarantine(&self.layout.manifest(d), d, ".manifest")
    }

    fn remove_manifest(&self, d: &Digest) -> std::io::Result<()> {
        remove_if_present(&self.layout.manifest(d))
    }

    fn manifest_stored_at(&self, d: &Digest) -> Option<SystemTime> {
        std::fs::metadata(self.layout.manifest(d)).and_then(|m| m.modified()).ok()
    }

    fn put_tag(
        &self,
        registry: &RegistryHost,
        repo: &RepoName,
        tag: &Tag,
        d: &Digest,
    ) -> std::io::Result<()> {
        self.write_atomically(&self.layout.tag(registry, repo, tag), &[d.to_string().as_bytes()])
    }

    fn touch_tag(
        &self,
        registry: &RegistryHost,
        repo: &RepoName,
        tag: &Tag,
        at: SystemTime,
    ) -> std::io::Result<()> {
        File::options().write(true).open(self.layout.tag(registry, repo, tag))?.set_modified(at)
    }

    fn tags(&self) -> Listing<StoredTag> {
        let root = self.layout.tags();
        files_under(&root).map(|path| listed_tag(&root, &path)).collect()
    }

    fn repo_tags(&self, loc: &Locator) -> Listing<StoredTag> {
        let root = self.layout.tags();
        let dir = self.layout.tags_dir(&loc.registry, &loc.repo);
        let Ok(entries) = std::fs::read_dir(&dir) else { return Vec::new() };
        entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .map(|path| listed_tag(&root, &path))
            .collect()
    }

    fn remove_tag(&self, registry: &RegistryHost, repo: &RepoName, tag: &Tag) -> std::io::Result<()> {
        remove_if_present(&self.layout.tag(registry, repo, tag))
    }

    fn add_links(&self, loc: &Locator, entries: &[(Digest, Option<u64>)]) -> std::io::Result<()> {
        let path = self.layout.link_file(&loc.registry, &loc.repo);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let text: String = entries.iter().map(|(d, size)| link_line(d, *size)).collect();
        // Under the repository's lock: a prune rewriting the file never loses this.
        with_dir_lock(&path, || {
            File::options().create(true).append(true).open(&path)?.write_all(text.as_bytes())
        })
    }

    fn unlink(&self, loc: &Locator, digests: &[Digest]) -> std::io::Result<()> {
        let path = self.layout.link_file(&loc.registry, &loc.repo);
        with_dir_lock(&path, || {
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            };
            let kept: String = text
                .lines()
                .filter(|l| parse_link(l).is_some_and(|(d, _)| !digests.contains(&d)))
                .map(|l| format!("{l}\n"))
                .collect();
            if kept.is_empty() {
                return remove_if_present(&path);
            }
            self.write_atomically(&path, &[kept.as_bytes()])
        })
    }

    fn record_pulls(&self, loc: &Locator, pulls: &[(String, SystemTime)]) -> std::io::Result<()> {
        let path = self.layout.pulled_file(&loc.registry, &loc.repo);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let text: String = pulls.iter().map(|(r, at)| format!("{r} {}\n", unix_secs(*at))).collect();
        with_dir_lock(&path, || {
            let mut f = File::options().create(true).append(true).open(&path)?;
            f.write_all(text.as_bytes())?;
            if f.metadata()?.len() > PULLED_COMPACT_BYTES {
                let latest = latest_pulls(&std::fs::read_to_string(&path)?);
                self.write_pulls(&path, &latest)?;
            }
            Ok(())
        })
    }

    fn pulls(&self) -> Listing<(Locator, String, SystemTime)> {
        let root = self.layout.pulled();
        let mut out = Vec::new();
        for path in files_under(&root).filter(|p| p.file_name().is_some_and(|n| n == PULLED_FILE)) {
            let Some(loc) = locator_of(&root, &path) else {
                out.push(Err(Skipped {
                    what: path.display().to_string(),
                    why: "a pull-time file outside any repository".into(),
                    digest: None,
                }));
                continue;
            };
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    out.extend(latest_pulls(&text).into_iter().map(|(r, at)| Ok((loc.clone(), r, at))))
                }
                Err(e) => out.push(Err(Skipped {
                    what: path.display().to_string(),
                    why: e.to_string(),
                    digest: None,
                })),
            }
        }
        out
    }

    fn forget_pulls(&self, loc: &Locator, references: &[String]) -> std::io::Result<()> {
        let path = self.layout.pulled_file(&loc.registry, &loc.repo);
        with_dir_lock(&path, || {
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            };
            let mut kept = latest_pulls(&text);
            kept.retain(|(r, _)| !references.contains(r));
            self.write_pulls(&path, &kept)
        })
    }

    fn hold_blobs(&self) -> std::io::Result<Box<dyn Send>> {
        let path = self.layout.temp_file("import").with_extension("hold");
        match open_locked(&path)? {
            Some((file, _)) => Ok(Box::new(Held { path, _file: file })),
            None => Err(std::io::Error::other(format!("{} is held by another process", path.display()))),
        }
    }

    fn blobs_held(&self) -> bool {
        let Ok(entries) = std::fs::read_dir(self.layout.tmp()) else { return false };
        entries.flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".hold")).any(|e| {
            match open_locked(&e.path()) {
                Ok(None) => true,
                // Nobody holds it: left by a crash.
                _ => {
                    let _ = std::fs::remove_file(e.path());
                    false
                }
            }
        })
    }

    fn pins(&self) -> Vec<String> {
        let text = std::fs::read_to_string(self.layout.pins()).unwrap_or_default();
        text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect()
    }

    fn set_pins(&self, pins: &[String]) -> std::io::Result<()> {
        let text: String = pins.iter().map(|p| format!("{p}\n")).collect();
        self.write_atomically(&self.layout.pins(), &[text.as_bytes()])
    }

    fn generation(&self) -> u64 {
        std::fs::read_to_string(self.layout.generation())
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
    }

    fn bump_generation(&self) -> std::io::Result<()> {
        // Random, not a counter: two commands bumping at once still change it.
        let next: u64 = rand::random();
        self.write_atomically(&self.layout.generation(), &[next.to_string().as_bytes()])
    }

    fn sweep_partials(&self) -> (usize, u64) {
        let (mut count, mut bytes) = (0, 0);
        let Ok(entries) = std::fs::read_dir(self.layout.tmp()) else { return (0, 0) };
        for e in entries.flatten() {
            let Ok(meta) = e.metadata() else { continue };
            let partial = e.file_name().to_string_lossy().ends_with(".partial");
            let older_than = if partial { STALE_PARTIAL_AGE } else { STALE_TEMP_AGE };
            let old =
                meta.modified().ok().and_then(|t| t.elapsed().ok()).is_some_and(|age| age >= older_than);
            // Holds are cleaned by `blobs_held`, by their lock, not their age.
            if !meta.is_file() || !old || e.file_name().to_string_lossy().ends_with(".hold") {
                continue;
            }
            // A download in progress holds its partial locked: never pulled
            // from under it. Ours is held until the file is gone.
            let _held = if partial {
                match open_locked(&e.path()) {
                    Ok(Some(held)) => Some(held),
                    _ => continue,
                }
            } else {
                None
            };
            if std::fs::remove_file(e.path()).is_ok() {
                count += 1;
                bytes += meta.len();
            }
        }
        (count, bytes)
    }

    fn repo_links(&self, loc: &Locator) -> Listing<(Digest, Option<u64>)> {
        let path = self.layout.link_file(&loc.registry, &loc.repo);
        let skipped =
            |why: &str| Skipped { what: path.display().to_string(), why: why.to_owned(), digest: None };
        match std::fs::read_to_string(&path) {
            Ok(text) => text.lines().map(|line| parse_link(line).ok_or_else(|| skipped(TORN_LINK))).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => vec![Err(skipped(&e.to_string()))],
        }
    }

    fn links(&self) -> Listing<(Locator, Digest, Option<u64>)> {
        let root = self.layout.links();
        let mut out = Vec::new();
        for path in files_under(&root).filter(|p| p.file_name().is_some_and(|n| n == LINKS_FILE)) {
            let skipped =
                |why: &str| Skipped { what: path.display().to_string(), why: why.to_owned(), digest: None };
            let Some(loc) = locator_of(&root, &path) else {
                out.push(Err(skipped("a link file outside any repository")));
                continue;
            };
            match std::fs::read_to_string(&path) {
                Ok(text) => out.extend(text.lines().map(|line| {
                    parse_link(line).map(|(d, size)| (loc.clone(), d, size)).ok_or_else(|| skipped(TORN_LINK))
                })),
                Err(e) => out.push(Err(skipped(&e.to_string()))),
            }
        }
        out
    }
}

/// An import's hold on the blobs: a locked file, removed when dropped.
struct Held {
    path: PathBuf,
    _file: File,
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn link_line(d: &Digest, size: Option<u64>) -> String {
    format!("{d} {}\n", size.map_or("-".to_owned(), |s| s.to_string()))
}

/// Runs `f` holding an exclusive `flock` on the directory of `file`: the
/// read-modify-writes of a repository's small files (links, pull times) by
/// a server and a command beside it never lose each other's lines. A
/// directory is locked, not the file, because rewrites replace the file.
fn with_dir_lock<T>(file: &Path, f: impl FnOnce() -> std::io::Result<T>) -> std::io::Result<T> {
    use std::os::fd::AsRawFd;
    let Some(dir) = file.parent().filter(|d| d.is_dir()) else { return f() };
    let d = File::open(dir)?;
    // SAFETY: flock on a descriptor we own; released when `d` closes.
    if unsafe { libc::flock(d.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    f()
}

fn remove_if_present(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// `<reference> <unix seconds>` lines → the latest time per reference, in
/// first-seen order; torn or foreign lines are skipped.
fn latest_pulls(text: &str) -> Vec<(String, SystemTime)> {
    let mut latest: Vec<(String, SystemTime)> = Vec::new();
    let mut at_index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for line in text.lines() {
        let Some((r, secs)) = line.split_once(' ') else { continue };
        let Ok(secs) = secs.parse::<u64>() else { continue };
        if crate::oci::Reference::parse(r).is_err() {
            continue;
        }
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        match at_index.get(r) {
            Some(&i) => latest[i].1 = latest[i].1.max(at),
            None => {
                at_index.insert(r.to_owned(), latest.len());
                latest.push((r.to_owned(), at));
            }
        }
    }
    latest
}

/// Opens (creating) `path` and takes an exclusive advisory lock on it without
/// waiting; `None` if another holder has it. Returns the file and its length.
fn open_locked(path: &Path) -> std::io::Result<Option<(File, u64)>> {
    use std::os::fd::AsRawFd;
    let file = File::options().read(true).write(true).create(true).truncate(false).open(path)?;
    // SAFETY: flock on a descriptor we own; no memory is passed.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    if !locked {
        return Ok(None);
    }
    // A sweeper may have unlinked the file between our open and our lock:
    // the lock is only worth something on the file still at `path`.
    use std::os::unix::fs::MetadataExt;
    let meta = file.metadata()?;
    match std::fs::metadata(path) {
        Ok(at_path) if at_path.dev() == meta.dev() && at_path.ino() == meta.ino() => {}
        _ => return Ok(None),
    }
    let len = meta.len();
    Ok(Some((file, len)))
}

/// fsync the data, rename into place, fsync the directory.
fn publish(file: &File, temp: &Path, target: &Path) -> std::io::Result<()> {
    file.sync_data()?;
    let dir = target
        .parent()
        .ok_or_else(|| std::io::Error::other(format!("{} has no parent", target.display())))?;
    std::fs::create_dir_all(dir)?;
    std::fs::rename(temp, target)?;
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn files_under(dir: &Path) -> impl Iterator<Item = PathBuf> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(|e| match e {
            Ok(e) => Some(e),
            Err(err) => {
                if err.io_error().is_none_or(|io| io.kind() != std::io::ErrorKind::NotFound) {
                    warn!(error = %err, "skipping unreadable cache entry");
                }
                None
            }
        })
        .filter(|e| e.file_type().is_file())
        .map(|e| e.into_path())
}

/// `<dir>/<alg>/<xx>/<hex>` files and the digest their path names.
fn sharded_files(dir: &Path) -> impl Iterator<Item = (PathBuf, Digest)> {
    files_under(dir).filter_map(|path| {
        let hex = path.file_name()?.to_str()?;
        let alg = path.parent()?.parent()?.file_name()?.to_str()?;
        let d = Digest::parse(&format!("{alg}:{hex}")).ok()?;
        Some((path, d))
    })
}

fn read_manifest(path: &Path, digest: &Digest) -> Result<StoredManifest, String> {
    let raw = std::fs::read(path).map_err(|e| e.to_string())?;
    super::parse_manifest(Bytes::from(raw), digest)
}

/// A tag file as a listing entry: the tag, or why it was skipped.
fn listed_tag(root: &Path, path: &Path) -> Result<StoredTag, Skipped> {
    read_tag(root, path).map_err(|why| Skipped { what: path.display().to_string(), why, digest: None })
}

fn read_tag(root: &Path, path: &Path) -> Result<StoredTag, String> {
    let rel = path.strip_prefix(root).map_err(|e| e.to_string())?;
    let parts: Vec<&str> =
        rel.iter().map(|p| p.to_str().ok_or("non-UTF-8 path")).collect::<Result<_, _>>()?;
    let [registry, repo @ .., marker, tag] = parts.as_slice() else {
        return Err("not a tag file".into());
    };
    if *marker != TAGS_DIR || repo.is_empty() {
        return Err("not a tag file".into());
    }
    let registry = RegistryHost::parse(registry).map_err(|e| e.to_string())?;
    let repo = RepoName::parse(&repo.join("/")).map_err(|e| e.to_string())?;
    let tag = Tag::parse(tag).map_err(|e| e.to_string())?;
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let digest = Digest::parse(text.trim()).map_err(|e| e.to_string())?;
    let checked = std::fs::metadata(path).and_then(|m| m.modified()).map_err(|e| e.to_string())?;
    Ok(StoredTag { registry, repo, tag, digest, checked })
}

const TORN_LINK: &str = "a line that is not '<digest> <size|->' (torn by a crash?)";

fn parse_link(line: &str) -> Option<(Digest, Option<u64>)> {
    let (d, size) = line.split_once(' ')?;
    let size = match size {
        "-" => None,
        s => Some(s.parse().ok()?),
    };
    Some((Digest::parse(d).ok()?, size))
}

/// `links/<registry>/<repo…>/_links` → the repository.
fn locator_of(root: &Path, file: &Path) -> Option<Locator> {
    let rel = file.strip_prefix(root).ok()?.parent()?;
    let mut parts = rel.iter().map(|p| p.to_str());
    let registry = RegistryHost::parse(parts.next()??).ok()?;
    let repo: Vec<&str> = parts.collect::<Option<_>>()?;
    let repo = RepoName::parse(&repo.join("/")).ok()?;
    Some(Locator { registry, repo })
}

#[cfg(test)]
mod tests {
    #[test]
    fn runs_the_store_suite() {
        let dir = tempfile::tempdir().unwrap();
        let store = super::FsStore::new(dir.path());
        super::super::suite::run_all(&store, super::super::suite::Removal::StaysReadable);
    }
}
