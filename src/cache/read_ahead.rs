//! Lookups before the index is loaded. At start-up the mirror serves at once
//! and reads the index in the background; until that is done, a
//! repository's first lookup reads what the store holds for it (its tags,
//! root links and the manifests they reach), once however many ask.

use std::collections::HashSet;
use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::OnceCell;
use tracing::debug;

use super::index::{Manifest, TagEntry};
use super::{Error, Inner, Locator, blocking};
use crate::oci::{Digest, ManifestKind};

/// The repositories read so far, emptied once the index is loaded.
#[derive(Default)]
pub(super) struct ReadAhead {
    repos: DashMap<Locator, Arc<OnceCell<()>>>,
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
