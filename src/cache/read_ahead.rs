//! Lookups before the index is loaded. At start-up the mirror serves at once
//! and reads the index in the background; until that is done, a
//! repository's first lookup reads what the store holds for it (its tags,
//! root links and the manifests they reach), once however many ask.
//!
//! With a store shared by replicas (a bucket), the others keep adding to it
//! after this one has loaded its index: a lookup that misses reads the
//! repository from the store again before asking the upstream, at most once
//! per [`REFRESH`] per repository.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::OnceCell;
use tracing::debug;

use super::index::{Manifest, TagEntry};
use super::{Error, Inner, Locator, blocking};
use crate::oci::{Digest, ManifestKind};

/// A shared store's repository is read again on a miss at most this often.
const REFRESH: Duration = Duration::from_secs(2);
/// Repositories whose last re-read is remembered (clients name them: bounded).
const REFRESHED_REPOS: usize = 4096;

/// The repositories read so far, emptied once the index is loaded.
#[derive(Default)]
pub(super) struct ReadAhead {
    repos: DashMap<Locator, Arc<OnceCell<()>>>,
    /// When each repository was last re-read from a shared store.
    refreshed: DashMap<Locator, Arc<tokio::sync::Mutex<Option<Instant>>>>,
}

impl ReadAhead {
    pub(super) fn forget(&self) {
        self.repos.clear();
    }
}

impl Inner {
    /// Makes sure the index knows what the store holds for `loc` (one
    /// atomic load once the index is loaded).
    pub(super) async fn read_ahead(self: &Arc<Self>, loc: &Locator) -> Result<(), Error> {
        if self.index.is_loaded() {
            return Ok(());
        }
        let cell = self.read_ahead.repos.entry(loc.clone()).or_default().clone();
        cell.get_or_try_init(|| {
            let (this, loc) = (self.clone(), loc.clone());
            blocking("reading a repository from the cache", move || this.read_repository(&loc))
        })
        .await?;
        Ok(())
    }

    /// Whether `digest` may be served for `loc`, and the size its link says:
    /// what the index knows, after reading the repository from the store when
    /// it may know more (before the index is loaded, or a miss on a shared store).
    pub(super) async fn linked(
        self: &Arc<Self>,
        loc: &Locator,
        digest: &Digest,
    ) -> Result<Option<Option<u64>>, Error> {
        self.read_ahead(loc).await?;
        let linked = self.links.get(loc, digest);
        if linked.is_none() && self.refresh(loc).await? {
            return Ok(self.links.get(loc, digest));
        }
        Ok(linked)
    }

    /// On a miss, with a shared store: reads `loc` from the store again (or
    /// waits for the re-read another lookup is doing). `true`: look again.
    pub(super) async fn refresh(self: &Arc<Self>, loc: &Locator) -> Result<bool, Error> {
        if self.sharing.is_none() || !self.index.is_loaded() {
            return Ok(false);
        }
        if self.read_ahead.refreshed.len() > REFRESHED_REPOS {
            self.read_ahead.refreshed.clear();
        }
        let slot = self.read_ahead.refreshed.entry(loc.clone()).or_default().clone();
        let mut last = slot.lock().await;
        if last.is_some_and(|at| at.elapsed() < REFRESH) {
            return Ok(true);
        }
        let (this, l) = (self.clone(), loc.clone());
        blocking("reading a repository from the shared cache", move || this.read_repository(&l)).await?;
        *last = Some(Instant::now());
        Ok(true)
    }

    fn read_repository(&self, loc: &Locator) {
        let mut roots: Vec<(Digest, Option<u64>)> = Vec::new();
        for tag in self.store.repo_tags(loc) {
            match tag {
                Ok(t) => {
                    let entry = TagEntry { digest: t.digest.clone(), checked: t.checked };
                    self.index.insert_tag_if_absent(&t.registry, &t.repo, &t.tag, entry);
                    roots.push((t.digest, None));
                }
                // The index load reports it, once.
                Err(s) => debug!(file = %s.what, error = %s.why, "skipping an unreadable tag"),
            }
        }
        roots.extend(self.store.repo_links(loc).into_iter().filter_map(Result::ok));
        // The manifests they reach: an index's references are manifests too,
        // an image's are blobs.
        let mut todo: Vec<Digest> = roots.iter().map(|(d, _)| d.clone()).collect();
        let mut seen = HashSet::new();
        while let Some(d) = todo.pop() {
            if !seen.insert(d.clone()) {
                continue;
            }
            let manifest = match self.index.manifest(&d) {
                Some(m) => m,
                None => match self.store.manifest(&d) {
                    Ok(Some(stored)) => match Manifest::from_stored(&stored) {
                        Ok(m) => self.index.insert_manifest(Arc::new(m)),
                        Err(_) => continue,
                    },
                    _ => continue,
                },
            };
            if manifest.kind == ManifestKind::Index {
                todo.extend(manifest.references.iter().map(|(d, _)| d.clone()));
            }
        }
        for (d, size) in roots {
            let size = size.or_else(|| self.index.manifest(&d).map(|m| m.len));
            self.links.insert_manifest_tree(&self.index, loc, &d, size);
        }
    }
}
