//! Managing the cache as a whole: preloading images through the fill path,
//! importing archives, pruning, and housekeeping (pull times persisted in
//! batches; changes made by a command beside a running server picked up).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use futures_util::{StreamExt, TryStreamExt};
use tracing::{info, warn};

use super::catalog::{Catalog, Platforms};
use super::index::{Index, TagEntry};
use super::links::Links;
use super::prune::{Plan, Pruned, Selection};
use super::store::StoredManifest;
use super::{Cache, CacheOutcome, Error, Inner, Locator, archive, blocking};
use crate::oci::{Digest, ImageRef, ManifestKind, Platform, Reference};

/// How often a running server looks for changes made beside it.
const WATCH_EVERY: Duration = Duration::from_secs(1);
/// How often pull times are written.
const FLUSH_PULLS_EVERY: u32 = 30;

/// What preloading one image did.
#[derive(Debug, Clone)]
pub struct Preloaded {
    pub digest: Digest,
    pub platforms: Vec<Platform>,
    pub manifests: usize,
    pub blobs: usize,
    /// Blobs that were already cached.
    pub cached: usize,
}

/// An image an archive held, now in the cache.
#[derive(Debug, Clone)]
pub struct Imported {
    pub names: Vec<ImageRef>,
    pub digest: Digest,
    pub manifests: usize,
}

/// Told how many bytes a load means to fetch, and as they arrive (progress displays).
pub trait LoadProgress: Send + Sync {
    fn planned(&self, _bytes: u64) {}
    fn arrived(&self, bytes: u64);
}

pub type OnBytes = Arc<dyn LoadProgress>;

impl Cache {
    /// Pulls an image through the same verified, resumable fill path a
    /// client's pull takes: its manifest (an index is kept whole), the
    /// children for `platforms`, and every config and layer, `parallel`
    /// blobs at a time. What is cached already is skipped.
    pub async fn preload(
        &self,
        image: &ImageRef,
        platforms: &Platforms,
        parallel: usize,
        on_bytes: OnBytes,
    ) -> Result<Preloaded, Error> {
        let loc = Locator { registry: image.registry.clone(), repo: image.repo.clone() };
        let (root, _) = self.lookup_manifest(&loc, &image.reference()).await?;
        let mut images = Vec::new();
        let mut chosen = Vec::new();
        // The body, for the platforms an index's descriptors state.
        let body = self.manifest_body(&root).await?;
        match crate::oci::ManifestView::parse(&body, Some(&root.media_type)) {
            Ok(view) if view.kind == ManifestKind::Index => {
                let children: Vec<_> = view
                    .references
                    .iter()
                    .filter(|r| r.platform.as_ref().is_none_or(|p| p.os != "unknown"))
                    .filter(|r| platforms.wants(r.platform.as_ref()))
                    .cloned()
                    .collect();
                if children.is_empty() {
                    let offered: Vec<String> = view
                        .references
                        .iter()
                        .filter_map(|r| r.platform.as_ref().map(Platform::to_string))
                        .collect();
                    return Err(Error::NoPlatform {
                        image: image.to_string(),
                        wanted: platforms.to_string(),
                        offered: offered.join(", "),
                    });
                }
                for child in children {
                    let (m, _) = self.lookup_manifest(&loc, &Reference::Digest(child.digest.clone())).await?;
                    chosen.extend(child.platform);
                    images.push(m);
                }
            }
            _ => images.push(root.clone()),
        }
        let mut blobs: Vec<(Digest, Option<u64>)> =
            images.iter().flat_map(|m| m.references.iter().cloned()).collect();
        blobs.sort();
        blobs.dedup();
        let store = self.inner.store.clone();
        let sizes = blobs.clone();
        let to_fetch = blocking("sizing a preload", move || {
            sizes
                .iter()
                .filter(|(d, _)| !matches!(store.blob_len(d), Ok(Some(_))))
                .filter_map(|(_, s)| *s)
                .sum()
        })
        .await?;
        on_bytes.planned(to_fetch);
        let outcomes: Vec<bool> = futures_util::stream::iter(blobs.into_iter().map(|(d, _)| d))
            .map(|d| {
                let (this, loc, on_bytes) = (self.clone(), loc.clone(), on_bytes.clone());
                async move {
                    this.wait_for_other_downloads(&d).await;
                    let blob = this.blob_as(&loc, &d, crate::upstream::Class::Background).await?;
                    if blob.outcome == CacheOutcome::Hit {
                        return Ok::<bool, Error>(true);
                    }
                    blob.reader.finish(|n| on_bytes.arrived(n)).await?;
                    Ok(false)
                }
            })
            .buffer_unordered(parallel.max(1))
            .try_collect()
            .await?;
        self.mark_changed("the preloaded image").await;
        Ok(Preloaded {
            digest: root.digest.clone(),
            platforms: chosen,
            manifests: 1 + images.len()
                - usize::from(images.first().is_some_and(|m| m.digest == root.digest)),
            cached: outcomes.iter().filter(|hit| **hit).count(),
            blobs: outcomes.len(),
        })
    }

    /// A server beside this command may be downloading the blob for a
    /// client: wait for it rather than fetch it a second time over the link.
    async fn wait_for_other_downloads(&self, d: &Digest) {
        loop {
            let (store, dd) = (self.inner.store.clone(), d.clone());
            let busy = blocking("looking for other downloads", move || {
                store.downloading_elsewhere(&dd) && !matches!(store.blob_len(&dd), Ok(Some(_)))
            })
            .await;
            if !matches!(busy, Ok(true)) || self.inner.fills.in_flight_for(d) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Imports a docker-save tarball, an OCI layout or an oci-archive
    /// (gzip-compressed or not): every digest verified, every image named by
    /// the archive tagged in the cache.
    pub async fn import(&self, path: PathBuf, on_bytes: OnBytes) -> anyhow::Result<Vec<Imported>> {
        // Until its manifests are stored, the archive's blobs are used by
        // nothing: no prune (here or beside us) may take them meanwhile.
        let _hold = self.inner.store.hold_blobs().context("holding the cache's blobs for the import")?;
        let inner = self.inner.clone();
        let p = path.clone();
        let archived =
            tokio::task::spawn_blocking(move || archive::import(&p, &*inner.store, &|n| on_bytes.arrived(n)))
                .await
                .context("the import task failed")??;
        let mut out = Vec::new();
        for image in archived {
            let Some(root) = image.manifests.first() else { continue };
            let digest = root.digest.clone();
            let names: Vec<ImageRef> = image
                .names
                .iter()
                // A bare `3.20` (what `skopeo copy … oci:dir:3.20` writes) names no repository.
                .filter(|n| {
                    let named = n.contains('/') || n.contains(':');
                    if !named {
                        warn!(archive = %path.display(), name = %n, "skipping a name that is only a tag; name images with their full reference");
                    }
                    named
                })
                .filter_map(|n| match ImageRef::parse(n) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        warn!(archive = %path.display(), name = %n, error = %e, "skipping a name the archive gives an image");
                        None
                    }
                })
                .collect();
            if names.is_empty() {
                anyhow::bail!(
                    "{}: image {digest} has no usable name (RepoTags, or an io.containerd.image.name / org.opencontainers.image.ref.name annotation holding a full reference)",
                    path.display()
                );
            }
            if let Some(n) = names.iter().find(|n| n.digest.as_ref().is_some_and(|d| *d != digest)) {
                anyhow::bail!("{}: image named {n} is {digest} in the archive", path.display());
            }
            let inner = self.inner.clone();
            let manifests = image.manifests;
            let count = manifests.len();
            let named: Vec<(ImageRef, Digest)> = names.iter().map(|n| (n.clone(), digest.clone())).collect();
            blocking("storing imported manifests", move || store_named(&inner, &manifests, &named)).await??;
            info!(archive = %path.display(), %digest, names = %names.iter().map(ImageRef::to_string).collect::<Vec<_>>().join(", "), "imported image");
            out.push(Imported { names, digest, manifests: count });
        }
        self.mark_changed("the imported images").await;
        Ok(out)
    }

    /// A snapshot of the images in the cache.
    pub async fn catalog(&self) -> Result<Catalog, Error> {
        let inner = self.inner.clone();
        blocking("listing the cache", move || {
            inner.pulls.flush(&*inner.store);
            Catalog::load(&*inner.store)
        })
        .await
    }

    /// Removes the images `selection` matches (nothing when it is empty),
    /// with orphans older than `grace`; `dry_run` only plans.
    pub async fn prune(
        &self,
        selection: Selection,
        grace: Duration,
        dry_run: bool,
    ) -> Result<(Plan, Option<Pruned>), Error> {
        let catalog = self.catalog().await?;
        let doomed = selection.pick(&catalog, None);
        self.remove(catalog, doomed, grace, dry_run).await
    }

    /// Removes the images at `doomed` in `catalog`, then makes the index say so.
    pub async fn remove(
        &self,
        catalog: Catalog,
        doomed: std::collections::HashSet<usize>,
        grace: Duration,
        dry_run: bool,
    ) -> Result<(Plan, Option<Pruned>), Error> {
        let store = self.inner.store.clone();
        let (plan, pruned, generation) = blocking("pruning the cache", move || {
            let plan = Plan::new(&catalog, &*store, &doomed, grace);
            // Replicas sharing a bucket take turns: one prunes, the others skip this round.
            let turn = match (!dry_run && !plan.is_empty()).then(|| store.claim_pruning()) {
                Some(Ok(Some(turn))) => Some(turn),
                Some(Ok(None)) => {
                    info!("another replica is pruning the shared cache; this one skips its turn");
                    None
                }
                Some(Err(e)) => {
                    warn!(error = %e, "could not claim the turn to prune the shared cache; skipped");
                    None
                }
                None => None,
            };
            let pruned = turn.map(|_turn| super::prune::apply(&*store, &plan));
            (plan, pruned, store.generation())
        })
        .await?;
        self.inner.generation.store(generation, Ordering::Relaxed);
        if let Some(p) = &pruned {
            for e in &p.errors {
                warn!(error = %e, "pruning: could not remove");
            }
            self.reload().await?;
        }
        Ok((plan, pruned))
    }

    /// Tells a server sharing the store that content changed (it reloads);
    /// this process knows already.
    pub(super) async fn mark_changed(&self, what: &'static str) {
        let store = self.inner.store.clone();
        match blocking("marking the cache changed", move || {
            store.bump_generation().map(|()| store.generation())
        })
        .await
        {
            Ok(Ok(g)) => self.inner.generation.store(g, Ordering::Relaxed),
            _ => warn!(
                "could not tell a server sharing the cache directory about {what}; it sees it after a restart"
            ),
        }
    }

    /// Makes the in-memory index what the store holds now (after a prune,
    /// or a change a command made beside this server). What this server
    /// cached while the store was being read is kept.
    pub async fn reload(&self) -> Result<super::LoadReport, Error> {
        let inner = self.inner.clone();
        blocking("reloading the cache index", move || {
            let since = SystemTime::now();
            let (index, mut report) = Index::load(&*inner.store);
            let (links, skipped) = Links::load(&*inner.store, &index);
            report.skipped += skipped;
            let store = inner.store.clone();
            inner.index.sync_from(index, since, |d| store.manifest_stored_at(d).is_some());
            inner.links.add_from(links);
            inner.blob_count.store(report.blobs as u64, Ordering::Relaxed);
            inner.blob_bytes.store(report.blob_bytes, Ordering::Relaxed);
            report
        })
        .await
    }

    /// Writes pull times not yet written (at shutdown).
    pub async fn flush_pulls(&self) {
        let inner = self.inner.clone();
        let _ = blocking("recording pull times", move || inner.pulls.flush(&*inner.store)).await;
    }

    /// A running server's background work: pull times written every
    /// half-minute, changes made beside it picked up within a second, the
    /// cache kept within its size, and `pruneConfig` run on its schedule.
    pub fn spawn_housekeeping(&self) {
        let this = self.clone();
        tokio::spawn(async move {
            let inner = this.inner.clone();
            let store = inner.store.clone();
            let mut ticks = 0u32;
            let mut last_prune = std::time::Instant::now();
            let mut every = tokio::time::interval(WATCH_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                ticks = ticks.wrapping_add(1);
                if ticks.is_multiple_of(FLUSH_PULLS_EVERY) {
                    this.flush_pulls().await;
                }
                let s = store.clone();
                let Ok(now) = blocking("watching the cache directory", move || s.generation()).await else {
                    continue;
                };
                if now != inner.generation.swap(now, Ordering::Relaxed) {
                    match this.reload().await {
                        Ok(_) => {
                            info!("the cache changed beside this server (load or prune); index reloaded")
                        }
                        Err(e) => {
                            warn!(error = %e, "could not reload the cache index after an outside change")
                        }
                    }
                }
                if let Some(free) = super::capacity::free_disk(&inner.root) {
                    inner.metrics.disk_free_bytes.set(free.min(i64::MAX as u64) as i64);
                }
                // Stuck over the limits with nothing to evict: look again every
                // half-minute, not every second (each look reads the whole catalog).
                let stuck = inner.stuck.load(Ordering::Relaxed);
                if inner.capacity.is_set()
                    && (!stuck || ticks.is_multiple_of(FLUSH_PULLS_EVERY))
                    && let Err(e) = this.evict(0).await
                {
                    warn!(error = %e, "could not evict images to keep the cache within its size");
                }
                if let Some(schedule) = &inner.prune
                    && last_prune.elapsed() >= schedule.every
                {
                    last_prune = std::time::Instant::now();
                    if let Err(e) = this.scheduled_prune(schedule).await {
                        warn!(error = %e, "pruneConfig: the scheduled prune failed");
                    }
                }
            }
        });
    }
}

/// Stores imported manifests (exact bytes), then puts each name on its
/// manifest: the tag, or a root link for a name without one (an image pulled
/// by digest). Archives and the reference server's cache both import through it.
pub(super) fn store_named(
    inner: &Inner,
    manifests: &[StoredManifest],
    names: &[(ImageRef, Digest)],
) -> anyhow::Result<()> {
    for m in manifests {
        inner.store.put_manifest(m).with_context(|| format!("storing manifest {}", m.digest))?;
        if let Ok(manifest) = super::Manifest::from_stored(m) {
            inner.index.insert_manifest(Arc::new(manifest));
        }
    }
    for (r, d) in names {
        let loc = Locator { registry: r.registry.clone(), repo: r.repo.clone() };
        match &r.tag {
            Some(tag) => {
                inner.store.put_tag(&r.registry, &r.repo, tag, d).with_context(|| format!("tagging {r}"))?;
                let entry = TagEntry { digest: d.clone(), checked: SystemTime::now() };
                inner.index.insert_tag(&r.registry, &r.repo, tag, entry);
            }
            None => {
                inner.store.add_links(&loc, &[(d.clone(), None)]).with_context(|| format!("linking {r}"))?
            }
        }
        inner.links.insert_manifest_tree(&inner.index, &loc, d, None);
    }
    Ok(())
}
