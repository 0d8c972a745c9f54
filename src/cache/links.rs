//! Which content may be served for which repository (distribution's rule).
//!
//! Content is stored once by digest and shared, but it is served for a
//! (registry, repository) only when linked to it: by a manifest of that
//! repository that references it, or by a successful upstream check for that
//! repository. Without this, anything cached from a private registry could be
//! read by digest through any other name.
//!
//! In memory a sharded map from repository to its linked digests: a hit takes
//! one shard's read lock and allocates nothing. In the store only the *root*
//! links (manifests pulled by digest, blobs checked upstream); what tags and
//! manifests imply is derived again at start-up.

use std::collections::HashMap;

use dashmap::DashMap;
use tracing::warn;

use super::Locator;
use super::index::Index;
use super::store::Store;
use crate::oci::Digest;

/// A linked digest and the size its descriptor (or the upstream) stated.
pub type Size = Option<u64>;

#[derive(Default)]
pub struct Links {
    repos: DashMap<Locator, HashMap<Digest, Size>>,
}

impl Links {
    /// `Some(size)` when `d` is linked to `loc`.
    pub fn get(&self, loc: &Locator, d: &Digest) -> Option<Size> {
        self.repos.get(loc).and_then(|r| r.get(d).copied())
    }

    /// Links `d` to `loc` in memory; a known size is never replaced by `None`.
    /// Returns whether the link is new.
    pub fn insert(&self, loc: &Locator, d: &Digest, size: Size) -> bool {
        let mut repo = self.repos.entry(loc.clone()).or_default();
        match repo.get_mut(d) {
            Some(known) => {
                if known.is_none() {
                    *known = size;
                }
                false
            }
            None => {
                repo.insert(d.clone(), size);
                true
            }
        }
    }

    /// Links a manifest and, through the index, everything it references
    /// (child manifests of an index recursively, configs and layers).
    pub fn insert_manifest_tree(&self, index: &Index, loc: &Locator, d: &Digest, size: Size) {
        let mut todo = vec![(d.clone(), size)];
        let mut seen = std::collections::HashSet::new();
        while let Some((d, size)) = todo.pop() {
            self.insert(loc, &d, size);
            if !seen.insert(d.clone()) {
                continue;
            }
            if let Some(m) = index.manifest(&d) {
                todo.extend(m.references.iter().cloned());
            }
        }
    }

    /// Adds what `fresh` (just loaded from the store) links. Links of removed
    /// content are kept: they were true, and what they name must be fetched
    /// again before it is served.
    pub fn add_from(&self, fresh: Links) {
        for (loc, digests) in fresh.repos {
            for (d, size) in digests {
                self.insert(&loc, &d, size);
            }
        }
    }

    /// Loads the root links from the store, then derives what the cached
    /// tags and manifests imply. Returns the links and how many entries were skipped.
    pub fn load(store: &dyn Store, index: &Index) -> (Links, usize) {
        let links = Links::default();
        let mut skipped = 0;
        for entry in store.links() {
            match entry {
                Ok((loc, d, size)) => links.insert_manifest_tree(index, &loc, &d, size),
                Err(s) => {
                    warn!(file = %s.what, error = %s.why, "skipping a link");
                    skipped += 1;
                }
            }
        }
        for (registry, repo, digest) in index.tagged() {
            let loc = Locator { registry, repo };
            let size = index.manifest(&digest).map(|m| m.len);
            links.insert_manifest_tree(index, &loc, &digest, size);
        }
        (links, skipped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::store::fs::FsStore;
    use crate::oci::{RegistryHost, RepoName};

    fn loc(r: &str) -> Locator {
        Locator { registry: RegistryHost::parse("r.test").unwrap(), repo: RepoName::parse(r).unwrap() }
    }

    fn digest(c: char) -> Digest {
        Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap()
    }

    #[test]
    fn links_are_per_repository_and_survive_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::new(dir.path());
        let links = Links::default();
        assert!(links.insert(&loc("a/b"), &digest('a'), Some(3)));
        assert!(!links.insert(&loc("a/b"), &digest('a'), None), "a known size is kept");
        assert_eq!(links.get(&loc("a/b"), &digest('a')), Some(Some(3)));
        assert_eq!(links.get(&loc("a/c"), &digest('a')), None, "another repository is not linked");
        store.add_links(&loc("a/b"), &[(digest('a'), Some(3)), (digest('b'), None)]).unwrap();
        // A crash mid-append leaves a torn last line: skipped on load.
        let file = dir.path().join("links/r.test/a/b/_links");
        std::io::Write::write_all(
            &mut std::fs::OpenOptions::new().append(true).open(&file).unwrap(),
            b"sha256:cc",
        )
        .unwrap();
        let (loaded, skipped) = Links::load(&store, &Index::default());
        assert_eq!(loaded.get(&loc("a/b"), &digest('a')), Some(Some(3)));
        assert_eq!(loaded.get(&loc("a/b"), &digest('b')), Some(None));
        assert_eq!(loaded.get(&loc("a/c"), &digest('a')), None);
        assert_eq!(skipped, 1);
    }
}
