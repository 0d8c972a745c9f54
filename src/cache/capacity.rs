//! Keeping the cache inside its disk: a size cap with eviction of the least
//! recently pulled images, a free-space floor, pinned images, and the
//! scheduled pruning of the reference's `pruneConfig`.
//!
//! Eviction is by image, blobs reference-counted (a layer another image uses
//! stays), and runs before a download that would pass the cap as well as on
//! housekeeping ticks, so the cache stays under `max` rather than drifting
//! past it between checks. When nothing can be evicted and the disk is full,
//! new downloads fail fast; what is cached keeps being served.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use globset::{Glob, GlobSet, GlobSetBuilder};
use regex::Regex;
use tracing::{info, warn};

use super::catalog::Image;
use super::prune::{ORPHAN_GRACE, Selection};
use super::{Cache, Error, Inner};

/// `cacheSize`, `minFreeDisk`, `pinned`.
#[derive(Debug, Clone, Default)]
pub struct Capacity {
    /// Cached bytes past which images are evicted.
    pub max: Option<u64>,
    /// Evicting stops once the cache is under this (default: `max`).
    pub target: Option<u64>,
    /// Free bytes on the cache's filesystem below which images are evicted.
    pub min_free_disk: Option<u64>,
    pub pinned: Pinned,
    /// `pinRunningImages`: what the cluster's pods use is pinned too.
    pub pin_running: bool,
}

impl Capacity {
    pub fn is_set(&self) -> bool {
        self.max.is_some() || self.min_free_disk.is_some()
    }
}

/// Globs over `registry/repository:tag` (the `tagPolicy` syntax): images never evicted.
#[derive(Debug, Clone, Default)]
pub struct Pinned {
    patterns: Vec<String>,
    set: GlobSet,
}

impl Pinned {
    pub fn new(patterns: &[String]) -> Result<Pinned, globset::Error> {
        let mut b = GlobSetBuilder::new();
        for p in patterns {
            b.add(Glob::new(p)?);
        }
        Ok(Pinned { patterns: patterns.to_vec(), set: b.build()? })
    }

    pub fn holds(&self, image: &Image) -> bool {
        !self.patterns.is_empty() && self.set.is_match(image.name())
    }

    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }
}

/// The images the cluster's pods use (`pinRunningImages`).
#[derive(Debug, Clone, Default)]
pub struct Running {
    /// `registry/repo:tag`, as pods name them (Docker's defaults filled in).
    pub names: HashSet<String>,
    /// Digests pods name or their nodes resolved.
    pub digests: HashSet<crate::oci::Digest>,
}

impl Running {
    fn uses(&self, image: &Image) -> bool {
        self.names.contains(&image.name()) || image.manifests.iter().any(|d| self.digests.contains(d))
    }
}

/// The reference's `pruneConfig`: what each run removes, and how often.
#[derive(Debug, Clone)]
pub struct PruneSchedule {
    pub rule: PruneRule,
    pub every: Duration,
    /// Images removed per run at most (oldest first); `None`: no limit.
    pub count: Option<usize>,
    pub dry_run: bool,
}

#[derive(Debug, Clone)]
pub enum PruneRule {
    /// Not pulled for this long.
    Accessed(Duration),
    /// Cached longer ago than this.
    Created(Duration),
    /// Names matching any of these.
    Pattern(Vec<Regex>),
}

impl PruneRule {
    pub fn selection(&self) -> Selection {
        let ago = |d: &Duration| SystemTime::now().checked_sub(*d);
        match self {
            PruneRule::Accessed(d) => Selection { accessed_before: ago(d), ..Selection::default() },
            PruneRule::Created(d) => Selection { created_before: ago(d), ..Selection::default() },
            PruneRule::Pattern(p) => Selection { patterns: p.clone(), ..Selection::default() },
        }
    }
}

/// The `count` least recently used of `picked`.
fn oldest(catalog: &super::catalog::Catalog, picked: HashSet<usize>, count: Option<usize>) -> HashSet<usize> {
    let mut v: Vec<usize> = picked.into_iter().collect();
    v.sort_by_key(|n| catalog.images.get(*n).and_then(Image::last_used));
    v.into_iter().take(count.unwrap_or(usize::MAX)).collect()
}

/// Room held for a download in progress; given back when it ends (its
/// bytes are then counted as cached).
pub(super) struct Reservation {
    inner: std::sync::Arc<Inner>,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.inner.reserved.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// Free bytes for unprivileged use on the filesystem holding `path`.
pub fn free_disk(path: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `s` a statvfs we own.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return None;
    }
    Some(s.f_bavail as u64 * s.f_frsize as u64)
}

impl Inner {
    /// Cached bytes as counted at commits (manifests are a rounding error).
    pub(super) fn usage(&self) -> u64 {
        self.blob_bytes.load(Ordering::Relaxed)
    }

    /// Whether `more` bytes would pass the cap or the free-space floor.
    fn over(&self, more: u64) -> bool {
        let c = &self.capacity;
        let more = more.saturating_add(self.reserved.load(Ordering::Relaxed));
        c.max.is_some_and(|m| self.usage().saturating_add(more) > m)
            || c.min_free_disk
                .is_some_and(|f| free_disk(&self.root).is_some_and(|free| free < f.saturating_add(more)))
    }
}

impl Cache {
    /// The globs pinned at run time (the configured `pinned` are fixed).
    pub fn pins(&self) -> Vec<String> {
        self.inner.pins.read().map(|p| p.patterns().to_vec()).unwrap_or_default()
    }

    /// Pins (or, `pin == false`, unpins) images matching `glob` at run time; persisted.
    pub async fn set_pin(&self, glob: &str, pin: bool) -> Result<Vec<String>, Error> {
        let mut list = self.pins();
        list.retain(|p| p != glob);
        if pin {
            list.push(glob.to_owned());
        }
        let pinned = Pinned::new(&list)
            .map_err(|e| Error::BadPattern { pattern: glob.to_owned(), why: e.to_string() })?;
        let (store, l) = (self.inner.store.clone(), list.clone());
        super::blocking("saving pins", move || store.set_pins(&l))
            .await?
            .map_err(|e| Error::io("saving pins".into(), e))?;
        if let Ok(mut p) = self.inner.pins.write() {
            *p = pinned;
        }
        Ok(list)
    }

    /// What the cluster's pods use now (`pinRunningImages`).
    pub fn set_running(&self, running: Running) {
        if let Ok(mut r) = self.inner.running.write() {
            *r = Some(running);
        }
    }

    fn is_pinned(&self, image: &Image) -> bool {
        let running = || self.inner.running.read().is_ok_and(|r| r.as_ref().is_some_and(|r| r.uses(image)));
        self.inner.capacity.pinned.holds(image)
            || self.inner.pins.read().is_ok_and(|p| p.holds(image))
            || (self.inner.capacity.pin_running && running())
    }

    /// Before a download of `size` bytes: evicts what it takes to stay under
    /// the cap; fails fast when the cache is full of what cannot be evicted.
    /// The room is reserved until the download ends, so downloads running
    /// at once cannot each fit on their own and pass the cap together.
    pub(super) async fn make_room(&self, size: Option<u64>) -> Result<Option<Reservation>, Error> {
        let inner = &self.inner;
        if !inner.capacity.is_set() {
            return Ok(None);
        }
        let size = size.unwrap_or(0);
        // A blob larger than the cache may hold (or a descriptor that says so)
        // is refused before anything is evicted for it.
        let cap = &inner.capacity;
        if cap.target.or(cap.max).is_some_and(|t| size > t) {
            inner.metrics.fills_refused_full.inc();
            return Err(Error::CacheFull { usage: inner.usage(), max: cap.max });
        }
        if inner.over(size) {
            self.evict(size).await?;
            if inner.over(size) {
                inner.metrics.fills_refused_full.inc();
                return Err(Error::CacheFull { usage: inner.usage(), max: inner.capacity.max });
            }
        }
        inner.reserved.fetch_add(size, Ordering::Relaxed);
        Ok(Some(Reservation { inner: inner.clone(), bytes: size }))
    }

    /// Evicts the least recently pulled images that are not pinned (nor in
    /// use by a running pod) until the cache is under `target` with `room`
    /// bytes to spare. One eviction at a time; the rest wait and re-check.
    pub async fn evict(&self, room: u64) -> Result<(), Error> {
        let inner = &self.inner;
        let _one = inner.evicting.lock().await;
        if !inner.over(room) {
            inner.stuck.store(false, Ordering::Relaxed);
            return Ok(());
        }
        let cap = &inner.capacity;
        // Said once per episode, not every second.
        let first = || !inner.stuck.swap(true, Ordering::Relaxed);
        if cap.pin_running && inner.running.read().is_ok_and(|r| r.is_none()) {
            if first() {
                warn!("not evicting: pinRunningImages is on and the cluster's pods could not be listed yet");
            }
            return Ok(());
        }
        let catalog = self.catalog().await?;
        let target = cap.target.or(cap.max);
        let mut order: Vec<(usize, &Image)> =
            catalog.images.iter().enumerate().filter(|(_, i)| !self.is_pinned(i)).collect();
        order.sort_by_key(|(_, i)| i.last_used());
        let free = cap.min_free_disk.and_then(|_| free_disk(&inner.root));
        let usage = catalog.total_bytes();
        // Downloads under way hold room (`over` counts it): it must stay free too.
        let room = room.saturating_add(inner.reserved.load(Ordering::Relaxed));
        let mut doomed = HashSet::new();
        let mut freed = 0;
        let enough = |freed: u64| {
            target.is_none_or(|t| usage.saturating_sub(freed).saturating_add(room) <= t)
                && cap.min_free_disk.is_none_or(|f| {
                    free.is_none_or(|free| free.saturating_add(freed) >= f.saturating_add(room))
                })
        };
        for (n, _) in order {
            if enough(freed) {
                break;
            }
            doomed.insert(n);
            let (m, b) = catalog.unused_after(&doomed);
            freed = catalog.bytes_of(&m, &b);
        }
        // For a download's room: all or nothing. Evicting everything and then
        // refusing the download anyway would only lose the cache.
        if room > 0 && !enough(freed) {
            doomed.clear();
        }
        if doomed.is_empty() {
            if first() {
                let why = if catalog.images.is_empty() {
                    "the cache holds no image to evict"
                } else {
                    "every image left is pinned or used by a running pod"
                };
                warn!(usage, max = ?cap.max, free_disk = ?free, min_free_disk = ?cap.min_free_disk, "over cacheSize.max or under minFreeDisk, and {why}; new downloads are refused (507) until space is freed");
            }
            return Ok(());
        }
        let names: Vec<String> =
            doomed.iter().filter_map(|n| catalog.images.get(*n)).map(Image::name).collect();
        let (_, pruned) = self.remove(catalog, doomed, ORPHAN_GRACE, false).await?;
        if let Some(p) = pruned {
            inner.metrics.evicted_images.inc_by(p.images as u64);
            inner.metrics.pruned_bytes.inc_by(p.bytes);
            info!(images = p.images, blobs = p.blobs, freed = p.bytes, usage = inner.usage(), evicted = %names.join(", "), "evicted the least recently pulled images to stay within the cache size");
        }
        Ok(())
    }

    /// One run of `pruneConfig`: the oldest matching images, at most `count`.
    pub async fn scheduled_prune(&self, schedule: &PruneSchedule) -> Result<(), Error> {
        if self.inner.capacity.pin_running && self.inner.running.read().is_ok_and(|r| r.is_none()) {
            warn!(
                "pruneConfig: skipped; pinRunningImages is on and the cluster's pods could not be listed yet"
            );
            return Ok(());
        }
        let catalog = self.catalog().await?;
        // Pinned images and what running pods use are never pruned by schedule.
        let unpinned: Vec<usize> =
            catalog.images.iter().enumerate().filter(|(_, i)| !self.is_pinned(i)).map(|(n, _)| n).collect();
        let doomed: HashSet<usize> = schedule
            .rule
            .selection()
            .pick(&catalog, None)
            .into_iter()
            .filter(|n| unpinned.contains(n))
            .collect();
        let doomed = oldest(&catalog, doomed, schedule.count);
        let names: Vec<String> =
            doomed.iter().filter_map(|n| catalog.images.get(*n)).map(Image::name).collect();
        let (plan, pruned) = self.remove(catalog, doomed, ORPHAN_GRACE, schedule.dry_run).await?;
        match pruned {
            Some(p) => {
                self.inner.metrics.pruned_bytes.inc_by(p.bytes);
                info!(images = p.images, blobs = p.blobs, freed = p.bytes, pruned = %names.join(", "), "pruneConfig: pruned");
            }
            None if schedule.dry_run && !plan.is_empty() => {
                info!(images = plan.images.len(), bytes = plan.bytes, would_prune = %names.join(", "), "pruneConfig (dryRun): would prune");
            }
            None => {}
        }
        Ok(())
    }
}
